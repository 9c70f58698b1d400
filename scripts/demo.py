"""The whole kit in one go, on whatever machine this is: preprocess the offline folk-tune corpus,
train an LSTM, a GRU and a Transformer briefly, and generate a MIDI file from each.

    python3 scripts/demo.py [--checkpoint_dir DIR] [--max_steps 200]

On a CPU this takes a few minutes; everything lands under the checkpoint folder
(default ./midikit_data/folk_demo/). Run it again and preprocessing is a cache hit, while
training starts fresh runs (finished runs are never resumed).
"""

from __future__ import annotations

import argparse

from midikit import presets
from midikit.data import PreprocessConfig, load_dataset, preprocess
from midikit.evaluate import midi_metrics
from midikit.generate import SampleConfig, generate, load_run
from midikit.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint_dir", default=None, help="root folder (default: $MIDIKIT_ROOT or ./midikit_data)")
    parser.add_argument("--dataset", default="folk_demo")
    parser.add_argument("--limit", type=int, default=300, help="corpus files to use")
    parser.add_argument("--max_steps", type=int, default=200, help="training steps per model")
    args = parser.parse_args()

    prepared = preprocess(PreprocessConfig(source="corpus", dataset=args.dataset, checkpoint_dir=args.checkpoint_dir, limit=args.limit))
    dataset = load_dataset(prepared.paths)
    preset = presets.preset_for_hardware()
    print(f"preset: {preset} | vocabulary: {dataset.vocab_size} tokens")

    for model_type in ("lstm", "gru", "transformer"):
        result = train(
            TrainConfig(
                dataset=args.dataset, checkpoint_dir=args.checkpoint_dir, model_type=model_type, preset=preset,
                max_steps=args.max_steps, resume="never", checkpoint_every_steps=max(args.max_steps // 2, 1),
                eval_every=max(args.max_steps // 4, 1),  # a few validation points on the loss plot
            )
        )
        best = "n/a" if result.best_val_loss is None else f"{result.best_val_loss:.3f}"
        print(f"{result.run_id}: {result.status} after {result.steps} steps, best validation loss {best}")
        run = load_run(result.artifacts["weights"], prepared.paths)
        sample = generate(run, SampleConfig(strategy="top_p", p=0.9, num_tokens=256, seed=0), progress=False)
        for path in sample.midi_paths:
            metrics = midi_metrics(path)
            print(f"  generated {path} ({metrics['num_notes']} notes, {metrics['duration']:.1f} s)")


if __name__ == "__main__":
    main()
