"""Plans that contradict themselves (issue 18, class 4): planner.contracts.plan.validate_plan.

Plan.from_dict validates every plan it reads; `pipeplan simulate/export --profile` also checks the
plan against the profile it was made from. Every plan the solver makes validates (all schedules,
device_order auto, infeasible plans with stages, the golden corpus); each broken rule is refused
with a message naming the stage; and a hypothesis fuzz of stage structures checks the validator
against an independent oracle.
"""

from __future__ import annotations

import copy
import functools
import json

import pytest
from hostile.harness import base_documents, run_in_process
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import PipeplanError
from planner.contracts.cluster import Cluster
from planner.contracts.config import TrainConfig
from planner.contracts.plan import Plan, validate_plan
from planner.pipeline.schedules import check_schedule, chunks_per_device, stage_to_device
from planner.solvers.solve import solve
from profiler.profile import ModelInfo, Profile, ProfileEdge, ProfileNode, Provenance


def chain_profile(n: int = 8, *, skip: bool = False) -> Profile:
    nodes = [ProfileNode(id=f"layers.{i}", name=f"block {i}", kind="block", module_path=f"layers.{i}",
                         fwd_flops=1e9, bwd_flops=2e9, fwd_ms=1.0 + 0.1 * i, bwd_ms=2.0, param_bytes=4_000_000,
                         param_count=1_000_000, activation_bytes=2_000_000, output_bytes=65_536) for i in range(n)]
    edges = [ProfileEdge(src=f"layers.{i}", dst=f"layers.{i + 1}", bytes=65_536) for i in range(n - 1)]
    if skip:
        edges.append(ProfileEdge(src="layers.0", dst=f"layers.{n - 1}", bytes=1024))
    return Profile(model=ModelInfo(source="sample:gpt:tiny", name="chain", param_count=n * 1_000_000,
                                   micro_batch_size=1, seq_len=64, input_bytes=512),
                   provenance=Provenance(method="estimated", device="A100-80GB", reference_tflops=19.5),
                   nodes=nodes, edges=sorted(edges, key=lambda e: (int(e.src.split(".")[1]), e.dst)))


PROFILE = chain_profile(skip=True)
SHAPES = [("1F1B", 2, 1, "fixed"), ("GPipe", 3, 1, "fixed"), ("ZBH1", 2, 1, "fixed"),
          ("Interleaved1F1B", 2, 2, "fixed"), ("ZBV", 2, 2, "fixed"), ("1F1B", 3, 1, "auto")]


@pytest.fixture(scope="module")
def solved() -> dict[tuple, Plan]:
    out = {}
    for schedule, devices, v, order in SHAPES:
        cluster = Cluster.uniform(devices, memory_bytes=8 * 2**30)
        config = TrainConfig(schedule=schedule, num_microbatches=4, virtual_stages=v, device_order=order,
                             solver="dp" if v == 1 else "highs", time_limit_s=20)
        out[(schedule, devices, v, order)] = solve(PROFILE, cluster, config)
    return out


def doc(plan: Plan) -> dict:
    return json.loads(plan.to_json())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(map(str, s)))
def test_solver_plans_validate_and_round_trip(shape, solved):
    plan = solved[shape]
    assert plan.feasible and plan.stages
    validate_plan(plan, PROFILE)
    again = Plan.from_json(plan.to_json())
    assert again == plan
    again.validate(PROFILE)


def test_infeasible_plans_validate():
    """The solver's infeasible plans: with stages (a partition over memory) or without (a diagnosis)."""
    tiny = Cluster.uniform(2, memory_bytes=2**20)
    plan = solve(PROFILE, tiny, TrainConfig(num_microbatches=4, solver="dp"))
    assert not plan.feasible
    validate_plan(Plan.from_json(plan.to_json()), PROFILE)
    from planner.solvers.evaluate import evaluate_partition

    scored = evaluate_partition(PROFILE, tiny, TrainConfig(num_microbatches=4), [[f"layers.{i}" for i in range(4)],
                                                                              [f"layers.{i}" for i in range(4, 8)]],
                                backend="uniform_layers")
    assert not scored.feasible and scored.stages
    validate_plan(Plan.from_json(scored.to_json()), PROFILE)


