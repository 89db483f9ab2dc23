#!/usr/bin/env bash
# Distributed inference with torchrun, one process per GPU (gloo processes on CPUs); inputs are shared among
# the processes, largest file first, and rank 0 writes cohort.csv in --out.
#   bash tools/dist_infer.sh CONFIG CHECKPOINT GPUS INPUT [INPUT ...] --out DIR [tools/infer.py options...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT on every node (as for tools/dist_train.sh).
set -euo pipefail
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
  --nproc_per_node="$GPUS" --master_port="$PORT" "$(dirname "$0")/infer.py" "$CONFIG" "$CHECKPOINT" \
  --launcher pytorch "$@"
