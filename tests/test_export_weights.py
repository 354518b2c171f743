"""Real weights in and out of an exported job (issue 21): `--weights` (safetensors only, checked whole
before any process group, each rank reading only its stages' tensors), `--save-weights` (a Hugging
Face-loadable sharded folder), `pipeplan export --weights`, and the `--data` token-file example.

Checkpoints are made here from tiny seeded HF models (`save_pretrained(..., max_shard_size=small)`,
so there are several shards); nothing is downloaded. The fast tests run the runtime and train.py
in this process; the torchrun ones (slow) run 2 and 4 ranks for 3 steps against --single-process.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_export import TOL, VENV_BIN, export, gpt_tiny_stages, hand_plan, job_env, json_lines

from cli import main as cli_main
from planner.export import export_plan, render_job
from planner.export.runtime import pipeline_runtime as rt

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

STEPS = 3
LLAMA_STAGES = [["model.embed_tokens", "model.rotary_emb", "model.layers.0", "model.layers.1"],
                ["model.layers.2", "model.layers.3", "model.norm", "lm_head"]]
GPT2_STAGES = [["transformer.wte", "transformer.wpe", "transformer.h.0"], ["transformer.h.1"], ["transformer.h.2"],
               ["transformer.h.3", "transformer.ln_f", "lm_head"]]


# -- tiny HF checkpoints ---------------------------------------------------------------------------

def llama_config():
    return transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def gpt2_config():
    # dropout off: it draws differently per rank, and the pipeline must equal --single-process
    return transformers.GPT2Config(vocab_size=128, n_embd=32, n_layer=4, n_head=2, n_positions=32, resid_pdrop=0.0,
                                   embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)


def hf_checkpoint(folder: Path, config, *, seed: int = 7, shard: str = "40KB", base: bool = False) -> Path:
    """A seeded tiny HF model saved as sharded safetensors (the LM, or only its base model)."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # not HF's init (zeros, ones): every tensor distinct, so a wrong mapping shows
        for p in model.parameters():
            p.normal_(0, 0.05)
    (model.base_model if base else model).save_pretrained(folder, safe_serialization=True, max_shard_size=shard)
    return folder


def checkpoint_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(safetensors_torch.load_file(f))
    return out


def shard_of(folder: Path) -> dict[str, str]:
    return json.loads((folder / rt.INDEX_FILE).read_text())["weight_map"]


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def hf_plan(tmp_path: Path, config, stages, name: str, **kw):
    config.save_pretrained(tmp_path / f"{name}_config")
    return hand_plan(f"hf:{tmp_path / f'{name}_config' / 'config.json'}", stages, seq_len=16, **kw)


# -- running the job ---------------------------------------------------------------------------------

def run(job: Path, args: list[str], nproc: int | None, *, ok: bool = True) -> subprocess.CompletedProcess:
    cmd = ([sys.executable, "train.py", "--single-process"] if nproc is None else
           [str(VENV_BIN / "torchrun"), "--standalone", f"--nproc-per-node={nproc}", "train.py"]) + args
    proc = subprocess.run(cmd, cwd=job, env=job_env(), capture_output=True, text=True, timeout=300, check=False)
    if ok:
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    return proc


def steps_and_checks(proc) -> tuple[list[float], list[dict]]:
    lines = json_lines(proc.stdout)
    steps = [d for d in lines if "step" in d]
    assert [d["step"] for d in steps] == list(range(1, STEPS + 1))
    return [d["loss"] for d in steps], sorted((d["check_weights"] for d in lines if "check_weights" in d),
                                              key=lambda c: c["rank"])


def check_ranks_read_their_tensors(checks: list[dict], ckpt: Path, ranks: int) -> None:
    """Every rank's parameters equal the checkpoint's tensors, and it read only its own: the bytes of
    its tensors from the shards that hold them, less than the checkpoint."""
    saved = checkpoint_tensors(ckpt)
    where = shard_of(ckpt)
    total = sum(t.numel() * t.element_size() for t in saved.values())
    assert [c["rank"] for c in checks] == list(range(ranks))
    seen = set()
    for c in checks:
        assert c["digests"] == {f: digest(saved[f]) for f in c["digests"]}
        assert c["total_bytes"] == total
        assert c["bytes_read"] == sum(saved[f].numel() * saved[f].element_size() for f in c["digests"])
        assert c["bytes_read"] < total, c
        assert sorted(c["files"]) == sorted({where[f] for f in c["digests"]})
        assert len(c["files"]) < len(set(where.values()))
        seen |= set(c["digests"])
    assert seen == set(saved)  # together the ranks loaded the whole checkpoint


