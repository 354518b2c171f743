"""What users type: GPU presets and sample model names and sizes without regard to case or dashes,
common preset aliases, and errors that list what is valid and how to describe a custom device."""

from __future__ import annotations

import pytest

import sample_models
from core.errors import PipeplanError
from profiler.gpus import GPU_PRESETS, get_preset
from profiler.sources import load_profile


@pytest.mark.parametrize("typed, preset", [
    ("A100-80GB", "A100-80GB"), ("a100-80gb", "A100-80GB"), ("A100", "A100-80GB"), ("a100_40gb", "A100-40GB"),
    ("H100", "H100-SXM"), ("h100", "H100-SXM"), ("h100 sxm", "H100-SXM"), ("4090", "RTX4090"), ("mi300", "MI300X"),
])
def test_preset_spellings(typed, preset):
    assert get_preset(typed).name == preset


def test_every_preset_name_round_trips():
    assert all(get_preset(name.lower()).name == name for name in GPU_PRESETS)


def test_unknown_preset_lists_presets_and_the_custom_syntax():
    with pytest.raises(PipeplanError) as err:
        get_preset("B200")
    message = str(err.value)
    assert all(name in message for name in GPU_PRESETS)
    assert "custom:TFLOPS,BW_GBS,MEM_GB" in message and "--memory" in message


@pytest.mark.parametrize("spec, source", [("sample:GPT:TINY", "sample:gpt:tiny"), ("sample:Llama:Tiny", "sample:llama:tiny"),
                                          ("sample:vit:TINY", "sample:vit:tiny")])
def test_sample_names_and_sizes_ignore_case(spec, source):
    assert load_profile(spec, estimate_for="h100").model.source == source


def test_documented_sizes_ignore_case():
    assert sample_models.get_model("LLAMA").canonical_size("70b") == "70B"
    assert sample_models.get_model("gpt").canonical_size("124m") == "124M"
    with pytest.raises(ValueError, match="valid sizes: tiny, 124M"):
        sample_models.get_model("gpt").canonical_size("7B")
