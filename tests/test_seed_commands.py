"""The seed project's command lines keep working (issue 11): every line and flag its users know
(`/work/shared/SEED_COMMANDS.md`: the seed's README, its A100 script and its generate.py), with
`python -m midikit train` / `generate` in place of the seed's script paths, run here against the
tiny dataset. Each either produces what it produced in the seed (a trained model: `models/<run>.pth`
+ sidecar; a MIDI file named after its strategy) or fails with one line that names midikit's
spelling. The lines run in-process (`midikit.cli.main`) on one torch thread, to stay quick."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from midikit.cli import main
from midikit.storage import DatasetPaths

SEED_COMMANDS = Path(__file__).resolve().parents[2] / "shared" / "SEED_COMMANDS.md"

# The seed's lines, verbatim but for `python -m midikit` in front (placeholders: <name>, "$CHECKPOINT_DIR").
README_QUICK_RUN = "train --dataset <name> --model_type lstm --epochs 4 --max_batches 5"
A100_LINES = {
    "lstm": 'train --dataset <name> --model_type lstm --epochs 20 --batch_size 512 --lr 0.001 --hidden_size 1024 '
            '--num_layers 4 --dropout 0.4 --val_split 0.05 --patience 5 --device cuda '
            '--checkpoint_dir "$CHECKPOINT_DIR"',
    "gru": 'train --dataset <name> --model_type gru  --epochs 20 --batch_size 512 --lr 0.001 --hidden_size 1024 '
           '--num_layers 4 --dropout 0.4 --val_split 0.05 --patience 5 --device cuda '
           '--checkpoint_dir "$CHECKPOINT_DIR"',
    "transformer": 'train --dataset <name> --model_type transformer --epochs 20 --batch_size 256 --lr 0.0001 --d_model '
                   '1024 --nhead 16 --transformer_layers 8 --dim_feedforward 4096 --dropout 0.3 --val_split 0.05 '
                   '--patience 5 --device cuda --checkpoint_dir "$CHECKPOINT_DIR"',
}
GENERATE_EXAMPLES = [
    "generate --data_dir <preprocessed data dir> --model_path <models/...>/transformer_20251127_104724.pth "
    "--model_type transformer",
    "generate --model_path <path>.pth --model_type <type> --data_dir <dir> --strategy top_k --k 5",
    "generate --model_path <path>.pth --model_type <type> --data_dir <dir> --strategy top_p --p 0.9",
]
# On this CPU-only machine the A100 lines run with --device cpu and only what makes a step of the
# seed's large models take seconds, not minutes: 2 steps (--max_steps), one window per step (the
# seed's 512/256 windows of 100 tokens are a GPU's batch), and 2 validation windows (the default
# 256 would be 256 forward passes of a 30-100M-parameter model). The model sizes stay the seed's.
SMALL_ENOUGH_FOR_A_CPU = ["--max_steps", "2", "--batch_size", "1", "--eval_windows", "2", "--no_progress"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def seed_line(line: str, paths: DatasetPaths, **values: str) -> list[str]:
    """A seed line as argv: `<name>` is the dataset, "$CHECKPOINT_DIR" the root, others from `values`."""
    line = line.replace("<name>", paths.dataset).replace('"$CHECKPOINT_DIR"', shlex.quote(str(paths.root)))
    for placeholder, value in values.items():
        line = line.replace(placeholder, shlex.quote(str(value)))
    assert "<" not in line and "$" not in line, line
    return shlex.split(line)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: an unknown flag
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def new_model(paths: DatasetPaths, before: set) -> Path:
    """The one `.pth` a run added to models/, with its sidecar beside it."""
    added = set(paths.models.glob("*.pth")) - before
    assert len(added) == 1, sorted(p.name for p in added)
    weights = added.pop()
    assert weights.with_suffix(".json").is_file() and weights.stat().st_size > 0
    return weights


def models_of(paths: DatasetPaths) -> set:
    return set(paths.models.glob("*.pth")) if paths.models.is_dir() else set()


@pytest.fixture(scope="module")
def root(tiny_dataset, tmp_path_factory) -> DatasetPaths:
    """A private root with a copy of the tiny dataset (preprocessed with the seed's val_split 0.05)."""
    paths = DatasetPaths(tmp_path_factory.mktemp("seed_root"), tiny_dataset.dataset)
    shutil.copytree(tiny_dataset.data, paths.data)
    return paths


@pytest.fixture(scope="module")
def trained(root) -> dict:
    """The runs the generate lines need: the README quick run's LSTM and a small Transformer, trained
    through the CLI with the seed's remaining training flags."""
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MIDIKIT_ROOT", str(root.root))  # the seed's quick run names no --checkpoint_dir
        before = models_of(root)
        assert main(seed_line(README_QUICK_RUN, root)) == 0
        runs["lstm"] = new_model(root, before)
    before = models_of(root)
    transformer = ["train", "--dataset", root.dataset, "--model_type", "transformer", "--epochs", "1", "--max_batches",
                   "4", "--batch_size", "8", "--lr", "0.003", "--d_model", "32", "--nhead", "2", "--num_layers", "1",
                   "--dim_feedforward", "64", "--dropout", "0.1", "--subsample_ratio", "0.5", "--patience", "2",
                   "--device", "cpu", "--checkpoint_dir", str(root.root), "--no_progress"]
    assert main(transformer) == 0
    runs["transformer"] = new_model(root, before)
    before = models_of(root)
    gru = ["train", "--dataset", root.dataset, "--model_type", "gru", "--epochs", "1", "--max_batches", "3",
           "--batch_size", "4",
           "--embed_size", "16", "--hidden_size", "32", "--num_layers", "1", "--device", "cpu", "--checkpoint_dir",
           str(root.root), "--no_progress"]
    assert main(gru) == 0
    runs["gru"] = new_model(root, before)
    return runs


@pytest.fixture
def large_root(root, tmp_path):
    """A root of its own for one large run: its checkpoints (1-3 GB) are deleted after the test."""
    paths = DatasetPaths(tmp_path / "large", root.dataset)
    shutil.copytree(root.data, paths.data)
    yield paths
    shutil.rmtree(paths.root, ignore_errors=True)


# --------------------------------------------------------------------------- train


def test_the_readme_quick_run_trains_a_model_with_its_sidecar(root, trained):
    import json

    sidecar = json.loads(trained["lstm"].with_suffix(".json").read_text())
    assert sidecar["model_type"] == "lstm"
    assert sidecar["train_config"]["epochs"] == 4 and sidecar["train_config"]["max_batches"] == 5
    assert sidecar["metrics"]["steps"] == 20  # 4 epochs of 5 batches, as in the seed
    assert sum(t.numel()
               for t in torch.load(trained["lstm"], weights_only=True).values()) == sidecar["metrics"]["parameters"]


def test_the_seeds_remaining_training_flags_reach_the_run(root, trained):
    import json

    sidecar = json.loads(trained["transformer"].with_suffix(".json").read_text())
    assert {k: sidecar["model_config"][k] for k in ("d_model", "nhead", "num_layers", "dim_feedforward",
                                                    "dropout")} == \
        dict(d_model=32, nhead=2, num_layers=1, dim_feedforward=64, dropout=0.1)
    assert sidecar["train_config"]["subsample_ratio"] == 0.5 and sidecar["train_config"]["patience"] == 2
    assert sidecar["train_config"]["lr"] == 0.003 and sidecar["train_config"]["batch_size"] == 8
    sidecar = json.loads(trained["gru"].with_suffix(".json").read_text())
    assert {k: sidecar["model_config"][k] for k in ("embed_size", "hidden_size", "num_layers")} == \
        dict(embed_size=16, hidden_size=32, num_layers=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible: --device cuda would train")
@pytest.mark.parametrize("model_type", list(A100_LINES))
def test_the_a100_lines_on_a_machine_without_cuda_say_so_in_one_line(model_type, root, capsys):
    before = models_of(root)
    code, _, err = run_cli(seed_line(A100_LINES[model_type], root), capsys)
    assert code == 2
    assert "no CUDA GPU is visible" in one_line_error(err) and "--device cpu" in err
    assert models_of(root) == before


@pytest.mark.parametrize("model_type", list(A100_LINES))
def test_the_a100_lines_train_the_seeds_large_models_on_the_cpu(model_type, large_root, capsys):
    import json

    paths = large_root
    argv = [("cpu" if a == "cuda" else a) for a in seed_line(A100_LINES[model_type], paths)] + SMALL_ENOUGH_FOR_A_CPU
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    weights = new_model(paths, set())
    config = json.loads(weights.with_suffix(".json").read_text())["model_config"]
    expected = (dict(d_model=1024, nhead=16, num_layers=8, dim_feedforward=4096, dropout=0.3)
                if model_type == "transformer"
                else dict(hidden_size=1024, num_layers=4, dropout=0.4))
    assert {k: config[k] for k in expected} == expected  # --transformer_layers 8 is the Transformer's num_layers
    assert "max_steps at step 2" in out


def test_a_val_split_other_than_the_datasets_is_one_clear_message(root, capsys):
    argv = seed_line("train --dataset <name> --model_type lstm --val_split 0.1 --checkpoint_dir \"$CHECKPOINT_DIR\"",
                     root)
    code, _, err = run_cli(argv + ["--device", "cpu"], capsys)
    line = one_line_error(err)
    assert (code == 2 and "val_split=0.1 was asked for" in line and "val_split=0.05" in line
            and "midikit preprocess" in line)


# --------------------------------------------------------------------------- generate


def generated_by(out: str) -> list[Path]:
    """The MIDI files `generate` reports, one line each: `<path>: N new tokens, ...`."""
    return [Path(m) for m in re.findall(r"^(\S+\.mid): ", out, flags=re.M)]


@pytest.mark.parametrize("example, model_type, data_dir, strategy", [
    (0, "transformer", "base", "temperature"),  # no --strategy: midikit samples at temperature 0.95 (greedy there)
    (1, "lstm", "data", "top_k"),
    (2, "lstm", "base", "top_p"),
])
def test_the_readme_generate_examples_write_midi_named_after_their_strategy(example, model_type, data_dir, strategy,
                                                                             root, trained, capsys):
    folder = root.base if data_dir == "base" else root.data  # the seed's --data_dir: either folder works
    values = {"<preprocessed data dir>": folder, "<dir>": folder, "<models/...>/transformer_20251127_104724.pth":
              trained["transformer"], "<path>.pth": trained[model_type], "<type>": model_type}
    # + the seed's --generate_length (default 100 there, 2,048 here): a few tokens say as much, sooner.
    code, out, err = run_cli(seed_line(GENERATE_EXAMPLES[example], root, **values) + ["--generate_length", "24"],
                             capsys)
    assert code == 0, err
    [midi] = generated_by(out)
    assert midi.is_file() and midi.parent == root.generated
    assert midi.name.startswith(f"{trained[model_type].stem}_{strategy}_") and midi.name.endswith("_sample00.mid")


def generate_line(root, trained, *flags: str) -> list[str]:
    return ["generate", "--model_path", str(trained["lstm"]), "--model_type", "lstm", "--data_dir", str(root.base),
            *flags]


@pytest.mark.parametrize("flags, strategy", [
    (["--strategy", "greedy"], "greedy"),  # the seed's default
    (["--strategy", "temperature", "--temperature", "0.8"], "temperature"),
])
def test_the_other_strategies_of_the_seed(flags, strategy, root, trained, capsys):
    code, out, err = run_cli(generate_line(root, trained, *flags, "--generate_length", "24"), capsys)
    assert code == 0, err
    [midi] = generated_by(out)
    assert midi.name.startswith(f"{trained['lstm'].stem}_{strategy}_")


def test_generate_length_and_a_matching_seq_length(root, trained, capsys):
    code, out, err = run_cli(generate_line(root, trained, "--generate_length", "12", "--seq_length", "100"), capsys)
    assert code == 0, err
    assert int(re.search(r"(\d+) new tokens", out).group(1)) <= 12


def test_a_seq_length_other_than_the_runs_is_one_clear_message(root, trained, capsys):
    code, _, err = run_cli(generate_line(root, trained, "--seq_length", "50"), capsys)
    line = one_line_error(err)
    assert (code == 2 and "--seq_length 50 does not match the run's context length 100" in line
            and "drop --seq_length" in line)


def test_seed_midi_file_continues_a_midi_file(root, trained, capsys, tmp_path):
    import symusic

    opening, track = symusic.Score(480), symusic.Track(program=0)
    for beat, pitch in enumerate((60, 62, 64, 65, 67, 69, 71, 72)):  # a C major scale, a beat a note
        track.notes.append(symusic.Note(beat * 480, 480, pitch, 80))
    opening.tracks.append(track)
    opening.dump_midi(tmp_path / "opening.mid")
    code, out, err = run_cli(generate_line(root, trained, "--seed_midi_file", str(tmp_path / "opening.mid"),
                                           "--generate_length", "16"), capsys)
    assert code == 0, err
    [midi] = generated_by(out)
    assert symusic.Score(str(midi)).note_num() >= 8  # the opening's notes, then what the model added


@pytest.mark.parametrize("flag, value", [("--seed_file", "seeds.txt"), ("--seed_length", "short"),
                                         ("--seed_style", "folk")])
def test_the_seeds_opening_selection_points_to_seed_midi(flag, value, root, trained, capsys):
    code, _, err = run_cli(generate_line(root, trained, flag, value), capsys)
    line = one_line_error(err)
    assert code == 2 and flag in line and "--seed_midi PATH" in line


def test_a_model_type_other_than_the_runs_is_one_clear_message(root, trained, capsys):
    code, _, err = run_cli(["generate", "--model_path", str(trained["gru"]), "--model_type", "lstm", "--data_dir",
                            str(root.base)], capsys)
    line = one_line_error(err)
    assert code == 2 and "is a gru run, not a lstm" in line and "--model_type gru" in line


def test_a_data_dir_that_is_not_a_dataset_names_midikits_spelling(root, trained, capsys, tmp_path):
    code, _, err = run_cli(["generate", "--model_path", str(trained["lstm"]), "--data_dir", str(tmp_path)], capsys)
    line = one_line_error(err)
    assert code == 2 and "--checkpoint_dir ROOT --dataset NAME" in line


# --------------------------------------------------------------------------- the list itself


def test_this_file_covers_every_line_and_flag_of_the_seeds_commands():
    """Every command line of SEED_COMMANDS.md is one of the lines above, and every seed flag is parsed
    by midikit (when the file is there: it lives beside the repository, not in it)."""
    if not SEED_COMMANDS.is_file():
        pytest.skip(f"{SEED_COMMANDS} not found")
    text = SEED_COMMANDS.read_text()
    lines = [line.strip() for line in re.findall(r"^(?:train|generate) .*$", text, flags=re.M)]
    known = {README_QUICK_RUN, *A100_LINES.values(), *GENERATE_EXAMPLES}
    normalized = {" ".join(line.split()) for line in known}
    assert lines and all(" ".join(line.split()) in normalized for line in lines), lines
    from midikit.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    flags = {name: {o for action in commands[name]._actions for o in action.option_strings}
             for name in ("train", "generate")}
    train_flags = re.findall(r"--\w+", re.search(r"Flags it accepts: (.*?)\.\n", text, flags=re.S).group(1))
    generate_flags = set(re.findall(r"`(--\w+)`", text.split("## Generation")[1].split("README examples")[0]))
    assert len(train_flags) == 18 and len(generate_flags) >= 12
    assert set(train_flags) <= flags["train"], set(train_flags) - flags["train"]
    assert generate_flags <= flags["generate"], generate_flags - flags["generate"]
    table = text.split("## How each seed spelling maps")[1]
    for row in re.findall(r"^\| (train|generate) \| (.*?) \|", table, flags=re.M):
        assert set(re.findall(r"--\w+", row[1])) <= flags[row[0]], row
