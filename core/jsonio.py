"""Strict JSON reading for every pipeplan contract.

Parsers built on these helpers either return a valid object or raise
PipeplanError naming the bad field; NaN, Infinity, wrong types and unknown
fields never get through.
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from core.errors import PipeplanError

MAX_JSON_BYTES = 50 * 2**20
"""Largest JSON document pipeplan reads (a 5000-layer profile is ~5 MB)."""


def load_json_text(text: str | bytes, what: str) -> Any:
    """Parse JSON with one clear error; NaN/Infinity are rejected like any other bad number, and an object
    with a key twice (json.loads would silently keep the last value) is refused, naming the key and where."""
    if len(text) > MAX_JSON_BYTES:
        raise PipeplanError(f"{what} is {len(text) / 2**20:.0f} MiB; pipeplan reads at most "
                            f"{MAX_JSON_BYTES // 2**20} MiB of JSON")

    def _reject_constant(name: str) -> Any:
        raise PipeplanError(f"{what} JSON contains {name}: numbers must be finite")
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except _DuplicateKey:
        try:
            key, path = _find_duplicate(text)
        except RecursionError:
            raise PipeplanError(f"{what} JSON is nested too deeply") from None
        raise PipeplanError(f"{what} JSON: duplicate key {json.dumps(key)} at {path}; each key may appear "
                            "once per object (which value was meant?)") from None
    except PipeplanError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipeplanError(f"{what} is not valid JSON ({exc}); check the file is complete") from None
    except RecursionError:
        raise PipeplanError(f"{what} JSON is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more than 4300 digits
        raise PipeplanError(f"{what} JSON has a number pipeplan cannot read ({exc}); "
                            "numbers must be ordinary integers or floats") from None


class _DuplicateKey(Exception):
    """Raised inside json.loads; load_json_text then finds the key's path in a second pass."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _DuplicateKey
    return d


class _Pairs(list):
    """An object as its list of (key, value) pairs, duplicates kept (the second pass's object type)."""


def _find_duplicate(text: str | bytes) -> tuple[str, str]:
    """(key, JSONPath of its object) of the first duplicated key, in document order. Only called after
    the first parse found one, so the text is otherwise valid JSON."""
    doc = json.loads(text, object_pairs_hook=_Pairs, parse_constant=lambda name: None)
    stack: list[tuple[Any, str]] = [(doc, "$")]
    while stack:
        value, path = stack.pop()
        children: list[tuple[Any, str]] = []
        if isinstance(value, _Pairs):
            seen: set[str] = set()
            for key, child in value:
                if key in seen:
                    return key, path
                seen.add(key)
            children = [(child, f"{path}.{key}" if _plain_key(key) else f"{path}[{json.dumps(key)}]")
                        for key, child in value]
        elif isinstance(value, list):
            children = [(child, f"{path}[{i}]") for i, child in enumerate(value)]
        stack.extend(reversed(children))
    return "?", "$"  # not reached: the first pass saw a duplicate


def _plain_key(key: str) -> bool:
    return key.isidentifier()


def read_json_file(path: str | Path, what: str) -> bytes:
    """The bytes of a JSON file, refused from its size before reading (a sparse 20 GiB file is not read)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_JSON_BYTES:
            raise PipeplanError(f"{what} file {str(p)!r} is {size / 2**20:.0f} MiB; pipeplan reads at most "
                                f"{MAX_JSON_BYTES // 2**20} MiB of JSON")
        return p.read_bytes()
    except OSError as exc:
        raise PipeplanError(f"cannot read {what} file {str(p)!r}: {exc.strerror}") from None


def build_dataclass(cls: type, data: Any, where: str):
    """Construct `cls(**data)` from a JSON object: unknown fields and wrong types name the field."""
    if not isinstance(data, dict):
        raise PipeplanError(f"{where} must be a JSON object")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise PipeplanError(f"{where} has unknown field(s) {unknown}; known fields: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        if not _matches(hints[name], value):
            raise PipeplanError(f"{where}.{name} has the wrong type ({type(value).__name__}); "
                                f"expected {_describe(hints[name])}")
    try:
        return cls(**data)
    except PipeplanError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise PipeplanError(f"{where}: {exc}") from None


def _matches(hint: Any, value: Any) -> bool:
    """Does a JSON value fit a type hint? Nested dataclasses are converted by the caller."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        return any(_matches(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_matches(item, v) for v in value)
    if origin is tuple:
        return isinstance(value, (list, tuple))
    if origin is dict:
        args = typing.get_args(hint) or (Any, Any)
        return isinstance(value, dict) and all(_matches(args[0], k) and _matches(args[1], v) for k, v in value.items())
    return True  # dataclass-typed fields are built (and checked) by the caller


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "")


def check_number(value: Any, where: str, *, positive: bool = False, integer: bool = False,
                 minimum: float | None = None) -> None:
    """Raise PipeplanError unless value is a finite number meeting the bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PipeplanError(f"{where} must be a number, got {value!r}")
    if integer and not isinstance(value, int):
        raise PipeplanError(f"{where} must be a whole number, got {value!r}")
    if isinstance(value, int) and abs(value) > 2**63:
        raise PipeplanError(f"{where} is too large ({len(str(abs(value)))} digits); use a realistic value")
    if not math.isfinite(value):
        raise PipeplanError(f"{where} must be finite, got {value!r}")
    if positive and value <= 0:
        raise PipeplanError(f"{where} must be > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise PipeplanError(f"{where} must be >= {minimum}, got {value!r}")
