"""`python -m midikit preprocess`: tokenize a MIDI/ABC source into a dataset under the checkpoint folder.

    python -m midikit preprocess --source corpus --dataset folk --checkpoint_dir ./midikit_data
    python -m midikit preprocess --source nottingham            # the original project's dataset, downloaded once
    python -m midikit preprocess --input_dir my_midis/ --dataset mine --tracks separate
"""

from __future__ import annotations

import argparse

from ..configs import PreprocessConfig
from ..settings import add_flags, from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    groups = add_flags(parser, PreprocessConfig)
    groups["dataset"].add_argument("--no_progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..data.preprocess import preprocess

    preprocess(from_args(PreprocessConfig, args), progress=not args.no_progress)
    return 0
