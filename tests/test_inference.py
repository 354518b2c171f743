"""Inference pipelines (issue 20): the cost terms against hand-computed cases, the Pareto DP against
brute force, the latency budget binding, DAG relays counted once, and the forward-only timelines."""

from __future__ import annotations

import pytest

from core.errors import PipeplanError
from planner.contracts.cluster import Cluster, Device, Link
from planner.costmodel.inference import InferenceConfig, evaluate_cuts, weight_bytes_per_param
from planner.solvers.inference import brute_force, solve_inference
from profiler.synthetic import chain_profile, dag_profile, random_chain_profile, unet_profile


def cluster(n: int, memory: int = 10**9, ms_per_byte: float = 0.001, latency_ms: float = 0.0) -> Cluster:
    link = Link(bandwidth_bytes_per_s=1000.0 / ms_per_byte, latency_s=latency_ms / 1000.0)
    return Cluster(devices=[Device(name=f"d{i}", memory_bytes=memory, speed=1.0) for i in range(n)],
                   intra_node=link, inter_node=link)


def hand():
    """Nodes of 1, 2, 3, 4 ms forward; 100, 200, 300, 400 parameters; edges of 1000, 2000, 3000 bytes;
    the model input 500 bytes, output (last node) 10 bytes; links 1 us per byte (1000 B = 1 ms)."""
    p = chain_profile([1, 2, 3, 4], params=[100, 200, 300, 400], edge_bytes=[1000, 2000, 3000])
    p.model.input_bytes = 500
    p.nodes[-1].output_bytes = 10
    return p


def test_hand_costs():
    p = hand()
    plan = evaluate_cuts(p, cluster(2), InferenceConfig(), [2])
    s0, s1 = plan.stages
    assert (s0.compute_ms, s0.recv_ms, s0.send_ms) == (3.0, 0.0, pytest.approx(2.0))
    assert (s1.compute_ms, s1.recv_ms, s1.send_ms) == (7.0, pytest.approx(2.0), 0.0)
    assert plan.period_ms == pytest.approx(9.0)          # the slowest stage plus its transfers
    assert plan.throughput_sps == pytest.approx(1000 / 9)
    assert plan.latency_ms == pytest.approx(3 + 2 + 7)   # forwards + one transfer
    # memory: fp32 weights, inputs + outputs held, the largest intermediate
    assert s0.memory.weights == 300 * 4
    assert s0.memory.live == 500 + 2000
    # n1 runs: the stage input (500), n0's output (1000) and n1's output (2000) alive at once, 2500 of it
    # held after the forward (live) - the output is not counted twice
    assert s0.memory.work == (500 + 1000 + 2000) - (500 + 2000)
    assert s0.memory.activation_peak(1) == 500 + 1000 + 2000
    assert s1.memory.weights == 700 * 4
    assert s1.memory.live == 2000 + 10
    assert s1.memory.work == (2000 + 3000 + 10) - (2000 + 10)   # n3 runs: input, n2's output, n3's output


def test_dtypes_and_in_flight():
    assert [weight_bytes_per_param(d) for d in ("fp32", "bf16", "int8")] == [4, 2, 1]
    p = hand()
    s0 = evaluate_cuts(p, cluster(2), InferenceConfig(weight_dtype="int8", in_flight=3), [2]).stages[0]
    assert s0.memory.weights == 300
    assert s0.memory.live == 3 * (500 + 2000) // 2          # bf16 activations: half the fp32 profile's bytes


def test_objectives_hand():
    p = hand()
    c = cluster(2)
    thr = solve_inference(p, c, InferenceConfig(objective="throughput"))
    # cut after n2 ([1,2,3] | [4]): periods 6+3=9 and 3+4=7 -> 9; after n1: 3+2=5, 2+7=9 -> 9 (lat 12);
    # after n2 latency 6+3+4=13; tie on period broken by latency: the cut [2]
    assert thr.period_ms == pytest.approx(9.0) and thr.cuts == [2] and thr.latency_ms == pytest.approx(12.0)
    lat = solve_inference(p, c, InferenceConfig(objective="latency"))
    assert lat.cuts == [] and lat.latency_ms == pytest.approx(10.0)   # one device, no transfer


