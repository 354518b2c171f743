"""Hybrid parallelism (issue 15): search time, the Megatron-LM PTD-P table, and the gain over PP-only.

    python -m bench.bench_hybrid [--quick]

Writes bench/results/hybrid.json.

(a) Search time: `planner.solvers.hybrid.search_parallel` for the Llama-70B shape (sample:llama:70B, seq 4096,
    estimated for the preset) on 64 GPUs (8 nodes x 8) of A100-80GB and of H100-SXM, global batch 512,
    bf16 mixed AdamW, recompute chosen by the solver, 2 GiB reserve; and for GPT-1.3B (GPT-3 shape: 24
    layers, hidden 2048, 16 heads, vocabulary 51200, seq 1024) on 4 A100-80GB, global batch 32 (assumed: the
    published search times below are for "GPT-1.3B on 4 GPUs"). Ratios against the published search
    times quoted in issue 15: Alpa 4,092 s and Aceso 99 s. The profiling time is reported apart.
(b) Megatron-LM PTD-P, Table 1 (Narayanan et al., SC'21, arXiv 2104.04473; rows as in
    ../shared/notes/published-tables.md): each GPT shape (learned positions, tied head, seq 2048, vocabulary
    51200) planned with the paper's TP, PP, DP and batch (micro-batch 1, 1F1B, recompute on, DDP), predicted
    TFLOP/s per GPU by the paper's FLOP count (eq. 3: 96 B s l h^2 (1 + s / 6h + V / 16 l h)) / (step x
    GPUs), over the published TFLOP/s; then the configuration the search picks on the same GPUs and batch.
(c) Gain over PP-only: the best hybrid plan's step against the best PP-only plan (dp = tp = 1) of the same
    GPUs and batch, where one exists.

GPT shapes get Megatron's TP facts (bench/hybrid_facts.py: the attention split per head, as in the systems
compared with; pipeplan's GPT sample splits only its MLP), and so do profiles without TP facts; the result
says which were used.
--quick: GPT-1.3B on 4 GPUs only for (a), the first two Megatron rows, small search budgets.
"""

from __future__ import annotations

import argparse
import json
import time

from bench.common import rnd, write_result

ALPA_S, ACESO_S = 4092.0, 99.0
"""Published search times for GPT-1.3B on 4 GPUs, as quoted in issue 15 (Alpa, OSDI'22; Aceso, EuroSys'24)."""

MEGATRON_ROWS = [  # params (B), heads, hidden, layers, TP, PP, GPUs, batch, TFLOP/s per GPU (published)
    (1.7, 24, 2304, 24, 1, 1, 32, 512, 137),
    (3.6, 32, 3072, 30, 2, 1, 64, 512, 138),
    (7.5, 32, 4096, 36, 4, 1, 128, 512, 142),
    (18.4, 48, 6144, 40, 8, 1, 256, 1024, 135),
    (39.1, 64, 8192, 48, 8, 2, 512, 1536, 138),
    (76.1, 80, 10240, 60, 8, 4, 1024, 1792, 140),
    (145.6, 96, 12288, 80, 8, 8, 1536, 2304, 148),
    (310.1, 128, 16384, 96, 8, 16, 1920, 2160, 155),
    (529.6, 128, 20480, 105, 8, 35, 2520, 2520, 163),
    (1008.0, 160, 25600, 128, 8, 64, 3072, 3072, 163),
]
SEQ, VOCAB = 2048, 51200


def megatron_flops(batch: int, seq: int, layers: int, hidden: int, vocab: int) -> float:
    """Narayanan et al. 2021, eq. 3: model FLOPs per iteration with activation recomputation."""
    return 96 * batch * seq * layers * hidden ** 2 * (1 + seq / (6 * hidden) + vocab / (16 * layers * hidden))


