#!/usr/bin/env bash
# Train LSTM, GRU and Transformer one after another, unattended, with the large preset
# (A100/H100-class GPU). Run it again after a disconnect: unfinished runs resume, finished ones
# are skipped (that is scripts/train_all.py's doing). Arguments are passed on, e.g.
#     bash scripts/train_colab_a100.sh --dataset nottingham --source nottingham
# In Colab, checkpoints go to Google Drive (/content/drive/MyDrive/midikit_checkpoints), which must
# be mounted first. Elsewhere they go to $MIDIKIT_ROOT, else ./midikit_data (or --checkpoint_dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

in_colab() {
  [ -d /content ] && { env | grep -q '^COLAB_' || python3 -c 'import google.colab' >/dev/null 2>&1; }
}

if in_colab; then
  drive=/content/drive/MyDrive
  if [ ! -d "$drive" ]; then
    echo "Google Drive is not mounted at $drive, and the checkpoints must go there to survive the
end of this Colab session. Mount it from a Python cell (not a ! shell line):

    from google.colab import drive; drive.mount('/content/drive')

then run this script again." >&2
    exit 1
  fi
  exec bash scripts/run.sh python3 scripts/train_all.py --preset large --checkpoint_dir "$drive/midikit_checkpoints" "$@"
fi

echo "Not in Colab: checkpoints go to ${MIDIKIT_ROOT:-./midikit_data} (choose with MIDIKIT_ROOT=DIR or --checkpoint_dir DIR)." >&2
exec bash scripts/run.sh python3 scripts/train_all.py --preset large "$@"