def test_latency_budget_binds():
    """Throughput wants 3 stages (period 7) but that costs latency; a budget forces fewer transfers."""
    p = chain_profile([4, 4, 4], edge_bytes=[1000, 1000])
    p.model.input_bytes = 0
    c = cluster(3, ms_per_byte=0.002)   # 1000 B = 2 ms
    free = solve_inference(p, c, InferenceConfig(objective="throughput"))
    assert free.cuts == [1, 2] and free.period_ms == pytest.approx(8.0) and free.latency_ms == pytest.approx(16.0)
    bound = solve_inference(p, c, InferenceConfig(objective="throughput", latency_budget_ms=15.0))
    assert bound.latency_ms <= 15.0 and bound.period_ms > free.period_ms      # the budget binds
    assert len(bound.cuts) == 1 and bound.period_ms == pytest.approx(10.0) and bound.latency_ms == pytest.approx(14.0)
    with pytest.raises(PipeplanError, match="latency budget"):
        solve_inference(p, c, InferenceConfig(objective="throughput", latency_budget_ms=11.0))


def test_memory_forces_split():
    """1000 parameters a node: one device needs 16000 + 510 + 3000 B; 14000 B forces the cut [2]
    (stage memories 8000 + 2500 + 2500 and 8000 + 2010 + 3000)."""
    p = chain_profile([1, 2, 3, 4], params=[1000] * 4, edge_bytes=[1000, 2000, 3000])
    p.model.input_bytes = 500
    p.nodes[-1].output_bytes = 10
    with pytest.raises(PipeplanError, match="memory"):
        solve_inference(p, cluster(1, memory=14000), InferenceConfig())
    plan = solve_inference(p, cluster(2, memory=14000), InferenceConfig(objective="latency"))
    assert plan.fits and plan.cuts == [2]
    assert [s.memory.total for s in plan.stages] == [8000 + 500 + 1000 + 2000, 8000 + 2000 + 3000 + 10]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_dp_equals_brute_force(seed, objective):
    p = random_chain_profile(7, seed)
    tot = evaluate_cuts(p, cluster(1), InferenceConfig(), []).stages[0].memory.total
    c = cluster(3, memory=int(tot * 0.6), ms_per_byte=1e-6, latency_ms=0.05)
    cfg = InferenceConfig(objective=objective)
    bf = brute_force(p, c, cfg)
    if bf is None:
        with pytest.raises(PipeplanError):
            solve_inference(p, c, cfg)
        return
    dp = solve_inference(p, c, cfg)
    assert dp.objective_value == pytest.approx(bf.objective_value)
    # a budget between the optimum latency and the throughput plan's binds and is met
    if objective == "throughput":
        lat_opt = solve_inference(p, c, InferenceConfig(objective="latency")).latency_ms
        if dp.latency_ms > lat_opt + 1e-9:
            budget = (lat_opt + dp.latency_ms) / 2
            cfg2 = InferenceConfig(objective="throughput", latency_budget_ms=budget)
            b1, b2 = solve_inference(p, c, cfg2), brute_force(p, c, cfg2)
            assert b1.latency_ms <= budget and b1.period_ms == pytest.approx(b2.period_ms)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_interval_milp_equals_dp_and_brute_force(seed, objective):
    """The MILP (solver "ilp") and the DP read the same stage_terms: the same optimum as brute force, with
    and without a binding latency budget, on chains and on a U-Net DAG (relays across cuts)."""
    import dataclasses

    p = random_chain_profile(8, seed) if seed < 6 else unet_profile(depth=2, width=1 + seed % 2)
    tot = evaluate_cuts(p, cluster(1), InferenceConfig(), []).stages[0].memory.total
    c = cluster(4, memory=int(tot * (0.45 if seed < 6 else 0.8)), ms_per_byte=1e-6, latency_ms=0.05)
    cfgs = [InferenceConfig(objective=objective)]
    free = brute_force(p, c, cfgs[0])
    if free is not None:
        lat_opt = brute_force(p, c, InferenceConfig(objective="latency")).latency_ms
        cfgs.append(InferenceConfig(objective=objective, latency_budget_ms=(lat_opt + free.latency_ms) / 2 + 1e-6))
    for cfg in cfgs:
        bf = brute_force(p, c, cfg)
        if bf is None:
            for solver in ("dp", "ilp"):
                with pytest.raises(PipeplanError, match="memory"):
                    solve_inference(p, c, dataclasses.replace(cfg, solver=solver))
            continue
        dp = solve_inference(p, c, dataclasses.replace(cfg, solver="dp"))
        ilp = solve_inference(p, c, dataclasses.replace(cfg, solver="ilp"))
        assert ilp.solver["method"].startswith("interval-milp") and ilp.solver["exact"] and dp.solver["exact"]
        for plan in (dp, ilp):
            assert plan.fits and plan.meets_budget
            assert (plan.objective_value, plan.period_ms, plan.latency_ms) == pytest.approx(
                (bf.objective_value, bf.period_ms, bf.latency_ms), rel=1e-7)


