#!/usr/bin/env bash
# Install midikit and its test tools on a fresh machine (not needed in Colab, where the
# notebooks install what Colab lacks). torch is pinned to the CPU build first, so that the
# loose `torch>=` requirement is already satisfied and pip never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>/dev/null \
  || python3 -c "import torch"

python3 -m pip install -q --disable-pip-version-check -r requirements-dev.txt
python3 -m pip install -q --disable-pip-version-check --no-deps -e .
