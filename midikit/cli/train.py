"""`python -m midikit train`: the seed's flags plus resume, precision, compile and checkpoint
settings. Builds a TrainConfig (and model overrides from the size flags given) and calls train()."""

from __future__ import annotations

import argparse

from ..models import MODEL_TYPES
from ..presets import PRESET_NAMES

# Size flags that override the preset's model config when given.
MODEL_FLAGS = {
    "embed_size": int, "hidden_size": int, "num_layers": int, "dropout": float,
    "d_model": int, "nhead": int, "dim_feedforward": int, "context_length": int,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..train import COMPILE_MODES, PRECISIONS, TrainConfig

    defaults = TrainConfig()
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=defaults.dataset, help="preprocessed dataset name (default: %(default)s)")
    data.add_argument("--checkpoint_dir", default=None, help="root folder (default: $MIDIKIT_ROOT, MyDrive/midikit_checkpoints in Colab, else ./midikit_data)")
    data.add_argument("--val_split", type=float, default=None,
                      help="only checked: the split is made by `midikit preprocess`; a different value says what to re-run")
    data.add_argument("--subsample_ratio", type=float, default=defaults.subsample_ratio, help="share of the training tokens per epoch")

    model = parser.add_argument_group("model (default sizes: the preset's)")
    model.add_argument("--model_type", choices=MODEL_TYPES, default=defaults.model_type)
    model.add_argument("--preset", choices=PRESET_NAMES, default=None, help="default: chosen for this hardware")
    for name, kind in MODEL_FLAGS.items():
        model.add_argument(f"--{name}", type=kind, default=None)

    loop = parser.add_argument_group("training")
    loop.add_argument("--epochs", type=int, default=defaults.epochs)
    loop.add_argument("--batch_size", type=int, default=None, help="default: the preset's")
    loop.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the preset's)")
    loop.add_argument("--weight_decay", type=float, default=defaults.weight_decay)
    loop.add_argument("--warmup_steps", type=int, default=None, help="default: 5%% of the run, at most 200")
    loop.add_argument("--max_steps", type=int, default=None, help="stop after this many optimizer steps")
    loop.add_argument("--max_batches", type=int, default=None, help="cap on steps per epoch")
    loop.add_argument("--patience", type=int, default=defaults.patience, help="evaluations without improvement before stopping (0: never)")
    loop.add_argument("--eval_every", type=int, default=None, help="steps between evaluations (default: once per epoch)")
    loop.add_argument("--grad_clip", type=float, default=defaults.grad_clip)
    loop.add_argument("--seed", type=int, default=defaults.seed)
    loop.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    loop.add_argument("--precision", choices=PRECISIONS, default=defaults.precision)
    loop.add_argument("--compile", choices=COMPILE_MODES, default=defaults.compile)
    loop.add_argument("--no_progress", action="store_true", help="no progress bar (logs only)")

    saving = parser.add_argument_group("checkpoints")
    saving.add_argument("--checkpoint_every_minutes", type=float, default=defaults.checkpoint_every_minutes, help="0: off")
    saving.add_argument("--checkpoint_every_steps", type=int, default=defaults.checkpoint_every_steps, help="0: off")
    saving.add_argument("--keep_last", type=int, default=defaults.keep_last)
    saving.add_argument("--resume", default=defaults.resume,
                        help="auto: continue the newest unfinished run of this model type; never; or a checkpoint file / run folder")


def run(args: argparse.Namespace) -> int:
    from ..train import TrainConfig, train

    config = TrainConfig(
        dataset=args.dataset, checkpoint_dir=args.checkpoint_dir, model_type=args.model_type, preset=args.preset,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, max_steps=args.max_steps, max_batches=args.max_batches,
        subsample_ratio=args.subsample_ratio, val_split=args.val_split, patience=args.patience,
        eval_every=args.eval_every, seed=args.seed, device=args.device, precision=args.precision,
        compile=args.compile, checkpoint_every_minutes=args.checkpoint_every_minutes,
        checkpoint_every_steps=args.checkpoint_every_steps, keep_last=args.keep_last, resume=args.resume,
        grad_clip=args.grad_clip, progress=not args.no_progress,
    )
    overrides = {name: getattr(args, name) for name in MODEL_FLAGS if getattr(args, name) is not None}
    result = train(config, model_overrides=overrides)
    for name, path in result.artifacts.items():
        print(f"  {name:<13} {path}")
    if result.status == "interrupted":
        print("Interrupted; the same command continues this run (--resume auto).")
        return 130
    return 0