def gpt_profile(layers: int, hidden: int, heads: int, seq: int, vocab: int, preset: str):
    """A GPT shape (sample_models.gpt: learned positions, pre-LN, tied head) profiled in estimate mode, with
    Megatron's TP facts (attention split per head, as in the systems compared with) in place of the
    sample's own (MLP only: its fused qkv replicates)."""
    import torch

    from bench.hybrid_facts import with_megatron_tp_facts
    from profiler.profile_model import profile_model
    from sample_models.gpt import GPT, GPTConfig, loss_fn, make_batch

    cfg = GPTConfig(block_size=seq, vocab_size=vocab, n_layer=layers, n_head=heads, n_embd=hidden)
    with torch.device("meta"):
        model = GPT(cfg)
    inputs, target = make_batch(cfg, 1, seq, device="meta")
    prof = profile_model(model, inputs, loss_fn=loss_fn, target=target, source=f"gpt:{layers}x{hidden}",
                         name=f"gpt-{layers}x{hidden}", estimate_for=preset, seq_len=seq)
    return with_megatron_tp_facts(prof, replace=True)


def with_facts(profile):
    from bench.hybrid_facts import with_megatron_tp_facts
    from planner.costmodel.parallel import has_tp_plan

    if profile.model.source.startswith("gpt:"):
        return profile, "megatron"  # gpt_profile's
    if has_tp_plan(profile):
        return profile, "profiler"
    return with_megatron_tp_facts(profile), "megatron-fallback"


def cluster(n: int, preset: str):
    from planner.contracts.cluster import Cluster

    return Cluster.uniform(n, preset, devices_per_node=8)


def base_config(recompute: str = "auto"):
    from planner.contracts.config import DEFAULT_RESERVE_BYTES, TrainConfig

    return TrainConfig(num_microbatches=1, precision="bf16_mixed", optimizer="adamw", recompute=recompute,
                       reserve_bytes=DEFAULT_RESERVE_BYTES)


def candidate_row(c) -> dict:
    return {"config": c.label, "pp": c.pp, "dp": c.dp, "tp": c.tp, "dp_sharding": c.dp_sharding,
            "micro_batch_size": c.micro_batch_size, "num_microbatches": c.num_microbatches,
            "step_time_ms": rnd(c.step_time_ms, 6), "samples_per_s": rnd(c.samples_per_s, 6),
            "tokens_per_s": rnd(c.tokens_per_s, 6), "mfu": rnd(c.mfu, 4),
            "memory_per_device_gib": rnd(c.memory_per_device_bytes / 2**30, 3), "recompute_stages": c.recompute_stages,
            "lower_bound_ms": rnd(c.lower_bound_ms, 6)}


def search_case(name: str, profile, n: int, preset: str, batch: int, budget_s: float | None, top_k: int = 3) -> dict:
    from planner.solvers.hybrid import search_parallel

    prof, facts = with_facts(profile)
    t = time.perf_counter()
    res = search_parallel(prof, cluster(n, preset), batch, base=base_config(), top_k=top_k, budget_s=budget_s)
    seconds = time.perf_counter() - t
    out = {"case": name, "gpus": n, "preset": preset, "global_batch": batch, "tp_facts": facts,
           "search_s": rnd(seconds, 3), "candidates": res.candidates, "solved": res.solved, "pruned": res.pruned,
           "no_fit": res.no_fit, "infeasible": res.infeasible, "unsearched": res.unsearched,
           "complete": res.unsearched == 0, "top": [candidate_row(c) for c in res.ranked]}
    pp_only = search_parallel(prof, cluster(n, preset), batch, base=base_config(), top_k=1, tp=1, dp=1,
                              budget_s=budget_s, diagnose=False) if n <= len(prof.nodes) else None
    out["pp_only"] = candidate_row(pp_only.ranked[0]) if pp_only is not None and pp_only.ranked else None
    if out["pp_only"] and res.ranked:
        out["gain_over_pp_only"] = rnd(pp_only.ranked[0].step_time_ms / res.ranked[0].step_time_ms, 4)
    else:
        out["gain_over_pp_only"] = None
        out["pp_only_note"] = ("more GPUs than layers: no PP-only plan" if pp_only is None
                               else "no PP-only plan fits in memory")
    return out


