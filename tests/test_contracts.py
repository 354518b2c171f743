"""The JSON contracts: round trips, and parsers that return a valid object or raise
PipeplanError, never anything else (hypothesis fuzzing)."""

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import PipeplanError
from planner.contracts.cluster import Cluster, Device, Link, parse_memory
from planner.contracts.config import TrainConfig
from planner.contracts.plan import Diagnosis, Plan, SolverInfo, StagePlan
from planner.contracts.timeline import Event, Timeline
from planner.costmodel.memory import StageMemory
from profiler.profile import ModelInfo, Profile, ProfileEdge, ProfileNode, Provenance


def small_profile() -> Profile:
    nodes = [ProfileNode(id=f"layers.{i}", name=f"block {i}", kind="block", module_path=f"layers.{i}",
                         fwd_flops=1e9, bwd_flops=2e9, fwd_ms=1.0, bwd_ms=2.0, param_bytes=400, param_count=100,
                         activation_bytes=1000, output_bytes=64) for i in range(3)]
    edges = [ProfileEdge(src="layers.0", dst="layers.1", bytes=64), ProfileEdge(src="layers.0", dst="layers.2", bytes=64),
             ProfileEdge(src="layers.1", dst="layers.2", bytes=64)]
    return Profile(model=ModelInfo(source="sample:mlp:tiny", name="mlp", param_count=300),
                   provenance=Provenance(method="estimated", device="A100-80GB", reference_tflops=19.5),
                   nodes=nodes, edges=edges)


def small_plan() -> Plan:
    profile = small_profile()
    stage = StagePlan(index=0, device=0, node_ids=["layers.0", "layers.1", "layers.2"], fwd_ms=3, bwd_ms=6,
                      bwd_input_ms=3, bwd_weight_ms=3, comm_out_ms=0, comm_out_bytes=0, recompute=False,
                      in_flight=1, memory=StageMemory(params=1200, grads=1200, optimizer=2400, activations=3000),
                      memory_limit_bytes=10**9, param_count=300)
    return Plan(model=profile.model, profile_fingerprint=profile.fingerprint(),
                cluster=Cluster.uniform(1, "A100-80GB"), config=TrainConfig(), feasible=True, stages=[stage],
                step_time_ms=72.0, throughput_samples_per_s=111.1, bubble_fraction=0.0,
                solver=SolverInfo(backend="dp", status="optimal", objective_ms=72.0, gap=0.0),
                diagnosis=None, baselines={"uniform_layers": 72.0, "param_balanced": None})


def test_profile_round_trip_and_graph():
    p = small_profile()
    q = Profile.from_json(p.to_json())
    assert q == p and q.fingerprint() == p.fingerprint()
    g = p.graph()
    assert list(g.edges) == [("layers.0", "layers.1"), ("layers.0", "layers.2"), ("layers.1", "layers.2")]
    assert p.total_param_bytes == 1200


def test_cluster_config_plan_timeline_round_trip():
    c = Cluster(devices=[Device.from_preset("A100-80GB"), Device.from_preset("L4", node=1)],
                intra_node=Link(bandwidth_bytes_per_s=3e11), inter_node=Link(bandwidth_bytes_per_s=2.5e10, latency_s=1e-5))
    assert Cluster.from_json(c.to_json()) == c
    cfg = TrainConfig(schedule="interleaved1f1b", virtual_stages=2, global_batch=16, num_microbatches=16)
    assert cfg.schedule == "Interleaved1F1B"
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    plan = small_plan()
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.to_dict()["stages"][0]["memory"]["total"] == plan.stages[0].memory.total
    plan.feasible, plan.stages, plan.diagnosis = False, [], Diagnosis(message="no fit", problems=["x"], min_devices=3)
    assert Plan.from_json(plan.to_json()) == plan
    t = Timeline(schedule="1F1B", num_devices=1, num_microbatches=1, makespan_ms=3.0, bubble_fraction=0.0,
                 bubble_per_device=[0.0], events=[Event(device=0, stage=0, microbatch=0, op="F", start_ms=0, end_ms=1)],
                 memory_ms=[[(0.0, 0), (1.0, 10)]], peak_memory_bytes=[10])
    assert Timeline.from_json(t.to_json()) == t


