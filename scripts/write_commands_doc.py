"""Write docs/COLAB_COMMANDS.md from the command line itself: every command that
`midikit.cli.COMMANDS` lists, every flag of `midikit.cli.build_parser()` with its help, default and
an example, and where a default differs from the original project's. Each example is parsed with the
real parser before it is written, so a doc example that would not run cannot be committed.

    python scripts/write_commands_doc.py            # rewrite docs/COLAB_COMMANDS.md
    python scripts/write_commands_doc.py --check    # exit 1 if the file is not what the parser gives

tests/test_docs.py runs the check: after changing a flag, run this script and commit the doc.
A new flag needs an example value in EXAMPLES below (the script says so).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from midikit.cli import COMMANDS, build_parser, join_negative_values  # noqa: E402

DOC = REPO / "docs" / "COLAB_COMMANDS.md"
DRIVE = "/content/drive/MyDrive/midikit_checkpoints"
RUN_ID = "transformer_20261127_104724"

# An example value per flag destination (the same name means the same thing in every command),
# and per (command, destination) where a command's flag means something else.
EXAMPLES = {
    "input_dir": "/content/drive/MyDrive/my_midis", "source": "corpus", "dataset": "folk", "checkpoint_dir": DRIVE,
    "limit": "120", "workers": "2", "transpositions": "-2,0,2", "tokenizer": "TSD", "tracks": "separate",
    "tokenizer_params": '{"use_tempos": true}', "subsample_ratio": "0.5", "model_type": "transformer", "preset": "t4",
    "context_length": "256", "dropout": "0.3", "embed_size": "256", "hidden_size": "512", "num_layers": "4",
    "d_model": "512", "nhead": "8", "dim_feedforward": "2048", "positions": "learned", "epochs": "30",
    "batch_size": "128", "lr": "0.0003", "weight_decay": "0.1", "warmup_steps": "200", "max_steps": "300",
    "max_batches": "5", "grad_clip": "0.5", "patience": "10", "eval_every": "500", "eval_windows": "64",
    "device": "cuda", "precision": "fp32", "compile": "off", "checkpoint_every_minutes": "5",
    "checkpoint_every_steps": "1000", "keep_last": "3", "final_wait_minutes": "2", "resume": "never",
    "max_minutes": "60", "seed_bars": "8", "seed_midi": "/content/opening.mid", "strategy": "greedy", "k": "5",
    "p": "0.95", "temperature": "0.8", "num_tokens": "1024", "bars": "16", "num_samples": "4", "seed": "1234",
    "data_dir": f"{DRIVE}/nottingham", "seed_file": "seeds.txt", "seed_length": "short", "seed_style": "folk",
    "run": RUN_ID, "pieces": "32", "max_tokens": "1024", "data_pieces": "128", "val_songs": "20", "bpe_vocab": "1000",
}
COMMAND_EXAMPLES_BY_FLAG = {
    ("preprocess", "val_split"): "0.1", ("preprocess", "seq_length"): "256", ("train", "val_split"): "0.05",
    ("generate", "seq_length"): "100", ("generate", "p"): "0.9",
}

# Whole commands, as a newcomer types them (each is parsed before it is written).
COMMAND_EXAMPLES = {
    "preprocess": [
        ("the offline folk corpus bundled with music21 (no download)", "--source corpus --dataset folk"),
        ("the original project's dataset, downloaded once (cached under the root)", "--source nottingham"),
        ("any folder of .mid/.midi/.abc files on Drive", "--input_dir /content/drive/MyDrive/my_midis --dataset mine"),
    ],
    "train": [
        ("a first run on the CPU in a few minutes", "--dataset folk --model_type transformer "
                                                    "--preset cpu --max_steps 300"),
        ("the same command after a disconnect or Ctrl-C: resumes the run", "--dataset folk --model_type transformer"),
        ("an hour of training in this session; run it again to continue for another hour",
         "--dataset nottingham --model_type transformer --max_minutes 60"),
        ("train a finished run further: a new horizon, the learning rate going on from where it was",
         "--dataset folk --model_type transformer --max_steps 3000 --extend"),
        ("the original project's large Transformer on an A100-class GPU (where `large` is also what "
         "the preset defaults to)",
         "--dataset nottingham --model_type transformer --preset large"),
        ("the original project's README quick run", "--dataset nottingham --model_type lstm "
                                                    "--epochs 4 --max_batches 5"),
    ],
    "generate": [
        ("four pieces from the newest run with best weights, midikit's default sampling (temperature 0.95)",
         "--dataset folk --run latest --num_samples 4"),
        ("continue a tune of your own: its first 8 bars, then the model", "--dataset folk --seed_midi "
         "/content/opening.mid --seed_bars 8"),
        ("the starter model shipped with midikit, before any training", "--run starter"),
        ("the original project's default: greedy decoding of the newest Transformer",
         "--dataset folk --model_type transformer --strategy greedy"),
        ("the original project's spelling: a .pth and its data folder",
         f"--model_path {DRIVE}/nottingham/models/{RUN_ID}.pth "
         f"--data_dir {DRIVE}/nottingham --strategy top_k --k 5"),
    ],
    "evaluate": [
        ("the quality report of the newest run with best weights", "--dataset folk"),
        ("a given run, more pieces", f"--dataset nottingham --run {RUN_ID} --pieces 32"),
    ],
}

# Where midikit's default is not the original project's (from the original project's README, train_generator.py and
# generate.py: /work/shared/SEED_COMMANDS.md and SEED_BASELINE.md).
SEED_DEFAULTS = {
    ("preprocess", "tracks"): "the original project made one sequence per track (`--tracks separate`); midikit keeps "
                              "melody and chords of a tune in one sequence",
    ("preprocess", "val_split"): "the same share, 0.05; the original project split the already transposed sequences, "
                                 "midikit splits the files before transposing (no transposed copy of a "
                                 "validation tune is trained on)",
    ("train", "val_split"): "the original project split the data when training; midikit splits when preprocessing, so "
                            "here it is only checked against the dataset's split",
    ("train", "preset"): "the original project's script defaults are the `small` preset; midikit picks `large` on a 40 "
                         "GB-class GPU, `t4` on a smaller one, `cpu` without one",
    ("train", "weight_decay"): "the original project used Adam with weight_decay 1e-4 on every parameter; midikit "
                               "AdamW, 0.01, matrices and embeddings only",
    ("train", "grad_clip"): "the original project clipped at 1.0 only for datasets named `miditok`/`miditok_augmented`",
    ("generate", "strategy"): "the original project decoded greedily by default; midikit samples at temperature 0.95: "
                              "pass `--strategy greedy` for the original project's behaviour",
    ("generate", "num_tokens"): "the original project's `--generate_length` defaulted to 100 tokens; midikit's to "
                                "2,048 (a piece ends earlier when the model ends it)",
    ("generate", "run"): "the original project's `--model_path` was required; midikit defaults to the newest run with "
                         "best weights (finished or not)",
    ("generate", "seq_length"): "the original project's input length (\"must match training\"); midikit reads it from "
                                "the run and only checks it",
}


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return dict(parser._subparsers._group_actions[0].choices)


def example_value(command: str, action: argparse.Action) -> str | None:
    """The example's value for a flag (None for a switch)."""
    if action.nargs == 0:
        return None
    value = COMMAND_EXAMPLES_BY_FLAG.get((command, action.dest), EXAMPLES.get(action.dest))
    if value is None:
        raise SystemExit(f"scripts/write_commands_doc.py: no example for `{command} {action.option_strings[0]}`: "
                         f"add one to EXAMPLES.")
    return value


