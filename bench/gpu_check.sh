#!/usr/bin/env bash
# The one check for a GPU machine (bench/gpu_check.py; docs/gpu_check.md says what each line means).
# Parts, most important first: preflight (always), the CLI path with SIGKILL/resume and a CPU-started
# run resumed on the GPU, training throughput of the three large models against the original
# project's loop, generation, the checkpoint stall. --budget_s (default 300) drops them from the end;
# each has its own time limit. Every line lands in bench/results/gpu_check_<date>.md (and $OUT) the
# moment a part prints it, so a kill from outside keeps what was done.
# Needs torch with CUDA, numpy, matplotlib and tqdm (the device image has them); no miditok.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 bench/gpu_check.py "$@"
