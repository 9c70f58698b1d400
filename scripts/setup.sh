#!/usr/bin/env bash
# Install midikit (editable) and its test tools into one Python environment:
#   - the active one, if VIRTUAL_ENV or CONDA_PREFIX is set (a virtualenv or conda env);
#   - Colab's own Python, in Colab;
#   - otherwise ./.venv in the repository, made here with `python3 -m venv` (or $MIDIKIT_PYTHON).
# Nothing is ever installed into a system Python (Debian/Ubuntu forbid that: PEP 668).
#
# Usually called by scripts/run.sh, which then runs a command with that environment's python.
# A stamp of the requirement files' hash is kept in the environment: when it matches, nothing is
# installed again (that check takes some 20 ms). `--force` installs anyway; `--print-bin` prints, on stdout only,
# the folder to put first on PATH (empty: leave PATH alone).
#
# torch: if the environment can already import torch >= 2.3 (Colab's CUDA build, a conda build),
# it is left alone. Otherwise torch 2.13.0 is installed first, as a CPU build where one is
# available (on this project's machines pip finds one on local disk for Python 3.11; elsewhere
# PyTorch's CPU index is tried), so that pip never pulls a multi-GB CUDA build onto a machine
# without an NVIDIA GPU. Where only a CUDA build is to be had, setup stops and says what it would
# download; MIDIKIT_TORCH=cuda accepts that download.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TORCH_PIN="torch==2.13.0"
TORCH_MIN="2.3"                                   # the same bound as requirements.txt
CPU_INDEX="https://download.pytorch.org/whl/cpu"

print_bin=0 force=0
for arg in "$@"; do
  case "$arg" in
    --print-bin) print_bin=1 ;;
    --force) force=1 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (known: --force, --print-bin)" >&2; exit 2 ;;
  esac
done

say() { echo "midikit setup: $*" >&2; }
die() { echo "midikit setup: $*" >&2; exit 1; }

in_colab() {
  [ -d /content ] || return 1
  env | grep -q '^COLAB_' && return 0
  python3 -c 'import google.colab' >/dev/null 2>&1   # a probe: its failure only means "no"
}

# Which environment, and where its python, its PATH folder and its stamp are.
if [ -n "${VIRTUAL_ENV:-}" ]; then
  kind="the active virtualenv" prefix=$VIRTUAL_ENV
elif [ -n "${CONDA_PREFIX:-}" ]; then
  kind="the active conda environment" prefix=$CONDA_PREFIX
elif in_colab; then
  kind="Colab's Python" prefix=""
else
  kind="the repository's .venv" prefix="$repo/.venv"
fi
if [ -z "$prefix" ]; then                        # Colab: its own python3, PATH left alone
  py=$(command -v python3 || true) bin="" stamp="/tmp/.midikit-colab-setup.stamp"   # gone with the runtime
else
  bin="$prefix/bin" py="$prefix/bin/python" stamp="$prefix/.midikit-setup.stamp"
fi

# The stamp: what was installed, from which files, into which environment, for which checkout.
hash_of() {
  if command -v sha256sum >/dev/null; then sha256sum; elif command -v shasum >/dev/null; then shasum -a 256; else cksum; fi
}
want=$( { cat "$repo/requirements.txt" "$repo/requirements-dev.txt" "$repo/pyproject.toml" "$repo/scripts/setup.sh"
          echo "$repo|$prefix|${MIDIKIT_TORCH:-}"; } | hash_of | cut -d' ' -f1)

