"""The whole kit in one go, on whatever machine this is: preprocess the offline folk-tune corpus,
train an LSTM, a GRU and a Transformer briefly, and generate a MIDI file from each; last, a whole tune
from the starter model shipped with midikit (trained longer, on the whole corpus).

    bash scripts/run.sh python scripts/demo.py [--checkpoint_dir DIR] [--max_steps 200]

On a 2-core CPU this took about 1 min 50 s (2 min 45 s with the first install by scripts/run.sh; 12 min
while two benchmarks shared the cores); everything lands under the checkpoint folder (default
./midikit_data/folk_demo/). It ends with where everything is and the commands to try next. Run it again and
preprocessing is a cache hit, while training starts fresh runs (finished runs are never resumed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from midikit import presets, storage
from midikit.data import PreprocessConfig, load_dataset, preprocess
from midikit.generate import SampleConfig, generate, load_run
from midikit.metrics import midi_metrics
from midikit.starter import DATASET as STARTER_DATASET
from midikit.starter import load_starter
from midikit.train import TrainConfig, train

MODEL_TYPES = ("lstm", "gru", "transformer")
# Measured with the defaults on a 2-core Debian 12 machine (README, "Set up"); the busy figure with two
# benchmarks running on the same two cores.
MEASURED = ("about 1 min 50 s on a 2-core CPU (2 min 45 s when scripts/run.sh installs first); other jobs on the "
            "same cores slow it down (12 min beside two benchmarks)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint_dir", default=None, help="root folder (default: $MIDIKIT_ROOT or ./midikit_data)")
    parser.add_argument("--dataset", default="folk_demo")
    parser.add_argument("--limit", type=int, default=300, help="corpus files to use")
    parser.add_argument("--max_steps", type=int, default=200, help="training steps per model")
    args = parser.parse_args()

    started = time.monotonic()
    root = storage.resolve_root(args.checkpoint_dir)
    preset = presets.preset_for_hardware()
    print(f"midikit demo: preprocess {args.limit} tunes of music21's folk corpus (offline), train an LSTM, a GRU and a "
          f"Transformer for {args.max_steps} steps each (preset {preset}), then generate a MIDI file from each.\n"
          f"With the defaults this takes {MEASURED}. Everything goes to {root / args.dataset}.\n", flush=True)

    prepared = preprocess(PreprocessConfig(source="corpus", dataset=args.dataset, checkpoint_dir=str(root),
                                           limit=args.limit))
    dataset = load_dataset(prepared.paths)
    print(f"preset: {preset} | vocabulary: {dataset.vocab_size} tokens")

    runs, midi = {}, []
    for model_type in MODEL_TYPES:
        result = train(
            TrainConfig(
                dataset=args.dataset, checkpoint_dir=str(root), model_type=model_type, preset=preset,
                max_steps=args.max_steps, resume="never", checkpoint_every_steps=max(args.max_steps // 2, 1),
                eval_every=max(args.max_steps // 4, 1),  # a few validation points on the loss plot
            )
        )
        best = "n/a" if result.best_val_loss is None else f"{result.best_val_loss:.3f}"
        print(f"{result.run_id}: {result.status} after {result.steps} steps, best validation loss {best}")
        runs[model_type] = result
        run = load_run(result.artifacts["weights"], prepared.paths)
        sample = generate(run, SampleConfig(num_tokens=256, seed=0), progress=False)  # brief runs: a short piece
        for path in sample.midi_paths:
            metrics = midi_metrics(path)
            print(f"  generated {path} ({metrics['num_notes']} notes, {metrics['duration']:.1f} s)")
            midi.append(path)

    starter = load_starter(paths=storage.DatasetPaths(root, STARTER_DATASET), log=lambda *_: None)
    # The generation defaults: until the model ends the tune. Seed 1: seed 0 alone happens to be one of its pieces
    # (about 1 in 16) that run to the 2,048-token cap; the line below says which it was either way.
    tune = generate(starter, SampleConfig(seed=1), progress=False)
    metrics = midi_metrics(tune.midi_paths[0])
    ended = "ended by the model" if tune.ended[0] else "cut at the cap"
    print(f"starter model: {tune.midi_paths[0]} ({metrics['num_notes']} notes, {metrics['duration']:.1f} s, {ended})")
    midi.append(tune.midi_paths[0])

    paths = prepared.paths
    print(f"\nDone in {time.monotonic() - started:.0f} s. Where everything is, under {paths.base}:")
    for what, where in [
        ("tokens and tokenizer", paths.data),
        ("best weights + sidecars", paths.models),
        ("training states", paths.checkpoints),
        ("loss curves", paths.plots),
        ("generated MIDI", paths.generated),
        ("runs table", paths.models_csv),
        ("the starter model's tune", tune.midi_paths[0].parent),
    ]:
        print(f"  {what:<24} {where}")
    folder = "" if args.checkpoint_dir is None else f" --checkpoint_dir {Path(root)}"
    print("\nNext, try (each command explains itself with --help):")
    print(f"  bash scripts/run.sh python -m midikit generate --dataset {args.dataset}{folder} --model_type transformer "
          f"--num_samples 4")
    print(f"  bash scripts/run.sh python -m midikit train --dataset {args.dataset}{folder} --model_type transformer "
          f"--preset cpu --max_steps 1000 --resume never")
    print(f"  bash scripts/run.sh python -m midikit evaluate --dataset {args.dataset}{folder}")
    print("  the notebooks, in order: notebooks/01_setup.ipynb ... 07_generate.ipynb (jupyter lab, or "
          "Colab from the README)")


if __name__ == "__main__":
    main()
