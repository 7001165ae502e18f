#!/bin/bash
# Usage: bash distributed_train.sh NUM_PROC DATA_ROOT [train.py flags...]
# Starts NUM_PROC processes on this machine with torchrun. Multi-node: run it on every node with
# NNODES, NODE_RANK, MASTER_ADDR (node 0's address) and MASTER_PORT set the same way on all of them.
# PYTHON picks the interpreter (default: the repository's .venv/bin/python that `make` creates, else python3).
# MAX_RESTARTS (default 0): how often torchrun restarts all processes after one fails; pair it with
# `--resume auto --experiment NAME` so that a restarted run continues from its last checkpoint.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: bash distributed_train.sh NUM_PROC DATA_ROOT [train.py flags...]" >&2
    exit 2
fi
NUM_PROC=$1
shift
REPO=$(cd "$(dirname "$0")" && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
exec "$PYTHON" -m torch.distributed.run --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}" \
    --max-restarts="${MAX_RESTARTS:-0}" --nproc_per_node="$NUM_PROC" "$REPO/train.py" "$@"
