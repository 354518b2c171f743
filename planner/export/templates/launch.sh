#!/usr/bin/env bash
# Launch this job with torchrun: @PP@ pipeline ranks x @DP@ data-parallel replicas x @TP@ tensor-parallel ranks = @WORLD@ processes.
#
#   ./launch.sh                                   # one node, all @WORLD@ processes here
#   ./launch.sh --nnodes 2 --node-rank 0 --rdzv-endpoint host0:29500   # on host0
#   ./launch.sh --nnodes 2 --node-rank 1 --rdzv-endpoint host0:29500   # on host1
#   ./launch.sh -- --steps 100 --checkpoint-every 50                   # arguments after -- go to train.py
#
# Environment: NPROC_PER_NODE overrides the processes per node (default: all of them / nnodes).
set -euo pipefail
cd "$(dirname "$0")"

WORLD=@WORLD@
NNODES=1
NODE_RANK=0
RDZV_ENDPOINT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nnodes) NNODES="$2"; shift 2 ;;
    --node-rank) NODE_RANK="$2"; shift 2 ;;
    --rdzv-endpoint) RDZV_ENDPOINT="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "launch.sh: unknown argument $1 (train.py arguments go after --)" >&2; exit 2 ;;
  esac
done
if (( WORLD % NNODES != 0 )); then
  echo "launch.sh: $WORLD processes do not split evenly over $NNODES nodes" >&2; exit 2
fi
NPROC_PER_NODE="${NPROC_PER_NODE:-$(( WORLD / NNODES ))}"

if [[ "$NNODES" == 1 ]]; then
  exec torchrun --standalone --nproc-per-node "$NPROC_PER_NODE" train.py --dp @DP@@WEIGHTS_ARGS@ "$@"
fi
if [[ -z "$RDZV_ENDPOINT" ]]; then
  echo "launch.sh: multi-node runs need --rdzv-endpoint HOST:PORT (the same on every node)" >&2; exit 2
fi
exec torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC_PER_NODE" \
  --rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id pipeplan \
  train.py --dp @DP@@WEIGHTS_ARGS@ "$@"
