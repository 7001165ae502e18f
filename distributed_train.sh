#!/bin/bash
# Usage: bash distributed_train.sh NUM_PROC DATA_ROOT [train.py flags...]
# Starts NUM_PROC processes on this machine with torchrun. Multi-node: run it on every node with
# NNODES, NODE_RANK, MASTER_ADDR (node 0's address) and MASTER_PORT set the same way on all of them.
# PYTHON picks the interpreter (default: python3).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: bash distributed_train.sh NUM_PROC DATA_ROOT [train.py flags...]" >&2
    exit 2
fi
NUM_PROC=$1
shift
exec "${PYTHON:-python3}" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}" \
    --nproc_per_node="$NUM_PROC" "$(dirname "$0")/train.py" "$@"
