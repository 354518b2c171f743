"""`pipeplan models` and the CLI's error contract."""

import json
import subprocess
import sys

import sample_models
from cli import main


def test_models_lists_every_sample_model_and_size(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, entry in sample_models.REGISTRY.items():
        for size in entry.sizes:
            assert f"sample:{name}:{size}" in out
    assert "124.44M" in out  # GPT-2 small's documented count, formatted


def test_models_json_counts_match_built_models(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    tiny = {r["model"]: r["params"] for r in rows if r["size"] == "tiny"}
    assert set(tiny) == set(sample_models.REGISTRY)
    for name, params in tiny.items():
        assert params == sample_models.count_parameters(sample_models.build(name, "tiny", device="meta"))


def test_console_script_runs_and_bad_subcommand_fails_cleanly(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "cli", "models"], capture_output=True, text=True, cwd=tmp_path,
                        check=False)
    assert ok.returncode == 0 and "sample:llama:70B" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "cli", "no-such-command"], capture_output=True, text=True,
                         cwd=tmp_path, check=False)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
