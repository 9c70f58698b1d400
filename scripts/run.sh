#!/usr/bin/env bash
# Run a command with midikit's Python environment, after making or updating it if needed:
#
#     bash scripts/run.sh python scripts/demo.py
#     bash scripts/run.sh python -m pytest -q --nbval-lax tests notebooks
#
# The environment is the active virtualenv/conda env if there is one, Colab's Python in Colab,
# else ./.venv (made on first use). scripts/setup.sh installs into it only when the requirement
# files changed since the last install; otherwise this adds a few milliseconds. The command runs
# with that environment's bin folder first on PATH, so `python`, `python3` and `pytest` are its own.
set -euo pipefail
if [ $# -eq 0 ]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
bin=$(bash "$(dirname "${BASH_SOURCE[0]}")/setup.sh" --print-bin)
if [ -n "$bin" ]; then
  export PATH="$bin:$PATH"
  if [ -f "$bin/../pyvenv.cfg" ]; then
    VIRTUAL_ENV=$(cd "$bin/.." && pwd)
    export VIRTUAL_ENV
    unset PYTHONHOME
  fi
fi
exec "$@"
