"""`python -m midikit <command>`: one sub-module per command, each with `add_arguments(parser)`
and `run(args) -> int`. The commands only build config objects and call the package; their flags
are generated from the config classes (`midikit.configs`). Command modules import torch and
miditok only inside `run`, so `--help` answers at once."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import threading

from ..errors import ConfigError, StorageError

# command name -> (module under midikit.cli, one-line help)
COMMANDS = {
    "preprocess": ("preprocess", "tokenize a MIDI/ABC source into a dataset under the checkpoint folder"),
    "train": ("train", "train (or resume) an LSTM, GRU or Transformer on a preprocessed dataset"),
    "generate": ("generate", "generate MIDI from a trained run"),
    "evaluate": ("evaluate", "how good is a run's music: held-out loss and generated pieces against the data"),
}
# "-5,-3,-1,0,1,3,5" (the original project's --transpositions) would read as a flag: joined to its flag instead.
_NEGATIVE_LIST = re.compile(r"^-\d[\d,\s-]*$")


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


def join_negative_values(argv: list[str]) -> list[str]:
    """`--flag -5,-3` -> `--flag=-5,-3`, so a value that starts with a minus is not taken for a flag."""
    joined, index = [], 0
    while index < len(argv):
        item = argv[index]
        if (item.startswith("--") and "=" not in item and index + 1 < len(argv)
                and _NEGATIVE_LIST.match(argv[index + 1])):
            joined.append(f"{item}={argv[index + 1]}")
            index += 2
            continue
        joined.append(item)
        index += 1
    return joined


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # a real command (python -m midikit, the midikit script), not a call from Python
        line_buffered()
    args = build_parser().parse_args(join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    try:
        code = int(args._run(args) or 0)
    except (ConfigError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    if argv is None:
        exit_past_hung_writes(code)
    return code


def line_buffered() -> None:
    """Each line reaches a pipe or a log file as it is printed (`... | tee train.log`): a disconnect that kills
    the process then loses nothing already said. Python buffers whole blocks when the output is not a terminal."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)


def exit_past_hung_writes(code: int) -> None:
    """A write stuck on a hung Drive lives on in a daemon thread, possibly inside torch's C++ writer;
    tearing the interpreter down around it can abort the process. Its run was already told what was
    and was not saved, so the command ends here, with its own exit code."""
    if any(thread.name.startswith("midikit-writer") and thread.is_alive() for thread in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