def part_a(quick: bool) -> list[dict]:
    from profiler import load_profile

    rows = []
    t = time.perf_counter()
    gpt = gpt_profile(24, 2048, 16, 1024, VOCAB, "A100-80GB")
    row = search_case("GPT-1.3B, 4 GPUs", gpt, 4, "A100-80GB", 32, budget_s=None)
    row["profile_s"] = rnd(time.perf_counter() - t - row["search_s"], 3)
    rows.append(row)
    if not quick:
        for preset in ("A100-80GB", "H100-SXM"):
            t = time.perf_counter()
            prof = load_profile("sample:llama:70B", seq_len=4096, batch_size=1, estimate_for=preset)
            profile_s = time.perf_counter() - t
            row = search_case(f"Llama-70B, 64 GPUs ({preset})", prof, 64, preset, 512, budget_s=None, top_k=5)
            row["profile_s"] = rnd(profile_s, 3)
            rows.append(row)
    for row in rows:
        row["alpa_over_ours"] = rnd(ALPA_S / row["search_s"], 4)
        row["aceso_over_ours"] = rnd(ACESO_S / row["search_s"], 4)
    return rows


def part_b(quick: bool) -> list[dict]:
    from planner.contracts.config import TrainConfig
    from planner.solvers.solve import solve_mesh

    rows = []
    for params_b, heads, hidden, layers, tp, pp, gpus, batch, published in MEGATRON_ROWS[:2 if quick else None]:
        row = {"params_b": params_b, "hidden": hidden, "layers": layers, "gpus": gpus, "batch": batch,
               "paper": {"tp": tp, "pp": pp, "dp": gpus // (tp * pp), "tflops_per_gpu": published}}
        try:
            t = time.perf_counter()
            prof, facts = with_facts(gpt_profile(layers, hidden, heads, SEQ, VOCAB, "A100-80GB"))
            row["profile_s"] = rnd(time.perf_counter() - t, 2)
            row["tp_facts"] = facts
            dp = gpus // (tp * pp)
            cfg = TrainConfig(num_microbatches=batch // dp, micro_batch_size=1, precision="bf16_mixed",
                              optimizer="adamw", recompute="on", reserve_bytes=2 * 2**30, data_parallel=dp,
                              tensor_parallel=tp, dp_sharding="ddp", time_limit_s=2.0)
            t = time.perf_counter()
            plan = solve_mesh(prof, cluster(gpus, "A100-80GB"), cfg, baselines=False, diagnose_infeasible=False) \
                if dp * tp > 1 else None
            row["paper_plan_s"] = rnd(time.perf_counter() - t, 2)
            flops = megatron_flops(batch, SEQ, layers, hidden, VOCAB)
            if plan is not None and plan.feasible:
                tflops = flops / (plan.step_time_ms / 1000) / gpus / 1e12
                from planner.costmodel.parallel import throughput

                row["paper"].update(predicted_step_ms=rnd(plan.step_time_ms, 6), predicted_tflops_per_gpu=rnd(tflops, 4),
                                    predicted_over_published=rnd(tflops / published, 3),
                                    mfu=rnd(throughput(prof, plan.cluster, batch, plan.step_time_ms).mfu, 4),
                                    stages=len(plan.stages),
                                    dp_sync_ms=rnd(max(s.dp_sync_ms for s in plan.stages), 4),
                                    bubble_fraction=rnd(plan.bubble_fraction, 4),
                                    memory_gib=rnd(max(s.memory.total for s in plan.stages) / 2**30, 3))
            else:
                row["paper"]["predicted_tflops_per_gpu"] = None
                row["paper"]["note"] = "the paper's configuration does not fit under pipeplan's memory model"
            pick = search_case(f"GPT-{params_b}B", prof, gpus, "A100-80GB", batch, budget_s=3.0 if quick else 6.0,
                               top_k=1)
            if pick["top"]:
                best = pick["top"][0]
                # eq. 3 counts the recomputed forward: for a pick without recompute it over-counts by up to
                # 4/3; the pick's MFU (model FLOPs, no recompute) is the fair figure
                best["eq3_tflops_per_gpu"] = rnd(flops / (best["step_time_ms"] / 1000) / gpus / 1e12, 4)
                best["model_tflops_per_gpu"] = rnd(best["mfu"] * 312, 4) if best["mfu"] else None
                row["pipeplan_pick"] = best
            row["pick_search_s"] = pick["search_s"]
            row["pick_complete"] = pick["complete"]
            row["gain_over_pp_only"] = pick["gain_over_pp_only"]
            row["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 (a row's failure is recorded, the others still run)
            row["status"] = "error"
            row["reason"] = f"{type(exc).__name__}: {exc}"[:500]
        rows.append(row)
    return rows


def run(quick: bool) -> dict:
    data = {"search_time": part_a(quick), "megatron_table1": part_b(quick),
            "published_search_s": {"alpa": ALPA_S, "aceso": ACESO_S},
            "megatron_source": "Narayanan et al., Efficient Large-Scale Language Model Training on GPU Clusters "
                               "Using Megatron-LM, SC'21 (arXiv 2104.04473), Table 1"}
    write_result("hybrid", data, quick)
    return data


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    print(json.dumps(run(a.quick), indent=2))


def markdown(d: dict) -> str:
    """The results as the tables of docs/hybrid.md ("Measured")."""
    out = [("| case | search s | configurations: solved / pruned / cannot fit / left | best configuration | step s | "
           "MFU | best PP-only step s | gain | Alpa ÷ ours | Aceso ÷ ours |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["search_time"]:
        best = r["top"][0] if r["top"] else None
        pp = r["pp_only"]
        out.append(f"| {r['case']} | {r['search_s']} | {r['candidates']}: {r['solved']} / {r['pruned']} / {r['no_fit']} / "
                   f"{r['unsearched']} | {best['config'] if best else '-'} | "
                   f"{best['step_time_ms'] / 1000:.2f} | {best['mfu']:.3f} | "
                   f"{(pp['step_time_ms'] / 1000) if pp else float('nan'):.2f} | {r['gain_over_pp_only']}x | "
                   f"{r['alpa_over_ours']:.0f}x | {r['aceso_over_ours']:.0f}x |")
    out += ["", "Megatron-LM PTD-P Table 1 (" + d["megatron_source"] + "): the paper's TP/PP/DP and batch, micro-batch 1, "
            "1F1B, recompute on, DDP; TFLOP/s per GPU by the paper's eq. 3; then pipeplan's pick on the same GPUs and "
            "batch (its eq.-3 TFLOP/s over-counts by up to 4/3 when it does not recompute; its MFU does not).", "",
            ("| params | GPUs | batch | paper TP/PP/DP | published TFLOP/s | predicted | predicted ÷ published | "
            "bubble | pipeplan's pick | pick eq.3 TFLOP/s | pick MFU | pick search s (complete) |"),
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["megatron_table1"]:
        p, k = r["paper"], r.get("pipeplan_pick") or {}
        if r["status"] != "ok":
            out.append(f"| {r['params_b']}B | {r['gpus']} | {r['batch']} | {p['tp']}/{p['pp']}/{p['dp']} | "
                       f"{p['tflops_per_gpu']} | error: {r.get('reason', '')[:80]} |||||||")
            continue
        out.append(f"| {r['params_b']}B | {r['gpus']} | {r['batch']} | {p['tp']}/{p['pp']}/{p['dp']} | "
                   f"{p['tflops_per_gpu']} | {p.get('predicted_tflops_per_gpu')} | {p.get('predicted_over_published')} | "
                   f"{p.get('bubble_fraction')} | {k.get('config', '-')} | {k.get('eq3_tflops_per_gpu')} | "
                   f"{k.get('mfu')} | {r.get('pick_search_s')} ({'yes' if r.get('pick_complete') else 'budget'}) |")
    return "\n".join(out)