finish() { if [ "$print_bin" = 1 ]; then printf '%s\n' "$bin"; fi; exit 0; }
if [ "$force" = 0 ] && [ -x "$py" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  [ "$print_bin" = 1 ] || say "$kind (${prefix:-$py}) is up to date; nothing to install."
  finish
fi

# ---- From here on: a real install. Every message of pip's is shown, and a hint after a failure.
logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT

check_version() {   # $1: a python. midikit needs 3.10+.
  local v
  v=$("$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])') \
    || die "could not run $1 (the message above says why)."
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "midikit needs Python 3.10 or newer, and $1 is Python $v.
  Install a newer Python (your distribution's python3.11, pyenv, or python.org), then either
  activate an environment made with it, or point setup at it, e.g.:
      MIDIKIT_PYTHON=python3.11 bash scripts/run.sh python scripts/demo.py
  (a .venv made with the old Python is replaced then)."
}

debian_venv_hint() {   # $1: the base python
  local pkg
  pkg=$("$1" -c 'import sys; print("python3.%d-venv" % sys.version_info[1])' 2>&1) || pkg=python3-venv
  if [ -f /etc/debian_version ]; then
    echo "  On Debian/Ubuntu, Python's venv/ensurepip come in a separate package. Add it with:
      sudo apt install $pkg        (or: sudo apt install python3-venv)
  then run the same command again."
  else
    echo "  This Python lacks a working venv/ensurepip. Install your distribution's venv package
  for it (e.g. $pkg), or use a Python from python.org or pyenv, then run the same command again."
  fi
}

make_venv() {
  local base=${MIDIKIT_PYTHON:-python3}
  command -v "$base" >/dev/null || die "no '$base' on PATH. Install Python 3.10 or newer (e.g. sudo apt install python3 python3-venv), or set MIDIKIT_PYTHON to one."
  base=$(command -v "$base")
  check_version "$base"
  if [ -d "$prefix" ]; then say "replacing $prefix (it was unusable or made with another Python)"; rm -rf "$prefix"; fi
  say "making a virtual environment: $base -m venv $prefix"
  if ! "$base" -m venv "$prefix" >&2 || ! "$prefix/bin/python" -m pip --version >/dev/null; then
    rm -rf "$prefix"
    die "could not make a virtual environment with $base (see the message above).
$(debian_venv_hint "$base")"
  fi
  py="$prefix/bin/python" bin="$prefix/bin"
}

pip_hint() {   # $1: the log of a failed pip command
  local log=$1
  if grep -q "externally-managed-environment" "$log"; then
    echo "  This Python's packages belong to the system (PEP 668). Run with no environment active and
  setup makes ./.venv itself; or make and activate one: python3 -m venv .venv && . .venv/bin/activate"
  elif grep -qiE "No space left on device" "$log"; then
    echo "  The disk is full: free some space (pip's cache: $py -m pip cache purge), then run again."
  elif grep -qiE "Failed to establish a new connection|Temporary failure in name resolution|Name or service not known|Max retries exceeded|ConnectTimeout|ReadTimeout|ProxyError|SSLError|CERTIFICATE_VERIFY_FAILED" "$log"; then
    echo "  pip could not reach a package index: check the network, a proxy (HTTPS_PROXY) or pip's
  settings ($py -m pip config list), then run again."
  elif grep -qiE "Could not find a version that satisfies|No matching distribution found" "$log"; then
    echo "  No release of that package fits this Python ($("$py" -V 2>&1)) and platform in the indexes
  pip looked at ($py -m pip config list shows them). Python 3.11 or 3.12 is the safest choice."
  elif grep -qiE "Permission denied|Errno 13" "$log"; then
    echo "  $prefix is not writable by you: use an environment of your own (deactivate it and setup
  makes ./.venv), rather than sudo."
  fi
  echo "  After fixing it, run the same command again."
  [ "$prefix" != "$repo/.venv" ] || echo "  To start afresh: rm -rf .venv"
}

pip_run() {   # pip with all its output on stderr (stdout stays for --print-bin), and a hint if it fails
  local log="$logdir/pip.log"
  if "$py" -m pip "$@" 2>&1 | tee "$log" >&2; then return 0; fi
  echo "midikit setup: 'pip $*' failed in $kind (pip's message is above)." >&2
  pip_hint "$log" >&2
  exit 1
}

# Make or check the environment.
if [ -z "$prefix" ]; then
  [ -n "$py" ] || die "no python3 on PATH."
  check_version "$py"
elif [ "$prefix" = "$repo/.venv" ]; then
  if [ ! -x "$py" ] || ! "$py" -m pip --version >/dev/null 2>&1; then
    make_venv
  elif { [ -n "${MIDIKIT_PYTHON:-}" ] || [ ! -f "$stamp" ]; } \
       && [ "$("$py" -c 'import sys; print(sys.version_info[:2])')" \
            != "$("${MIDIKIT_PYTHON:-python3}" -c 'import sys; print(sys.version_info[:2])')" ]; then
    make_venv   # asked for another Python, or a .venv never finished with one that was
  fi
else
  [ -x "$py" ] || die "$kind at $prefix has no python ($py). Deactivate it (deactivate / conda deactivate) and run again to use ./.venv, or repair it."
  check_version "$py"
  "$py" -m pip --version >/dev/null 2>&1 || die "$kind at $prefix has no pip. Add it (python -m ensurepip, or conda install pip), then run again."
fi
say "installing into $kind: ${prefix:-$py} (python $("$py" -c 'import sys; print(sys.version.split()[0])'))"

# pip 22.2+ is needed for --dry-run/--report (Python 3.10.0's venv brings 21.2): update it in our own .venv.
pip_new_enough() { "$py" -c 'import pip, sys; sys.exit(tuple(map(int, pip.__version__.split(".")[:2])) < (22, 2))'; }
if ! pip_new_enough && [ "$prefix" = "$repo/.venv" ]; then
  say "updating pip in .venv (needed to check which torch build pip would take)"
  pip_run install -q --disable-pip-version-check "pip>=23"
fi

# ---- torch
torch_version() {   # empty if torch is not installed; a broken torch shows its error
  "$py" -c "
try:
    import torch
except ModuleNotFoundError as e:
    if e.name != 'torch':
        raise
else:
    print(torch.__version__)"
}
torch_version=$(torch_version) || die "torch is installed in $kind but does not import (the message above says why).
  Repair it ($py -m pip install --force-reinstall $TORCH_PIN) or remove it ($py -m pip uninstall torch), then run again."
torch_ok() { "$py" -c "import re, sys; v = [int(x) for x in re.findall(r'\d+', '$1'.split('+')[0])[:2]]; sys.exit(v < [int(x) for x in '$TORCH_MIN'.split('.')])"; }

plan() {   # pip's plan for installing torch, downloading no wheel: prints "cuda" or "cpu", then what it would fetch
  local report="$logdir/plan.json"
  rm -f "$report"
  "$py" -m pip install --dry-run -q --disable-pip-version-check --report "$report" "$@" "$TORCH_PIN" \
    2>&1 | tee "$logdir/plan.err" >&2 || return 2
  "$py" - "$report" <<'EOF'
import json, sys
items = json.load(open(sys.argv[1]))["install"]
names = [i["metadata"]["name"].lower() for i in items]
cuda = any(n.startswith(("nvidia-", "cuda-")) for n in names)
remote = [i for i in items if not i["download_info"]["url"].startswith("file:")]
print("cuda" if cuda else "cpu")
print("%d packages, %d of them from remote indexes: %s" % (len(items), len(remote),
      ", ".join("%s %s" % (i["metadata"]["name"], i["metadata"]["version"]) for i in items)))
EOF
}

has_nvidia_gpu() { command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }

install_torch() {
  if ! pip_new_enough; then   # an active environment with an old pip: no plan to check
    say "pip in $kind is older than 22.2, so setup cannot check which torch build it would take;
  installing $TORCH_PIN (if this starts a multi-GB CUDA download on a CPU machine, stop it with Ctrl-C
  and run: $py -m pip install $TORCH_PIN --index-url $CPU_INDEX)"
    pip_run install -q --disable-pip-version-check "$TORCH_PIN"
    return
  fi
  local p first
  say "checking which build of $TORCH_PIN pip would take (nothing is downloaded yet)"
  p=$(plan) || { echo "midikit setup: pip cannot install $TORCH_PIN here (pip's message is above)." >&2; pip_hint "$logdir/plan.err" >&2; exit 1; }
  first=$p
  if [ "${p%%$'\n'*}" = cpu ]; then
    say "installing $TORCH_PIN, a CPU build (${p#*$'\n'})"
    pip_run install -q --disable-pip-version-check "$TORCH_PIN"
    return
  fi
  if has_nvidia_gpu || [ "${MIDIKIT_TORCH:-}" = cuda ]; then
    say "installing $TORCH_PIN with CUDA, several GB (${p#*$'\n'})"
    pip_run install -q --disable-pip-version-check "$TORCH_PIN"
    return
  fi
  say "only a CUDA build of torch is on offer in pip's indexes; trying PyTorch's CPU index ($CPU_INDEX)"
  if p=$(plan --index-url "$CPU_INDEX" --retries 1 --timeout 30) && [ "${p%%$'\n'*}" = cpu ]; then
    say "installing $TORCH_PIN, a CPU build from PyTorch's CPU index (${p#*$'\n'})"
    pip_run install -q --disable-pip-version-check --index-url "$CPU_INDEX" "$TORCH_PIN"
    return
  fi
  die "no CPU build of $TORCH_PIN for this Python ($("$py" -V 2>&1)) could be found, and this machine
  has no NVIDIA GPU. Installing it from pip's indexes would download a CUDA build of several GB:
      ${first#*$'\n'}
  Choose one, then run the same command again:
    - a Python for which a CPU build is at hand (on this project's machines: 3.11), e.g.
        MIDIKIT_PYTHON=python3.11 bash scripts/run.sh ...
    - where PyTorch's CPU index can be reached, torch from there first:
        $py -m pip install $TORCH_PIN --index-url $CPU_INDEX
    - or accept the CUDA download: MIDIKIT_TORCH=cuda bash scripts/run.sh ..."
}

if [ -n "$torch_version" ] && torch_ok "$torch_version"; then
  say "torch $torch_version is already installed in $kind: left as it is"
else
  [ -z "$torch_version" ] || say "torch $torch_version is older than midikit needs ($TORCH_MIN): installing $TORCH_PIN"
  install_torch
  torch_version=$("$py" -c 'import importlib.metadata as m; print(m.version("torch"))')
fi

# ---- the rest, with torch held at the version now installed (pip must never swap it)
echo "torch==$torch_version" >"$logdir/keep-torch.txt"
say "installing requirements-dev.txt and midikit (editable)"
pip_run install -q --disable-pip-version-check -c "$logdir/keep-torch.txt" -r "$repo/requirements-dev.txt"
pip_run install -q --disable-pip-version-check --no-deps -e "$repo"

"$py" -c 'import torch, midikit' || die "midikit does not import after the install (the message above says why)."
echo "$want" >"$stamp"
if [ "$print_bin" = 1 ]; then
  say "ready."
else
  say "ready. Run commands in it with: bash scripts/run.sh python scripts/demo.py"
fi
finish
