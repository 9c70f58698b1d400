"""Train LSTM, GRU and Transformer one after another, unattended (e.g. a Colab GPU left running).

Run it again after a disconnect and it continues where it stopped: a model whose run already
finished with these settings on this build of the dataset is skipped (its run.json says so), and an
unfinished one is resumed from its newest checkpoint (`resume="auto"`). --again starts new runs
regardless.

    python scripts/train_all.py --dataset nottingham --source nottingham   # preprocesses first if needed
    # a dry run on a laptop:
    python scripts/train_all.py --preset cpu --epochs 1 --max_steps 50 --dataset folk --source corpus
    python scripts/train_all.py --dataset nottingham --max_minutes 60   # each model an hour now; again: the next hour
    torchrun --nproc_per_node=4 scripts/train_all.py --dataset nottingham   # each model on 4 GPUs (docs/multi_gpu.md)

Under torchrun every process runs this script; rank 0 alone preprocesses (the others wait for the
dataset) and speaks.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from midikit import presets, runs, storage
from midikit.configs import MODEL_TYPES, PreprocessConfig, TrainConfig
from midikit.data import load_dataset, preprocess
from midikit.errors import ConfigError, DatasetError
from midikit.settings import add_flags, from_args
from midikit.train import train

SHARED_SETTINGS = ("checkpoint_dir", "dataset", "preset", "epochs", "max_steps", "max_minutes",
                   "checkpoint_every_minutes",
                   "checkpoint_every_steps", "keep_last", "device", "precision", "compile", "takeover", "progress")


def already_done(paths: storage.DatasetPaths, config: TrainConfig, fingerprint: str) -> str | None:
    """The run id of a finished run of this model with these settings on this build of the dataset, if any."""
    for record in runs.list_runs(paths, model_type=config.model_type, status="done"):
        settings = record.get("train_config") or {}
        same = (settings.get("preset") == config.preset and settings.get("epochs") == config.epochs
                and settings.get("max_steps") == config.max_steps)
        if same and (record.get("dataset") or {}).get("fingerprint") == fingerprint:
            return record.run_id
    return None


RANK = int(os.environ.get("RANK", "0"))  # torchrun's; 0 without it


def say(*args, **kwargs) -> None:
    if RANK == 0:  # under torchrun, rank 0 speaks for the run
        print(*args, **kwargs)


def _preprocess_once(paths: storage.DatasetPaths, args):
    """The first time only (later runs find the dataset); under torchrun by rank 0, while the others wait."""
    if RANK == 0:
        preprocess(PreprocessConfig(source=args.source, dataset=args.dataset, checkpoint_dir=str(paths.root)))
    deadline = time.monotonic() + 3600
    while True:
        try:
            return load_dataset(paths)
        except DatasetError:
            if time.monotonic() > deadline:
                raise
            time.sleep(5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # The settings every model shares come from TrainConfig's declarations (midikit.configs).
    add_flags(parser, TrainConfig, only=SHARED_SETTINGS)
    runner = parser.add_argument_group("train_all")
    runner.add_argument("--source", choices=("nottingham", "corpus"), default=None,
                        help="preprocess the dataset from this source first if it is missing (default: require it)")
    runner.add_argument("--models", default=",".join(MODEL_TYPES), help="comma-separated, trained in this order")
    runner.add_argument("--again", action="store_true", help="start new runs even where one already finished")
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
            dataset = _preprocess_once(paths, args)
    except (ConfigError, storage.StorageError) as exc:
        say(f"error: {exc}", file=sys.stderr)
        return 2
    preset = args.preset or presets.preset_for_hardware()

    failures, paused = [], []
    for model_type in args.models.split(","):
        config = from_args(TrainConfig, args, checkpoint_dir=str(paths.root), model_type=model_type, preset=preset,
                           resume="auto")
        done = None if args.again else already_done(paths, config, dataset.fingerprint)
        if done:
            say(f"== {model_type}: already trained ({done}); skipping (--again to train a new one).")
            continue
        say(f"== {model_type}: training (preset {preset}, {args.epochs} epochs)", flush=True)
        try:
            result = train(config)
        except (ConfigError, storage.StorageError) as exc:  # e.g. out of GPU memory: go on with the next model
            say(f"== {model_type}: FAILED: {exc}", file=sys.stderr)
            failures.append(model_type)
            continue
        if result.status == "interrupted":
            say("Interrupted; run this script again to continue.")
            return 130
        if result.status == "time_budget":  # --max_minutes is each model's budget in this call
            say(f"== {model_type}: paused at step {result.steps} (max_minutes); run this script again to continue it.")
            paused.append(model_type)
            continue
        say(f"== {model_type}: {result.status}, best validation loss {result.best_val_loss}; weights "
            f"{result.artifacts['weights']}")
    if failures:
        say(f"Failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    if paused:
        say(f"Paused by their time budget: {', '.join(paused)}; the same command continues them.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
