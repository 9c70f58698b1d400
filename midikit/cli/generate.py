"""`python -m midikit generate`: sample MIDI files from a trained run (the original project's flags work too).

The original project's generate.py flags that are not a single midikit field are declared here, beside what
they mean: --data_dir names a dataset folder, --seq_length is checked against the run, and the
original project's opening-selection flags say what to use instead."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..configs import GenerateConfig, SampleConfig
from ..errors import ConfigError
from ..settings import add_flags, from_args

SEED_OPENING_FLAGS = ("seed_file", "seed_length", "seed_style")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, GenerateConfig)
    add_flags(parser, SampleConfig)
    seed = parser.add_argument_group("the original project's generate.py flags")
    seed.add_argument("--data_dir", help="the original project's preprocessed data folder: <root>/<dataset> or its "
                      "data/ subfolder (midikit's spelling: --checkpoint_dir ROOT --dataset NAME)")
    seed.add_argument("--seq_length", type=int, help="checked against the run's context length "
                      "(the original project: must match training)")
    for name in SEED_OPENING_FLAGS:
        seed.add_argument(f"--{name}", help="the original project's choice of an opening from its data: "
                          "use --seed_midi PATH instead")


def run(args: argparse.Namespace) -> int:
    used = [f"--{name}" for name in SEED_OPENING_FLAGS if getattr(args, name) is not None]
    if used:
        raise ConfigError(f"{', '.join(used)}: the original project's opening selection is not part of midikit; "
                          "pass --seed_midi PATH (any MIDI file to continue), or nothing to start from scratch.")
    sample = from_args(SampleConfig, args).validate()  # before loading anything, so a bad flag fails fast
    where = from_args(GenerateConfig, args, **_dataset_from_data_dir(args)).validate()

    from ..generate import generate, load_run
    from ..metrics import midi_metrics
    from ..storage import DatasetPaths, resolve_root

    paths = DatasetPaths(resolve_root(where.checkpoint_dir, create=False), where.dataset)
    loaded = load_run(where.run, paths, model_type=where.model_type, device=where.device)
    _check_seed_expectations(args, where, loaded.model_config)
    print(f"run {loaded.run_id} ({loaded.model_config.model_type}) on {loaded.device}")
    seed_midi = Path(where.seed_midi) if where.seed_midi else None
    result = generate(loaded, sample, seed_midi=seed_midi, seed_bars=where.seed_bars)
    for path, score, invalid, new in zip(result.midi_paths, result.scores, result.invalid_token_share,
                                         result.new_tokens):
        metrics = midi_metrics(score)
        print(f"{path}: {new} new tokens, {metrics['num_notes']} notes, {metrics['duration']:.1f} s, "
              f"{invalid:.1%} invalid tokens")
    print(f"{sum(result.new_tokens)} tokens in {result.seconds:.1f} s ({result.tokens_per_second:.0f} tokens/s), "
          f"seed {result.seed}")
    return 0


def _dataset_from_data_dir(args) -> dict:
    """--data_dir DIR (the original project's) as checkpoint_dir + dataset: DIR is <root>/<dataset> or
    <root>/<dataset>/data."""
    if args.data_dir is None:
        return {}
    folder = Path(args.data_dir).expanduser().absolute()
    base = folder.parent if folder.name == "data" else folder
    if not (base / "data" / "config.json").is_file():
        raise ConfigError(f"--data_dir {args.data_dir} is not a midikit dataset folder (no data/config.json in "
                          f"{base}); pass the folder `midikit preprocess` made (<root>/<dataset>), or "
                          "--checkpoint_dir ROOT --dataset NAME.")
    for name, value in (("dataset", base.name), ("checkpoint_dir", str(base.parent))):
        asked = getattr(args, name)
        if asked not in (None, getattr(GenerateConfig(), name)) and Path(asked).expanduser().absolute() != Path(value):
            raise ConfigError(f"--data_dir {args.data_dir} means --{name} {value}, but --{name} {asked} was given "
                              "too; pass one of them.")
    return {"dataset": base.name, "checkpoint_dir": str(base.parent)}


def _check_seed_expectations(args, where: GenerateConfig, model_config) -> None:
    """The original project's --seq_length ("must match training") and --model_type with a path are checks, not
    settings."""
    if args.seq_length is not None and args.seq_length != model_config.context_length:
        raise ConfigError(f"--seq_length {args.seq_length} does not match the run's context length "
                          f"{model_config.context_length} "
                          "(midikit reads it from the run: drop --seq_length).")
    if where.model_type is not None and model_config.model_type != where.model_type:
        raise ConfigError(f"{where.run} is a {model_config.model_type} run, not a {where.model_type}; "
                          f"drop --model_type or pass --model_type {model_config.model_type}.")
