"""Train LSTM, GRU and Transformer one after another, unattended (e.g. a Colab GPU left running).

Run it again after a disconnect and it continues where it stopped: a model whose run already
finished with these settings on this build of the dataset is skipped (its row in logs/models.csv
and its sidecar say so), and an unfinished one is resumed from its newest checkpoint
(`resume="auto"`). --again starts new runs regardless.

    python scripts/train_all.py --dataset nottingham --source nottingham   # preprocesses first if needed
    python scripts/train_all.py --preset cpu --epochs 1 --max_steps 50 --dataset folk --source corpus   # a dry run on a laptop
"""

from __future__ import annotations

import argparse
import json
import sys

from midikit import presets, storage
from midikit.artifacts import read_models_csv
from midikit.data import DatasetError, PreprocessConfig, load_dataset, preprocess
from midikit.models import MODEL_TYPES, ConfigError
from midikit.train import TrainConfig, train


def already_done(paths: storage.DatasetPaths, config: TrainConfig, fingerprint: str) -> str | None:
    """The run id of a finished run of this model with these settings on this dataset build, if any."""
    for row in reversed(read_models_csv(paths)):
        same = (
            row["model_type"] == config.model_type
            and row["preset"] == config.preset
            and row["epochs"] == str(config.epochs)
            and row["max_steps"] == ("" if config.max_steps is None else str(config.max_steps))
        )
        if same and row["status"] in ("finished", "early_stopped", "max_steps") and _trained_on(paths, row["run_id"]) == fingerprint:
            return row["run_id"]
    return None


def _trained_on(paths: storage.DatasetPaths, run_id: str) -> str | None:
    """The dataset fingerprint in a run's sidecar (None if unreadable): a re-preprocessed dataset retrains."""
    try:
        return json.loads(paths.weights_sidecar(run_id).read_text())["dataset"]["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError, storage.StorageError):
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint_dir", default=None, help="root folder (default: $MIDIKIT_ROOT, else Drive in Colab, else ./midikit_data)")
    parser.add_argument("--dataset", default="nottingham")
    parser.add_argument("--source", choices=("nottingham", "corpus"), default=None,
                        help="preprocess the dataset from this source first if it is missing (default: require it)")
    parser.add_argument("--models", default=",".join(MODEL_TYPES), help="comma-separated, trained in this order")
    parser.add_argument("--preset", default=None, help="large (A100/H100-class GPU), t4, small or cpu (default: chosen by hardware)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--max_steps", type=int, default=None)
    parser.add_argument("--checkpoint_every_minutes", type=float, default=10.0)
    parser.add_argument("--again", action="store_true", help="start new runs even where one already finished")
    args = parser.parse_args(argv)

    try:
        storage.mount_drive()  # in Colab; nothing elsewhere
        paths = storage.DatasetPaths(storage.resolve_root(args.checkpoint_dir), args.dataset)
        try:
            dataset = load_dataset(paths)
        except DatasetError:
            if args.source is None:
                raise
            # The first time only (later runs find the dataset and reuse it).
            preprocess(PreprocessConfig(source=args.source, dataset=args.dataset, checkpoint_dir=str(paths.root)))
            dataset = load_dataset(paths)
    except (ConfigError, storage.StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    preset = args.preset or presets.preset_for_hardware()

    failures = []
    for model_type in args.models.split(","):
        config = TrainConfig(
            dataset=args.dataset, checkpoint_dir=str(paths.root), model_type=model_type, preset=preset,
            epochs=args.epochs, max_steps=args.max_steps, checkpoint_every_minutes=args.checkpoint_every_minutes,
            resume="auto",
        )
        done = None if args.again else already_done(paths, config, dataset.fingerprint)
        if done:
            print(f"== {model_type}: already trained ({done}); skipping (--again to train a new one).")
            continue
        print(f"== {model_type}: training (preset {preset}, {args.epochs} epochs)", flush=True)
        try:
            result = train(config)
        except (ConfigError, storage.StorageError) as exc:  # e.g. out of GPU memory: go on with the next model
            print(f"== {model_type}: FAILED: {exc}", file=sys.stderr)
            failures.append(model_type)
            continue
        if result.status == "interrupted":
            print("Interrupted; run this script again to continue.")
            return 130
        print(f"== {model_type}: {result.status}, best validation loss {result.best_val_loss}; weights {result.artifacts['weights']}")
    if failures:
        print(f"Failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