def test_link_time_and_memory_parsing():
    link = Link(bandwidth_bytes_per_s=1e9, latency_s=1e-3)
    assert link.transfer_ms(1e9) == pytest.approx(1001.0)
    assert link.transfer_ms(0) == 0.0
    assert parse_memory("80GB") == 80 * 2**30 == parse_memory("80 GiB")
    assert parse_memory("512MB") == 512 * 2**20
    for bad in ("", "-3GB", "lots", "nanGB", "0"):
        with pytest.raises(PipeplanError):
            parse_memory(bad)


@pytest.mark.parametrize("kwargs, needle", [
    ({"num_microbatches": 0}, "num_microbatches"),
    ({"num_microbatches": 3, "global_batch": 8}, "global_batch"),
    ({"global_batch": 10, "micro_batch_size": 4, "num_microbatches": None}, "multiple"),
    ({"schedule": "PipeDream"}, "schedule"),
    ({"virtual_stages": 2}, "Interleaved1F1B"),
    ({"optimizer": "lion"}, "optimizer"),
    ({"time_limit_s": float("nan")}, "time_limit_s"),
    ({"num_microbatches": None}, "global_batch"),
])
def test_train_config_rejects_bad_numbers_naming_the_field(kwargs, needle):
    with pytest.raises(PipeplanError, match=needle):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("devices, needle", [
    ([], "no devices"),
    ([{"name": "g", "memory_bytes": -1}], "memory_bytes"),
    ([{"name": "g", "memory_bytes": 0}], "memory_bytes"),
    ([{"name": "", "memory_bytes": 10}], "name"),
    ([{"name": "g", "memory_bytes": 10, "preset": "TPUv9"}], "preset"),
    ([{"name": "g", "memory_bytes": 10, "speed": 0}], "speed"),
    ([{"name": "g", "memory_bytes": 10, "colour": "red"}], "unknown field"),
    ([None], "object"),
])
def test_cluster_rejects_bad_devices_naming_the_field(devices, needle):
    with pytest.raises(PipeplanError, match=needle):
        Cluster.from_dict({"schema": "pipeplan.cluster/1", "devices": devices})


def test_profile_rejects_nan_unknown_schema_and_backward_edges():
    good = json.loads(small_profile().to_json())
    with pytest.raises(PipeplanError, match="NaN"):
        Profile.from_json(small_profile().to_json().replace('"fwd_ms": 1.0', '"fwd_ms": NaN', 1))
    with pytest.raises(PipeplanError, match="schema"):
        Profile.from_dict({**good, "schema": "pipeplan.profile/99"})
    bad = json.loads(json.dumps(good))
    bad["edges"].append({"src": "layers.2", "dst": "layers.0", "bytes": 1})
    with pytest.raises(PipeplanError, match="topological"):
        Profile.from_dict(bad)
    with pytest.raises(PipeplanError, match="not valid JSON"):
        Profile.from_json(small_profile().to_json()[:50])


# -- fuzzing: valid object or PipeplanError, nothing else ------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)


def mutated(doc: dict) -> st.SearchStrategy:
    """A valid document with one field (possibly nested) replaced by an arbitrary JSON value."""
    paths = []

    def walk(obj, path):
        if isinstance(obj, dict):
            for k, v in obj.items():
                paths.append(path + (k,))
                walk(v, path + (k,))
        elif isinstance(obj, list):
            for i, v in enumerate(obj[:2]):
                paths.append(path + (i,))
                walk(v, path + (i,))
    walk(doc, ())

    def replace(path_value):
        path, value = path_value
        out = json.loads(json.dumps(doc))
        target = out
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return out
    return st.tuples(st.sampled_from(paths), json_values).map(replace)


