"""`python -m midikit <command>`: one sub-module per command, each with `add_arguments(parser)`
and `run(args) -> int`. The commands only build config objects and call the package."""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> (module under midikit.cli, one-line help)
COMMANDS = {
    "preprocess": ("preprocess", "tokenize a MIDI/ABC source into a dataset under the checkpoint folder"),
    "train": ("train", "train (or resume) an LSTM, GRU or Transformer on a preprocessed dataset"),
    "generate": ("generate", "generate MIDI from a trained run"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m midikit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(f"midikit.cli.{module_name}")
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..models import ConfigError
    from ..storage import StorageError

    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ConfigError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
