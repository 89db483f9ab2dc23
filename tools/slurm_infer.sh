#!/usr/bin/env bash
# Inference on a Slurm cluster, one task per GPU; inputs are shared among the tasks, largest file first.
#   GPUS=16 bash tools/slurm_infer.sh PARTITION JOB_NAME CONFIG CHECKPOINT INPUT [INPUT ...] --out DIR [options...]
# Environment: GPUS (total, default 8), GPUS_PER_NODE (8), CPUS_PER_TASK (5), SRUN_ARGS (extra srun flags).
# A task that fails on one input records the error and goes on; the job fails if any input failed.
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
CHECKPOINT=$4
shift 4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-}
PYTHON=${PYTHON:-python}
# shellcheck disable=SC2086
exec srun -p "$PARTITION" --job-name="$JOB_NAME" --gres=gpu:"$GPUS_PER_NODE" --ntasks="$GPUS" \
  --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 $SRUN_ARGS \
  "$PYTHON" -u "$(dirname "$0")/infer.py" "$CONFIG" "$CHECKPOINT" --launcher slurm "$@"