def test_latency_budget_binds_in_the_milp():
    """The hand case: throughput alone cuts at 3 (period 10: [1,2,3] then [4] + its recv), latency 12; a budget
    of 11 ms rules that out and the MILP answers with the latency-best cut."""
    p = hand()
    c = cluster(2)
    free = solve_inference(p, c, InferenceConfig(objective="throughput", solver="ilp"))
    bound = solve_inference(p, c, InferenceConfig(objective="throughput", latency_budget_ms=11.0, solver="ilp"))
    assert free.latency_ms > 11.0 >= bound.latency_ms
    assert bound.period_ms > free.period_ms
    with pytest.raises(PipeplanError, match="latency budget"):
        solve_inference(p, c, InferenceConfig(objective="throughput", latency_budget_ms=9.0, solver="ilp"))


def test_auto_answers_with_the_milp_where_the_dp_thins(monkeypatch):
    """Past MAX_LABELS Pareto labels per cut the DP drops some and is no longer exact: solver "auto" then
    answers with the MILP (and says so); with the cap lifted the DP alone agrees."""
    import planner.solvers.inference as inf

    p = random_chain_profile(14, 3)
    c = cluster(4, ms_per_byte=1e-6, latency_ms=0.05)
    cfg = InferenceConfig(objective="throughput")
    exact_dp = inf.solve_inference(p, c, InferenceConfig(objective="throughput", solver="dp"))
    assert exact_dp.solver["exact"]
    monkeypatch.setattr(inf, "MAX_LABELS", 1)
    thinned = inf.solve_inference(p, c, InferenceConfig(objective="throughput", solver="dp"))
    auto = inf.solve_inference(p, c, cfg)
    assert not thinned.solver["exact"]
    assert auto.solver["method"].startswith("interval-milp") and auto.solver["exact"]
    assert auto.period_ms == pytest.approx(exact_dp.period_ms) and auto.latency_ms == pytest.approx(exact_dp.latency_ms)
    monkeypatch.setattr(inf, "MAX_ILP_INTERVALS", 10)
    big = inf.solve_inference(p, c, cfg)
    assert big.solver["method"] == "pareto-dp" and "not proven optimal" in big.solver["note"]
    with pytest.raises(PipeplanError, match="interval variables"):
        inf.solve_inference(p, c, InferenceConfig(solver="ilp"))


def test_inference_mode_in_train_config_and_plan_round_trip():
    """TrainConfig carries the inference mode (JSON round trip); solve() dispatches on it; the inference plan
    JSON round-trips and records its mode."""
    from planner.contracts.config import TrainConfig
    from planner.costmodel.inference import InferencePlan
    from planner.solvers.solve import solve

    inf = InferenceConfig(objective="latency", weight_dtype="bf16", micro_batch_size=1, in_flight=2)
    cfg = TrainConfig.for_inference(inf)
    assert cfg.mode == "inference" and cfg.precision == "bf16_mixed"
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    assert TrainConfig.from_json('{"mode": "inference"}').inference == InferenceConfig()
    with pytest.raises(PipeplanError, match="mode"):
        TrainConfig(mode="serve")
    for bad in ('{"mode": "inference", "inference": [1, 2]}', '{"mode": "inference", "inference": {"objective": 3}}',
                '{"mode": "inference", "inference": {"bogus": 1}}'):
        with pytest.raises(PipeplanError, match="inference"):
            TrainConfig.from_json(bad)
    with pytest.raises(PipeplanError, match="mode \"inference\""):
        TrainConfig(inference=inf)
    with pytest.raises(PipeplanError, match="micro_batch_size is 2"):
        TrainConfig(mode="inference", micro_batch_size=2, inference=inf)
    with pytest.raises(PipeplanError, match="precision"):
        TrainConfig(mode="inference", inference=inf)
    plan = solve(hand(), cluster(2), cfg)
    assert isinstance(plan, InferencePlan) and plan.config == inf
    assert plan.to_dict()["mode"] == "inference"
    again = InferencePlan.from_json(plan.to_json())
    assert again.to_dict() == plan.to_dict()
    bad = plan.to_dict()
    bad["cuts"] = [1, 2]
    with pytest.raises(PipeplanError, match="cuts"):
        InferencePlan.from_dict(bad)
    with pytest.raises(PipeplanError, match="schema"):
        InferencePlan.from_dict({**plan.to_dict(), "schema": "pipeplan.inferenceplan/9"})