# -- each rule, with the message naming the stage ------------------------------------------------------

def _one_f_one_b(solved) -> dict:
    return doc(solved[("1F1B", 2, 1, "fixed")])


def edit(d: dict, change) -> dict:
    d = copy.deepcopy(d)
    change(d)
    return d


def _stage_ids(d: dict, i: int) -> list[str]:
    return d["stages"][i]["node_ids"]


BREAKS = [
    ("overlap", lambda d: _stage_ids(d, 1).insert(0, _stage_ids(d, 0)[-1]),
     r"plan stage 1 repeats layer 'layers\.\d' \(also in stage 0\)"),
    ("twice_in_a_stage", lambda d: _stage_ids(d, 0).append(_stage_ids(d, 0)[0]), r"plan stage 0 lists layer .* twice"),
    ("index_gap", lambda d: d["stages"][1].update(index=7), r"position 1 has index 7"),
    ("index_order", lambda d: d["stages"].reverse(), r"position 0 has index 1"),
    ("empty_stage", lambda d: d["stages"][0].update(node_ids=[]), r"plan stage 0 has no layers"),
    ("device_out_of_range", lambda d: d["stages"][1].update(device=2), r"device 2, but the plan's cluster has 2"),
    ("one_device_two_stages", lambda d: d["stages"][1].update(device=0), r"2 stages on 1 device\(s\)"),
    ("microbatches", lambda d: d["config"].update(num_microbatches=1), r"1F1B needs at least as many micro-batches"),
    ("interleaving", lambda d: d["config"].update(schedule="Interleaved1F1B", virtual_stages=2),
     r"Interleaved1F1B runs 2 stages per device: 2 device\(s\) need 4 stages"),
    ("inference_mode", lambda d: d["config"].update(mode="inference"), r"mode 'inference': an inference plan is"),
    ("feasible_without_stages", lambda d: d.update(stages=[]), r"feasible but has no stages"),
    ("negative_time", lambda d: d["stages"][1].update(bwd_ms=-1.0), r"plan stage 1 bwd_ms is -1\.0"),
    ("negative_memory", lambda d: d["stages"][0]["memory"].update(activations=-5), r"memory\.activations is -5"),
    ("zero_limit", lambda d: d["stages"][0].update(memory_limit_bytes=0), r"memory_limit_bytes is 0"),
    ("stages_not_a_list", lambda d: d.update(stages="all"), r"stages must be a list"),
    ("memory_not_an_object", lambda d: d["stages"][0].update(memory=[1, 2]), r"stages\[0\]\.memory must be a JSON object"),
]


@pytest.mark.parametrize("name, change, expect", BREAKS, ids=[b[0] for b in BREAKS])
def test_broken_plans_are_refused_naming_the_problem(name, change, expect, solved):
    with pytest.raises(PipeplanError, match=expect):
        Plan.from_dict(edit(_one_f_one_b(solved), change))


def test_placement_must_follow_the_schedule(solved):
    """ZBV puts stages d and 2P-1-d on device d (V placement); a loop placement contradicts it."""
    d = doc(solved[("ZBV", 2, 2, "fixed")])
    assert [s["device"] for s in d["stages"]] == stage_to_device(2, "ZBV", 2) == [0, 1, 1, 0]
    for s, dev in zip(d["stages"], [0, 1, 0, 1]):
        s["device"] = dev
    with pytest.raises(PipeplanError, match=r"plan stage 2 is on device 0, but ZBV places it on the device of "
                                            r"stage 1 \(device 1\)"):
        Plan.from_dict(d)


def test_auto_device_order_is_any_one_to_one_placement(solved):
    d = doc(solved[("1F1B", 3, 1, "auto")])
    for s, dev in zip(d["stages"], [2, 0, 1]):
        s["device"] = dev
    Plan.from_dict(d)  # a permutation of the devices is a placement 1F1B accepts