def check_saved_folder(out: Path, reference: Path, shards: int) -> None:
    """--save-weights wrote an HF folder (a shard per writing rank, the index, config.json) that
    from_pretrained loads, equal to the single-process model after the same steps."""
    index = json.loads((out / rt.INDEX_FILE).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [rt.shard_name(i, shards) for i in range(shards)]
    tensors = checkpoint_tensors(out)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert (out / "config.json").is_file() and (reference / "model.safetensors").is_file()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    expected = transformers.AutoModelForCausalLM.from_pretrained(reference)
    got, want = loaded.state_dict(), expected.state_dict()
    assert got.keys() == want.keys()
    diff = max(float((got[k] - want[k]).abs().max()) for k in want)
    assert diff <= TOL, diff
    start = transformers.AutoModelForCausalLM.from_pretrained(reference.parent / "ckpt")
    assert max(float((got[k] - start.state_dict()[k]).abs().max()) for k in want) > 1e-4  # it trained


# -- torchrun: 2 and 4 ranks --------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.torchrun
def test_llama_sharded_checkpoint_two_ranks(tmp_path):
    """Export records --weights (SETTINGS and launch.sh); 2 ranks load their shards only, train 3 steps
    like --single-process --weights, and save a folder from_pretrained loads."""
    ckpt = hf_checkpoint(tmp_path / "ckpt", llama_config())
    assert len(set(shard_of(ckpt).values())) >= 4
    job = tmp_path / "job"
    export_plan(hf_plan(tmp_path, llama_config(), LLAMA_STAGES, "llama"), job, weights=str(ckpt))
    assert f"--weights {ckpt}" in (job / "launch.sh").read_text()
    args = ["--steps", str(STEPS), "--check-weights"]  # --weights comes from SETTINGS
    pipe_loss, pipe_checks = steps_and_checks(run(job, [*args, "--save-weights", str(tmp_path / "out_pp"),
                                                        "--checkpoint-every", "2"], 2))
    single_loss, single_checks = steps_and_checks(run(job, [*args, "--save-weights", str(tmp_path / "out_sp")], None))
    check_ranks_read_their_tensors(pipe_checks, ckpt, 2)
    assert single_checks[0]["bytes_read"] == single_checks[0]["total_bytes"]
    assert max(abs(a - b) for a, b in zip(pipe_loss, single_loss)) <= TOL, (pipe_loss, single_loss)
    check_saved_folder(tmp_path / "out_pp", tmp_path / "out_sp", 2)
    # --checkpoint-every 2: the step-2 weights beside the training-state checkpoint, loadable too
    assert (job / "checkpoints" / "latest").read_text() == "2"
    step2 = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out_pp" / "step_000002").state_dict()
    final = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out_pp").state_dict()
    assert step2.keys() == final.keys() and any(not torch.equal(step2[k], final[k]) for k in final)


@pytest.mark.slow
@pytest.mark.torchrun
def test_gpt2_tied_checkpoint_four_ranks(tmp_path):
    """GPT-2 (lm_head tied to transformer.wte): the first and last ranks both read the tied tensor
    (once each), their copies stay in sync, and the saved folder has it once and loads tied."""
    ckpt = hf_checkpoint(tmp_path / "ckpt", gpt2_config(), shard="24KB")
    job = export(tmp_path, "job", hf_plan(tmp_path, gpt2_config(), GPT2_STAGES, "gpt2"))
    args = ["--steps", str(STEPS), "--check-weights", "--weights", str(ckpt)]
    pipe_loss, checks = steps_and_checks(run(job, [*args, "--save-weights", str(tmp_path / "out_pp")], 4))
    single_loss, _ = steps_and_checks(run(job, [*args, "--save-weights", str(tmp_path / "out_sp")], None))
    check_ranks_read_their_tensors(checks, ckpt, 4)
    assert "transformer.wte.weight" in checks[0]["digests"] and "transformer.wte.weight" in checks[3]["digests"]
    assert max(abs(a - b) for a, b in zip(pipe_loss, single_loss)) <= TOL, (pipe_loss, single_loss)
    check_saved_folder(tmp_path / "out_pp", tmp_path / "out_sp", 4)
    assert "lm_head.weight" not in shard_of(tmp_path / "out_pp")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out_pp")
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()


@pytest.mark.slow
@pytest.mark.torchrun
def test_torchrun_stops_on_a_wrong_shape_before_any_process_group(tmp_path):
    ckpt = hf_checkpoint(tmp_path / "ckpt", llama_config())
    tensors = checkpoint_tensors(ckpt)
    tensors["model.layers.3.mlp.up_proj.weight"] = torch.zeros(3, 64)  # on rank 1's stage
    for f in ckpt.glob("*.safetensors"):
        f.unlink()
    (ckpt / rt.INDEX_FILE).unlink()
    safetensors_torch.save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    job = export(tmp_path, "job", hf_plan(tmp_path, llama_config(), LLAMA_STAGES, "llama"))
    proc = run(job, ["--steps", "2", "--weights", str(ckpt)], 2, ok=False)
    assert proc.returncode != 0 and '"step"' not in proc.stdout
    # no worker traceback (torchrun itself prints one for any worker that exits non-zero)
    assert 'train.py", line' not in proc.stderr and 'pipeline_runtime.py", line' not in proc.stderr
    # a rank stops on a tensor of another rank's stage (each checks the whole checkpoint), before its start-up line
    message = "mismatched 1: model.layers.3.mlp.up_proj.weight [3, 64] float32 (model: [128, 64] float32)"
    assert sum(line.startswith("train.py: error: --weights") and line.endswith(message)
               for line in proc.stderr.splitlines()) >= 1
    assert "rank 0: stage" not in proc.stderr and "rank 1: stage" not in proc.stderr


# -- in this process: the checks, the mapping, the sample-model round trip, the data ---------------

def meta_model(config):
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def test_checkpoint_keys_come_from_the_model_the_job_builds():
    keys = rt.checkpoint_keys(meta_model(gpt2_config()))
    assert keys["transformer.wte.weight"] == ["transformer.wte.weight", "lm_head.weight", "wte.weight"]
    assert "lm_head.weight" not in keys  # tied: one parameter, owned by the embedding
    assert keys["transformer.h.0.attn.c_attn.weight"] == ["transformer.h.0.attn.c_attn.weight", "h.0.attn.c_attn.weight"]
    keys = rt.checkpoint_keys(meta_model(llama_config()))
    assert keys["lm_head.weight"] == ["lm_head.weight"]  # untied, and not under the base model
    assert keys["model.norm.weight"] == ["model.norm.weight", "norm.weight"]


def test_a_base_model_checkpoint_maps_onto_the_lm(tmp_path):
    """GPT2Model's checkpoint (no `transformer.` prefix, no head): GPT-2's head is tied to wte, so it fits."""
    ckpt = hf_checkpoint(tmp_path / "base", gpt2_config(), base=True)
    assert not any(k.startswith("transformer.") for k in shard_of(ckpt))
    chosen = rt.match_weights(rt.WeightsFile(ckpt), meta_model(gpt2_config()))
    assert chosen["transformer.wte.weight"] == "wte.weight" and chosen["transformer.ln_f.bias"] == "ln_f.bias"
    # Llama's head is not tied: a base-model checkpoint lacks it
    ckpt = hf_checkpoint(tmp_path / "llama_base", llama_config(), base=True)
    with pytest.raises(rt.JobError, match=r"missing 1: lm_head\.weight$"):
        rt.match_weights(rt.WeightsFile(ckpt), meta_model(llama_config()))


def test_every_mismatch_is_listed_in_one_message(tmp_path):
    ckpt = hf_checkpoint(tmp_path / "ckpt", llama_config(), shard="10MB")
    tensors = safetensors_torch.load_file(ckpt / "model.safetensors")
    del tensors["model.layers.0.self_attn.q_proj.weight"]
    tensors["model.norm.weight"] = torch.ones(65)
    tensors["model.layers.1.input_layernorm.weight"] = torch.ones(64, dtype=torch.int64)
    tensors["model.layers.2.mlp.gate_proj.weight"] = tensors["model.layers.2.mlp.gate_proj.weight"].bfloat16()
    tensors["extra.weight"] = torch.ones(2)
    tensors["model.rotary_emb.inv_freq"] = torch.ones(8)  # a buffer: not an error
    bad = tmp_path / "bad.safetensors"
    safetensors_torch.save_file(tensors, bad)
    with pytest.raises(rt.JobError) as info:
        rt.match_weights(rt.WeightsFile(bad), meta_model(llama_config()))
    msg = str(info.value)
    assert "\n" not in msg
    assert "missing 1: model.layers.0.self_attn.q_proj.weight;" in msg
    assert "unexpected 1: extra.weight;" in msg
    assert "model.norm.weight [65] float32 (model: [64] float32)" in msg
    assert "model.layers.1.input_layernorm.weight [64] int64 (model: [64] float32)" in msg
    assert "gate_proj" not in msg  # bf16 for fp32 weights: converted on copy


def test_pickle_checkpoints_are_refused_with_a_conversion_command(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "pytorch_model.bin").write_bytes(b"not read")
    (tmp_path / "w.pt").write_bytes(b"not read")
    for path, command in ((tmp_path / "hf", "save_pretrained"), (tmp_path / "w.pt", "torch.load('")):
        with pytest.raises(rt.JobError) as info:
            rt.WeightsFile(path)
        assert "pickle checkpoints (.bin/.pt) are refused" in str(info.value) and command in str(info.value)
        assert "weights_only=True" in str(info.value) or command == "save_pretrained"
    plan = hand_plan("sample:gpt:tiny", gpt_tiny_stages(2), seq_len=32)
    with pytest.raises(Exception, match="pickle checkpoints"):
        render_job(plan, weights="/data/llama/pytorch_model.bin")


def test_loading_holds_one_checkpoint_tensor_at_a_time(tmp_path, monkeypatch):
    """The loading peak is the stage's parameters (already allocated) plus the largest tensor read:
    load_weights drops each tensor read through safe_open before reading the next."""
    import weakref

    import safetensors

    ckpt = hf_checkpoint(tmp_path / "ckpt", llama_config())
    source = rt.WeightsFile(ckpt)
    model = transformers.AutoModelForCausalLM.from_config(llama_config())
    chosen = rt.match_weights(source, meta_model(llama_config()))
    live, peak = [0], [0]
    real = safetensors.safe_open

    class Counting:
        def __init__(self, *a, **kw):
            self.inner = real(*a, **kw)

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def get_tensor(self, key):
            t = self.inner.get_tensor(key)
            nbytes = t.numel() * t.element_size()
            live[0] += nbytes
            peak[0] = max(peak[0], live[0])
            weakref.finalize(t, lambda: live.__setitem__(0, live[0] - nbytes))
            return t

    monkeypatch.setattr(safetensors, "safe_open", Counting)
    rt.load_weights(source, chosen, {f: [p] for f, p in model.named_parameters()})
    largest = max(e[3] for e in source.entries.values())
    assert peak[0] == largest and live[0] == 0
    assert source.bytes_read == source.total_bytes


def test_export_records_the_weights_path(tmp_path):
    plan = hand_plan("sample:gpt:tiny", gpt_tiny_stages(2), seq_len=32)
    (tmp_path / "plan.json").write_text(plan.to_json())
    path = "/data/my ckpt"  # a path on the training machine: recorded, never read
    assert cli_main(["export", str(tmp_path / "plan.json"), "-o", str(tmp_path / "job"), "--weights", path]) == 0
    settings = lambda train: json.loads(train.split('SETTINGS = json.loads(r"""')[1].split('""")')[0])
    assert settings((tmp_path / "job" / "train.py").read_text())["weights"] == path
    assert "--weights '/data/my ckpt'" in (tmp_path / "job" / "launch.sh").read_text()
    assert "--weights '/data/my ckpt'" in (tmp_path / "job" / "slurm.sbatch").read_text()
    assert "/data/my ckpt" in (tmp_path / "job" / "README.md").read_text()
    assert "weights" not in settings(render_job(plan)["train.py"])  # no --weights: SETTINGS as before
    assert cli_main(["export", str(tmp_path / "plan.json"), "-o", str(tmp_path / "j2"), "--weights", "a\nb"]) == 2


def test_sample_model_round_trip_and_refusals(tmp_path, load_job, capsys):
    """A sample model: --save-weights writes one model.safetensors keyed by parameter name, --weights
    loads it back (digests equal); bad files stop train.py with one line, exit 2, before training."""
    job = export(tmp_path, "job", hand_plan("sample:gpt:tiny", gpt_tiny_stages(2), seq_len=32))
    train = load_job(job)
    out = tmp_path / "saved"
    assert train.main(["--single-process", "--steps", "1", "--save-weights", str(out), "--check-weights"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    saved = safetensors_torch.load_file(out / "model.safetensors")
    capsys.readouterr()
    assert train.main(["--single-process", "--steps", "1", "--weights", str(out / "model.safetensors"),
                       "--check-weights"]) == 0
    check = next(d["check_weights"] for d in json_lines(capsys.readouterr().out) if "check_weights" in d)
    assert check["digests"] == {k: digest(t) for k, t in saved.items()}
    assert check["bytes_read"] == check["total_bytes"] == sum(t.numel() * 4 for t in saved.values())

    missing = {k: t for k, t in saved.items() if k != "layers.1.mlp.c_fc.weight"}
    wrong = dict(saved, **{"wpe.weight": torch.zeros(3, 3)})
    safetensors_torch.save_file(missing, tmp_path / "missing.safetensors")
    safetensors_torch.save_file(wrong, tmp_path / "wrong.safetensors")
    (tmp_path / "w.bin").write_bytes(b"\x80\x04not read")
    for name, message in (("missing.safetensors", "missing 1: layers.1.mlp.c_fc.weight"), ("wrong.safetensors", "mismatched 1: wpe.weight [3, 3]"),
                          ("w.bin", "pickle checkpoints (.bin/.pt) are refused")):
        assert train.main(["--single-process", "--steps", "1", "--weights", str(tmp_path / name)]) == 2
        captured = capsys.readouterr()
        assert '"step"' not in captured.out
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("train.py: error: --weights ") and message in err[0], err


def test_token_file_data(tmp_path, load_job, capsys):
    """--data: windows of a memory-mapped token file (.npy or raw .bin), deterministic in (seed, step)."""
    np = pytest.importorskip("numpy")
    job = export(tmp_path, "job", hand_plan("sample:gpt:tiny", gpt_tiny_stages(2), seq_len=32))
    train = load_job(job)
    tokens = (np.arange(5000) * 7 % 97).astype(np.uint16)
    np.save(tmp_path / "tokens.npy", tokens)
    tokens.tofile(tmp_path / "tokens.bin")
    seq_len = 32
    for name in ("tokens.npy", "tokens.bin"):
        data = train.TokenFile(tmp_path / name, "uint16", seq_len, 100)
        (x,), y = data.batch(3, 8, 0)
        assert x.shape == y.shape == (8, seq_len) and x.dtype == y.dtype == torch.long
        assert torch.equal(x[:, 1:], y[:, :-1])
        start = int(np.flatnonzero(np.lib.stride_tricks.sliding_window_view(tokens, seq_len)
                                   .__eq__(x[0].numpy()).all(1))[0])
        assert torch.equal(y[0], torch.from_numpy(tokens[start + 1:start + seq_len + 1].astype(np.int64)))
        assert torch.equal(data.batch(3, 8, 0)[1], y) and not torch.equal(data.batch(4, 8, 0)[1], y)
    with pytest.raises(train.JobError, match="outside the model's vocabulary"):
        train.TokenFile(tmp_path / "tokens.npy", "uint16", seq_len, 50).batch(1, 8, 0)
    assert train.main(["--single-process", "--steps", "2", "--data", str(tmp_path / "tokens.npy")]) == 0
    lines = [d for d in json_lines(capsys.readouterr().out) if "step" in d]
    assert [d["step"] for d in lines] == [1, 2]
    np.save(tmp_path / "floats.npy", np.ones(100))
    assert train.main(["--single-process", "--steps", "1", "--data", str(tmp_path / "floats.npy")]) == 2
    assert "1-D integer array of token ids" in capsys.readouterr().err


def test_a_truncated_shard_is_refused_before_loading(tmp_path):
    ckpt = hf_checkpoint(tmp_path / "ckpt", llama_config())
    shard = ckpt / sorted(set(shard_of(ckpt).values()))[1]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(rt.JobError, match=r"truncated \(\d+ bytes; its header describes \d+\)"):
        rt.WeightsFile(ckpt)
    (ckpt / rt.INDEX_FILE).write_text('{"weight_map": {"a": "../elsewhere.safetensors"}}')
    with pytest.raises(rt.JobError, match="not .safetensors files in that folder"):
        rt.WeightsFile(ckpt)
