"""Where the stage cuts are chosen.

solve (the entry point: solve()), search (the search over micro-batches, device orders and cuts for
one config), dp (the exact chain DP), ilp (the MILP for any DAG and several stages per device),
baselines (the partitions to beat), evaluate (a Plan from any assignment, scored by the cost model),
diagnose (why nothing fits, and what would). Imports flow solve -> diagnose -> search -> dp/ilp."""