def example_args(command: str, action: argparse.Action) -> list[str]:
    value = example_value(command, action)
    flag = action.option_strings[0]
    if value is None:
        return [flag]
    return [f"{flag}={value}"] if value.startswith("-") else [flag, value]


def check_parses(parser: argparse.ArgumentParser, command: str, args: list[str], dest: str | None = None, value=None):
    """Parse an example with the real parser; with `dest`, check the flag reached its field."""
    try:
        parsed = parser.parse_args(join_negative_values([command, *args]))
    except SystemExit as exc:
        raise SystemExit(f"the example `{command} {shlex.join(args)}` does not parse") from exc
    if dest is not None:
        got = getattr(parsed, dest)
        want = parser._subparsers._group_actions[0].choices[command]._option_string_actions[args[0].split("=")[0]]
        if value is None:
            assert got == want.const, (command, args, got)  # store_true/store_false: what the flag stores
        else:
            assert str(got) == value or got == want.type(value), (command, args, got)


def help_text(action: argparse.Action) -> str:
    """--help's text for a Markdown table cell (a `<root>` would otherwise be read as an HTML tag)."""
    text = " ".join((action.help or "").replace("%%", "%").split())
    return re.sub(r"<(\w[^<>]*)>", r"&lt;\1&gt;", text.replace("|", "\\|"))