def _swap_across_the_cut(first: list[str], second: list[str]) -> None:
    """The last layer of stage 0 and the first of stage 1 change places: the edge between them runs back."""
    first[-1], second[0] = second[0], first[-1]


PROFILE_BREAKS = [
    ("fingerprint", lambda d: d.update(profile_fingerprint="deadbeefdeadbeef"), r"made from another profile"),
    ("missing_layer", lambda d: _stage_ids(d, 1).pop(), r"profile layer 'layers\.7' is in no stage"),
    ("unknown_layer", lambda d: _stage_ids(d, 1).append("layers.99"), r"lists layer 'layers\.99', which the profile"),
    ("edge_backwards", lambda d: _swap_across_the_cut(_stage_ids(d, 0), _stage_ids(d, 1)),
     r"plan stage 0 holds layer 'layers\.\d', which reads 'layers\.\d' from stage 1, a later stage"),
    ("order_in_stage", lambda d: _stage_ids(d, 0).reverse(), r"plan stage 0 lists layer .* before .*, which it reads"),
]


@pytest.mark.parametrize("name, change, expect", PROFILE_BREAKS, ids=[b[0] for b in PROFILE_BREAKS])
def test_plan_against_its_profile(name, change, expect, solved):
    d = edit(_one_f_one_b(solved), change)
    plan = Plan.from_dict(d)  # structurally fine on its own
    with pytest.raises(PipeplanError, match=expect):
        validate_plan(plan, PROFILE)


