"""The planner's contracts: plain dataclasses with a JSON round trip and a schema version.

cluster (Cluster, Device, Link), config (TrainConfig), plan (Plan, StagePlan, SolverInfo, Diagnosis),
timeline (Timeline, Event). The Profile contract is the profiler's (profiler.profile)."""
