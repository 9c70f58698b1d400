"""`python -m midikit preprocess`: tokenize a MIDI/ABC source into a dataset under the checkpoint folder.

    python -m midikit preprocess --source corpus --dataset folk --checkpoint_dir ./midikit_data
    python -m midikit preprocess --source nottingham            # the seed's dataset, downloaded once
    python -m midikit preprocess --input_dir my_midis/ --dataset mine --tracks separate
"""

from __future__ import annotations

import argparse
import json
import re

from ..data.preprocess import PreprocessConfig, preprocess
from ..data.sources import SOURCES
from ..data.tokenization import TOKENIZERS, TRACK_MODES
from ..models import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = PreprocessConfig()
    # Let `--transpositions -5,-3,-1,0,1,3,5` (the seed's spelling) read as a value, not as a flag:
    # argparse only recognises plain negative numbers such as -5 by default.
    parser._negative_number_matcher = re.compile(r"^-\d[\d,\s-]*$")
    src = parser.add_argument_group("source (one of)")
    src.add_argument("--input_dir", help="folder of .mid/.midi/.abc files, searched recursively")
    src.add_argument("--source", choices=SOURCES, help="nottingham: download the seed's dataset (default without --input_dir); "
                     "corpus: music21's bundled folk tunes, offline; folder: --input_dir")
    parser.add_argument("--dataset", default=d.dataset, help="dataset name: the folder under the checkpoint root (default: %(default)s)")
    parser.add_argument("--checkpoint_dir", help="root folder (default: $MIDIKIT_ROOT, MyDrive/midikit_checkpoints in Colab, else ./midikit_data)")
    parser.add_argument("--val_split", type=float, default=d.val_split, help="share of source files held out for validation (default: %(default)s)")
    parser.add_argument("--transpositions", default=",".join(map(str, d.transpositions)),
                        help="semitone shifts applied to the training files (default: %(default)s)")
    parser.add_argument("--augment_validation", action="store_true", help="transpose the validation files too")
    parser.add_argument("--seq_length", type=int, default=d.seq_length, help="default context length recorded for training (default: %(default)s)")
    parser.add_argument("--limit", type=int, help="use only the first N files (quick runs)")
    parser.add_argument("--tokenizer", choices=TOKENIZERS, default=d.tokenizer, help="miditok tokenizer (default: %(default)s)")
    parser.add_argument("--tracks", choices=TRACK_MODES, default=d.tracks,
                        help="merged: one sequence per tune with Program tokens (melody and chords together); "
                        "separate: one sequence per track, as the seed (default: %(default)s)")
    parser.add_argument("--tokenizer_params", default="{}",
                        help='extra miditok TokenizerConfig options as JSON, e.g. \'{"use_time_signatures": true}\'')
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the train/validation split (default: %(default)s)")
    parser.add_argument("--workers", type=int, help="worker processes (default: all CPU cores)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        tokenizer_params = json.loads(args.tokenizer_params)
    except ValueError as exc:
        raise ConfigError(f"--tokenizer_params must be a JSON object, got {args.tokenizer_params!r} ({exc}).") from exc
    if not isinstance(tokenizer_params, dict):
        raise ConfigError(f"--tokenizer_params must be a JSON object such as '{{\"use_time_signatures\": true}}', got {args.tokenizer_params!r}.")
    config = PreprocessConfig(
        source=args.source,
        input_dir=args.input_dir,
        dataset=args.dataset,
        checkpoint_dir=args.checkpoint_dir,
        val_split=args.val_split,
        transpositions=args.transpositions,
        seq_length=args.seq_length,
        limit=args.limit,
        tokenizer=args.tokenizer,
        tracks=args.tracks,
        tokenizer_params=tokenizer_params,
        augment_validation=args.augment_validation,
        seed=args.seed,
        workers=args.workers,
    )
    preprocess(config, progress=not args.no_progress)
    return 0