def assert_valid_or_pipeplan_error(parse, data):
    try:
        obj = parse(data)
    except PipeplanError:
        return
    obj.to_json()  # a parsed object must serialise again


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_profile_parser(data):
    assert_valid_or_pipeplan_error(Profile.from_dict, data.draw(mutated(json.loads(small_profile().to_json()))))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_cluster_parser(data):
    doc = json.loads(Cluster(devices=[Device.from_preset("L4"), Device(name="x", memory_bytes=10**9)]).to_json())
    assert_valid_or_pipeplan_error(Cluster.from_dict, data.draw(mutated(doc)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_train_config_parser(data):
    doc = json.loads(TrainConfig(global_batch=16, num_microbatches=8, micro_batch_size=2).to_json())
    assert_valid_or_pipeplan_error(TrainConfig.from_dict, data.draw(mutated(doc)))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_fuzz_parsers_on_arbitrary_json(value):
    for parse in (Profile.from_dict, Cluster.from_dict, TrainConfig.from_dict, Plan.from_dict):
        assert_valid_or_pipeplan_error(parse, value)


def test_non_finite_is_rejected_everywhere():
    assert not math.isfinite(float("inf"))
    with pytest.raises(PipeplanError):
        Cluster.from_json('{"schema": "pipeplan.cluster/1", "devices": [{"name": "g", "memory_bytes": Infinity}]}')


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_plan_parser(data):
    """Any one field of a valid plan replaced by any JSON value: a valid Plan or PipeplanError (issue 18);
    the stage structure itself is fuzzed against an oracle in tests/test_plan_validation.py."""
    assert_valid_or_pipeplan_error(Plan.from_dict, data.draw(mutated(json.loads(small_plan().to_json()))))


# -- duplicate keys: ambiguous, refused with the key and where it is (issue 18, class 3) -------------------
@pytest.mark.parametrize("parse, text, expect", [
    (Profile.from_json, lambda: small_profile().to_json().replace('"fwd_ms": 1.0', '"fwd_ms": 1.0, "fwd_ms": 9.0', 1),
     r'^profile JSON: duplicate key "fwd_ms" at \$\.nodes\[0\];'),
    (Cluster.from_json, lambda: '{"schema": "pipeplan.cluster/1", "devices": [{"name": "g", "memory_bytes": 10, '
                                '"memory_bytes": 99999999999}]}',
     r'^cluster JSON: duplicate key "memory_bytes" at \$\.devices\[0\];'),
    (TrainConfig.from_json, lambda: TrainConfig().to_json().replace('"schedule": "1F1B"',
                                                                    '"schedule": "1F1B", "schedule": "GPipe"'),
     r'^train config JSON: duplicate key "schedule" at \$;'),
    (Plan.from_json, lambda: small_plan().to_json().replace('"num_microbatches": 8',
                                                            '"num_microbatches": 8, "num_microbatches": 64'),
     r'^plan JSON: duplicate key "num_microbatches" at \$\.config;'),
    (Plan.from_json, lambda: small_plan().to_json().replace('"baselines": {', '"baselines": {"x y": 1.0, "x y": 2.0, '),
     r'^plan JSON: duplicate key "x y" at \$\.baselines;'),
    (Timeline.from_json, lambda: '{"schema": "pipeplan.timeline/1", "events": [], "events": []}',
     r'^timeline JSON: duplicate key "events" at \$;'),
], ids=["profile", "cluster", "train_config", "plan", "plan_odd_key", "timeline"])
def test_duplicate_keys_are_refused_naming_the_key_and_path(parse, text, expect):
    with pytest.raises(PipeplanError, match=expect):
        parse(text())


def test_duplicate_keys_in_hf_configs_and_nested_paths():
    from core.jsonio import load_json_text
    from profiler.hf import read_config

    with pytest.raises(PipeplanError, match=r'^HF config JSON: duplicate key "n_layer" at \$;'):
        read_config('{"model_type": "gpt2", "n_layer": 2, "n_layer": 200}')
    with pytest.raises(PipeplanError, match=r'duplicate key "b" at \$\.a\[1\]\["odd key"\];'):
        load_json_text('{"a": [0, {"odd key": {"b": 1, "b": 2}}]}', "x")
    # the same key in different objects is not a duplicate
    assert load_json_text('{"a": {"k": 1}, "b": {"k": 2}, "k": 3}', "x") == {"a": {"k": 1}, "b": {"k": 2}, "k": 3}
    with pytest.raises(PipeplanError, match="nested too deeply"):
        load_json_text('{"a": 1, "a": 2, "deep": ' + "[" * 100_000 + "]" * 100_000 + "}", "x")
