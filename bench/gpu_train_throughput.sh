#!/usr/bin/env bash
# One short command on a machine with a CUDA GPU: bash bench/gpu_train_throughput.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" bench/gpu_train_throughput.py "$@"
