"""The cost model: the one place each time and memory formula lives.

cost: per-node tables of a profile, a stage's time terms (StageTimeCoefficients), link transfers,
the optimizer step and clipping, the closed-form step. memory: bytes per parameter, a stage's memory
(and its linear coefficients), the reserve held once per device. microbatches: the micro-batch counts
a schedule accepts and the profile at another micro-batch size. The solvers, the simulator, the export
and the app read these functions; docs/cost-model.md writes every formula down with its source."""