def original_spellings() -> set[str]:
    """The flags that are the original project's spellings (declared beside their field as `seed_flags`)."""
    from dataclasses import fields

    from midikit import configs
    from midikit.settings import declared

    classes = (configs.ModelConfig, configs.TrainConfig, configs.SampleConfig, configs.GenerateConfig,
               configs.QualityConfig, configs.PreprocessConfig)
    return {f"--{flag}" for cls in classes for f in fields(cls) for flag in declared(f).seed_flags}


def flag_cell(action: argparse.Action) -> str:
    original = original_spellings()
    names = [f"`{action.option_strings[0]}`"]
    names += [f"`{alias}` ({'the original project' if alias in original else 'also'})"
              for alias in action.option_strings[1:]]
    return "<br>".join(names)


def command_section(parser: argparse.ArgumentParser, name: str, sub: argparse.ArgumentParser) -> list[str]:
    lines = [f"## {name}", "", f"{sub.description[0].upper()}{sub.description[1:]}.", ""]
    examples = COMMAND_EXAMPLES.get(name, [])
    if examples:
        lines += ["```bash"]
        for what, args in examples:
            check_parses(parser, name, shlex.split(args))
            lines += [f"# {what}", f"python -m midikit {name} {args}"]
        lines += ["```", ""]
    for group in sub._action_groups:
        actions = [a for a in group._group_actions if a.option_strings and a.dest != "help"]
        if not actions:
            continue
        title = "options" if group.title in ("options", "optional arguments") else group.title
        lines += [f"### {name}: {title}", "", "| flag | what it does (`--help`) | example |", "|---|---|---|"]
        for action in actions:
            args = example_args(name, action)
            check_parses(parser, name, args, action.dest, example_value(name, action))
            seed = SEED_DEFAULTS.get((name, action.dest))
            text = help_text(action) + (f" **The original project:** {seed}." if seed else "")
            lines.append(f"| {flag_cell(action)} | {text} | `{shlex.join(args)}` |")
        lines.append("")
    return lines


def render() -> str:
    parser = build_parser()
    subs = subparsers(parser)
    names = [name for name in COMMANDS if name in subs]
    differing = [(command, dest, note) for (command, dest), note in SEED_DEFAULTS.items() if command in names]
    flag_of = {(name, a.dest): a.option_strings[0] for name in names for a in subs[name]._actions if a.option_strings}
    lines = [
        "# midikit's commands, every flag",
        "",
        "<!-- Generated by scripts/write_commands_doc.py from midikit.cli.build_parser(): do not edit by hand; run",
        "     `python scripts/write_commands_doc.py` after changing a flag (tests/test_docs.py checks it). -->",
        "",
        "Everything the notebooks do also runs from a terminal, or from a Colab cell with `!` in front",
        "(`!python -m midikit train --dataset folk`), after notebook 01 has mounted Google Drive. In Colab the",
        f"checkpoint folder defaults to `$MIDIKIT_ROOT`, else the folder chosen in notebook 01, else `{DRIVE}`",
        "(elsewhere `./midikit_data`).",
        "Every command answers `--help` at once (it imports neither torch nor miditok). A value the",
        "command cannot use stops it before any work with one line that says what to pass instead.",
        "",
        "Commands: " + ", ".join(f"[`{name}`](#{name})" for name in names) + ". midikit grew out of the original",
        "csce585-midi project; its spellings",
        "(`--model_path`, `--data_dir`, `--generate_length`, `--seed_midi_file`, `--transformer_layers`, ...) work",
        "as aliases; `tests/test_seed_commands.py` runs every command line of the original project's "
        "README and A100 script.",
        "",
        "## Where midikit's defaults differ from the original project's",
        "",
        "| command | flag | what changed |",
        "|---|---|---|",
    ]
    lines += [f"| {command} | `{flag_of[command, dest]}` | {note} |" for command, dest, note in differing
              if (command, dest) in flag_of]
    lines.append("")
    for name in names:
        lines += command_section(parser, name, subs[name])
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed doc differs from the parser's")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC.relative_to(REPO)} is out of date: run `python scripts/write_commands_doc.py`.",
                  file=sys.stderr)
            return 1
        print(f"{DOC.relative_to(REPO)} is up to date.")
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(REPO)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
