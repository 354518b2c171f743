"""pipeplan planner: clusters, training configs, the memory and cost model,
the stage-cut solvers, the schedule simulator and the exporter."""
