"""The file: source runs user code only when allowed, in a limited child process."""

from __future__ import annotations

import textwrap

import pytest

from core.errors import PipeplanError
from profiler.sandbox import profile_file_factory
from profiler.sources import load_profile

USER_FILE = textwrap.dedent("""
    import os
    import torch
    from torch import nn

    def make(batch_size=2):
        assert "PIPEPLAN_TEST_SECRET" not in os.environ, "the secret leaked into the sandbox"
        assert os.getcwd() != START_DIR
        print("garbage on stdout \\x00 {not json")
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        return model, (torch.randn(batch_size, 16),), (lambda o, t: ((o - t) ** 2).mean()), torch.randn(batch_size, 4)

    def make_seq(batch_size=2, seq_len=8):
        model = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 50))
        return model, (torch.randint(0, 50, (batch_size, seq_len)),)

    def boom():
        raise RuntimeError("factory exploded")

    def spin():
        while True:
            pass

    def eat():
        hoard = []
        while True:
            hoard.append(bytearray(10**8))
""")


@pytest.fixture()
def user_file(tmp_path, monkeypatch):
    path = tmp_path / "user_model.py"
    path.write_text(USER_FILE.replace("START_DIR", repr(str(tmp_path))))
    monkeypatch.setenv("PIPEPLAN_TEST_SECRET", "hunter2")
    monkeypatch.chdir(tmp_path)
    return path


def test_code_needs_explicit_permission(user_file):
    with pytest.raises(PipeplanError, match="--allow-code"):
        load_profile(f"file:{user_file}:make")


@pytest.mark.slow  # a sandbox child that profiles (~4 s)
def test_factory_profiles_in_a_clean_child(user_file):
    prof = load_profile(f"file:{user_file}:make", allow_code=True, batch_size=3)
    assert [n.id for n in prof.nodes] == ["0", "1", "2"]
    assert prof.model.micro_batch_size == 3
    assert prof.total_param_bytes == (16 * 32 + 32 + 32 * 4 + 4) * 4


@pytest.mark.slow  # two sandbox children that profile (~9 s)
def test_seq_len_is_recorded_when_the_factory_takes_it(user_file):
    # an export rebuilds the model at the profile's seq_len, so it must be the one the factory got
    prof = load_profile(f"file:{user_file}:make_seq", allow_code=True, batch_size=2, seq_len=12)
    assert prof.model.seq_len == 12
    assert prof.model.input_bytes == 2 * 12 * 8
    assert load_profile(f"file:{user_file}:make", allow_code=True, seq_len=12).model.seq_len is None


def test_factory_that_raises_gives_its_message(user_file):
    with pytest.raises(PipeplanError, match="RuntimeError: factory exploded"):
        profile_file_factory(f"{user_file}:boom", timeout_s=120)


@pytest.mark.slow  # waits out the 5 s limit
def test_factory_that_hangs_is_stopped(user_file):
    with pytest.raises(PipeplanError, match="did not finish within 5 s"):
        profile_file_factory(f"{user_file}:spin", timeout_s=5)


@pytest.mark.slow  # a sandbox child that allocates 3 GiB (~7 s)
def test_factory_that_eats_memory_is_stopped(user_file):
    with pytest.raises(PipeplanError, match="more than 3 GiB"):
        profile_file_factory(f"{user_file}:eat", timeout_s=120, memory_bytes=3 * 2**30)


@pytest.mark.parametrize("spec, message", [
    ("file:nothere.py:make", "does not exist"),
    ("file:model.txt:make", "file:PATH.py:FACTORY"),
    ("file:model.py:not-a-name", "file:PATH.py:FACTORY"),
])
def test_bad_file_specs(spec, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipeplanError, match=message):
        load_profile(spec, allow_code=True)
