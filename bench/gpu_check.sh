#!/usr/bin/env bash
# The device check (bench/gpu_check.py): at most about 5 minutes on one H100/H200-class GPU.
# It needs torch with CUDA, numpy, matplotlib and tqdm (the device image has them); no miditok.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout "${GPU_CHECK_TIMEOUT:-330}" python3 bench/gpu_check.py "$@"