def test_cli_simulate_and_export_check_the_profile(solved, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(solved[("1F1B", 2, 1, "fixed")].to_json())
    profile = tmp_path / "profile.json"
    profile.write_text(PROFILE.to_json())
    assert run_in_process(["simulate", str(plan), "--profile", str(profile)], tmp_path).rc == 0
    assert run_in_process(["export", str(plan), "-o", str(tmp_path / "job"), "--profile", str(profile)],
                          tmp_path).rc == 0
    other = tmp_path / "other.json"
    other.write_text(chain_profile(8).to_json())  # no skip edge: another fingerprint
    res = run_in_process(["simulate", str(plan), "--profile", str(other)], tmp_path)
    assert res.rc == 2 and res.stderr.startswith("pipeplan simulate: error: the plan was made from another profile")
    res = run_in_process(["export", str(plan), "-o", str(tmp_path / "job2"), "--profile", str(other)], tmp_path)
    assert res.rc == 2 and "made from another profile" in res.stderr and not (tmp_path / "job2").exists()


def test_hostile_base_plan_is_valid_against_its_profile():
    base = base_documents()
    validate_plan(Plan.from_dict(base.plan), Profile.from_dict(base.profile))


# -- fuzzing: the validator against an independent oracle -----------------------------------------------

FUZZ_IDS = [f"layers.{i}" for i in range(8)]


def oracle(plan: dict, profile: Profile) -> bool:
    """Is this stage structure valid? Written from the rules, not from validate_plan's code."""
    stages, cfg = plan["stages"], plan["config"]
    if not stages:
        return not plan["feasible"]
    if [s["index"] for s in stages] != list(range(len(stages))):
        return False
    n_dev = len(plan["cluster"]["devices"])
    if any(not 0 <= s["device"] < n_dev or not s["node_ids"] for s in stages):
        return False
    flat = [n for s in stages for n in s["node_ids"]]
    if len(flat) != len(set(flat)):
        return False
    used = {s["device"] for s in stages}
    v = chunks_per_device(cfg["schedule"], cfg["virtual_stages"])
    if len(stages) != len(used) * v:
        return False
    try:
        check_schedule(cfg["schedule"], len(used), cfg["num_microbatches"], cfg["virtual_stages"])
    except PipeplanError:
        return False
    rank_of_stage = stage_to_device(len(used), cfg["schedule"], cfg["virtual_stages"])
    pairs = {(rank_of_stage[i], s["device"]) for i, s in enumerate(stages)}
    if len(pairs) != len(used) or len({r for r, _ in pairs}) != len(used):
        return False
    # against the profile: a partition of its layers in graph order
    if sorted(flat) != sorted(n.id for n in profile.nodes):
        return False
    where = {n: (i, k) for i, s in enumerate(stages) for k, n in enumerate(s["node_ids"])}
    return all(where[e.src] <= where[e.dst] for e in profile.edges)


@st.composite
def stage_structures(draw, template: dict) -> dict:
    """Mostly well-formed stage structures (a partition of the layers, placed as the schedule says),
    with a few of the ways a plan can lie mixed in: layers permuted, repeated, missing or unknown;
    empty stages; devices out of range or off the schedule's placement; indices out of order; stage
    counts and micro-batches the schedule refuses; a feasible plan without stages."""
    d = copy.deepcopy(template)
    schedule, v = draw(st.sampled_from([("1F1B", 1), ("GPipe", 1), ("ZBH1", 1), ("Interleaved1F1B", 2), ("ZBV", 2)]))
    d["config"].update(schedule=schedule, virtual_stages=v, num_microbatches=draw(st.sampled_from([1, 2, 4, 6])))
    n_stages = draw(st.integers(0, 6))
    ids = list(draw(st.permutations(FUZZ_IDS))) if draw(st.integers(0, 3)) == 0 else list(FUZZ_IDS)
    if draw(st.integers(0, 3)) == 0:
        ids.pop(draw(st.integers(0, len(ids) - 1)))
    ids += draw(st.lists(st.sampled_from([*FUZZ_IDS, "layers.99"]), max_size=1 if draw(st.integers(0, 3)) == 0 else 0))
    k = max(0, n_stages - 1)
    inner = st.integers(1, max(1, len(ids) - 1))
    cuts = sorted(draw(st.lists(inner, min_size=k, max_size=k, unique=k < len(ids) and draw(st.integers(0, 4)) > 0)))
    bounds = [0, *cuts, len(ids)]
    devices = draw(st.permutations([0, 1, 2]))
    p = max(1, n_stages // v)
    placement = stage_to_device(p, schedule, v) if p <= 3 else [i % 3 for i in range(p * v)]
    stage0 = template["stages"][0]
    d["stages"] = []
    for i in range(n_stages):
        device = devices[placement[i] % 3] if i < len(placement) else devices[i % 3]
        if draw(st.integers(0, 7)) == 0:
            device = draw(st.integers(-1, 3))
        index = draw(st.integers(-1, 6)) if draw(st.integers(0, 9)) == 0 else i
        d["stages"].append({**copy.deepcopy(stage0), "index": index, "device": device,
                            "node_ids": ids[bounds[i]:bounds[i + 1]]})
    if n_stages > 1 and draw(st.integers(0, 4)) == 0:  # two stages trade devices: off the placement for 2 chunks
        a, b = draw(st.permutations(range(n_stages)))[:2]
        d["stages"][a]["device"], d["stages"][b]["device"] = d["stages"][b]["device"], d["stages"][a]["device"]
    d["feasible"] = draw(st.booleans()) if not n_stages else True
    return d


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_plan_structure_against_oracle(data):
    d = data.draw(stage_structures(json.loads(_template())))
    expected = oracle(d, PROFILE)
    try:
        validate_plan(Plan.from_dict(d), PROFILE)
        got = True
    except PipeplanError as exc:
        got = False
        assert "\n" not in str(exc)
    assert got == expected, (expected, [(s["index"], s["device"], s["node_ids"]) for s in d["stages"]], d["config"])


@functools.cache
def _template() -> str:
    """A solved plan on a 3-device cluster (so devices 0..2 exist), as JSON."""
    plan = solve(PROFILE, Cluster.uniform(2, memory_bytes=8 * 2**30), TrainConfig(num_microbatches=4, solver="dp"))
    d = json.loads(plan.to_json())
    d["cluster"] = json.loads(Cluster.uniform(3, memory_bytes=8 * 2**30).to_json())
    return json.dumps(d)