def test_dag_relay_counted_once():
    """n0 -> n1 -> n2 -> n3 and a skip n0 -> n3 (1000 B): cutting at 2 and 3 relays it through stage 1."""
    p = dag_profile([1, 1, 1, 1], [(0, 1, 100), (1, 2, 100), (2, 3, 100), (0, 3, 1000)])
    p.model.input_bytes = 0
    plan = evaluate_cuts(p, cluster(3), InferenceConfig(), [1, 3])
    mid = plan.stages[1]
    assert mid.nodes == ["n1", "n2"]
    assert mid.in_bytes == 1100 and mid.out_bytes == 1100
    assert mid.memory.live == 1100 + 1100 - 1000     # the skip tensor is held once
    assert mid.send_ms == pytest.approx(1.1)


def test_unet_dag_solves():
    p = unet_profile(depth=3, width=2)
    for obj in ("throughput", "latency"):
        plan = solve_inference(p, cluster(4, ms_per_byte=1e-7), InferenceConfig(objective=obj))
        assert plan.fits and sum(len(s.nodes) for s in plan.stages) == len(p.nodes)


def test_simulator_request_and_stream():
    from planner.pipeline.inference_sim import simulate_inference, steady_state_period_ms

    p = hand()
    plan = evaluate_cuts(p, cluster(2), InferenceConfig(), [2])
    one = simulate_inference(plan, 1)
    assert one.makespan_ms == pytest.approx(plan.latency_ms)
    assert {e.op for e in one.events} == {"F", "send", "recv"}
    assert one.peak_memory_bytes == [s.memory.live for s in plan.stages]
    assert steady_state_period_ms(plan, 40) == pytest.approx(plan.period_ms)
    stream = simulate_inference(plan, 10)
    assert stream.makespan_ms == pytest.approx(plan.latency_ms + 9 * plan.period_ms)
    assert stream.peak_memory_bytes == [s.memory.live for s in plan.stages]   # one micro-batch held at a time


@pytest.mark.parametrize("seed", range(4))
def test_simulated_period_matches_cost_model(seed):
    from planner.pipeline.inference_sim import simulate_inference, steady_state_period_ms

    p = random_chain_profile(8, seed)
    c = cluster(4, ms_per_byte=1e-5, latency_ms=0.1)
    plan = solve_inference(p, c, InferenceConfig(objective="throughput"))
    assert steady_state_period_ms(plan, 60) == pytest.approx(plan.period_ms, rel=1e-9)
    assert simulate_inference(plan, 1).makespan_ms == pytest.approx(plan.latency_ms)


def test_cli_infer(tmp_path, capsys):
    import json

    from cli import main

    p = hand()
    prof = tmp_path / "p.json"
    prof.write_text(p.to_json())
    out = tmp_path / "i.json"
    rc = main(["infer", f"profile:{prof}", "--devices", "2", "--memory", "1GB", "--objective", "latency",
               "--simulate", "4", "-o", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "latency 10.00 ms" in text and "simulated stream of 4" in text
    assert "solved by pareto-dp" in text and "proven optimal" in text
    data = json.loads(out.read_text())
    assert data["latency_ms"] == pytest.approx(10.0) and data["cuts"] == []
    assert main(["infer", f"profile:{prof}", "--devices", "1", "--memory", "1KB"]) == 2
    capsys.readouterr()
    assert main(["infer", f"profile:{prof}", "--devices", "2", "--memory", "1GB", "--solver", "ilp",
                 "--objective", "latency", "-o", str(out)]) == 0
    assert "solved by interval-milp (highs)" in capsys.readouterr().out
    assert json.loads(out.read_text())["latency_ms"] == pytest.approx(10.0)


def test_bench_markdown_section(tmp_path):
    """bench_inference.write_docs replaces only its own section between the markers."""
    from bench.bench_inference import BEGIN, END, write_docs

    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# top\n\n{BEGIN}\nOLDSECTION\n{END}\n\n## after\n")
    data = {"quick": True, "seconds": 1.0,
            "volumes": [{"model": "m", "volume": 8, "nodes": 3, "by_dtype": {"fp32": {
                "single_l4": {"needs_gib": 30.0, "fits": False},
                "throughput": {"error": "no"}, "latency": {"stages": 2, "throughput_sps": 1.0, "latency_ms": 2.0,
                                                           "memory_gib": [1.0, 2.0]}}}}],
            "cpu": {"error": "skipped"}}
    write_docs(data, doc)
    text = doc.read_text()
    assert text.startswith("# top") and text.rstrip().endswith("## after") and "OLDSECTION" not in text
    assert "does not fit" in text and "| 8³ | fp32 |" in text
