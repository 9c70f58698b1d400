"""The notebooks as committed, and the forms they are driven by.

Running the notebooks top to bottom is nbval's job (`pytest --nbval-lax notebooks`); these tests
check what nbval cannot: each notebook is valid, committed without outputs or execution counts,
opens in Colab from its badge, installs midikit without touching torch, and keeps its cells thin.
The form tests check that a bad value shows the package's own error in the form and that `.value`
raises it.
"""

from __future__ import annotations

import ast
import re
import shutil
from dataclasses import replace
from pathlib import Path

import nbformat
import numpy as np
import pytest
import symusic
from IPython.core.inputtransformer2 import TransformerManager

from midikit import runs, widgets
from midikit.data import load_dataset
from midikit.generate import GenerationResult
from midikit.models import ConfigError
from midikit.storage import DatasetPaths, StorageError
from midikit.train import train

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = [
    "01_setup.ipynb",
    "02_preprocess.ipynb",
    "03_train_lstm.ipynb",
    "04_train_gru.ipynb",
    "05_train_transformer.ipynb",
    "06_verify_checkpoints.ipynb",
    "07_generate.ipynb",
]
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"  # compares against stored outputs, which are never committed
MAX_CODE_LINES = 8  # a cell drives the package; anything longer belongs in midikit


def code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


@pytest.fixture(params=NOTEBOOKS)
def notebook(request):
    path = NOTEBOOK_DIR / request.param
    return request.param, nbformat.read(path, as_version=4)


def test_the_seven_notebooks_in_order():
    assert sorted(path.name for path in NOTEBOOK_DIR.glob("*.ipynb")) == NOTEBOOKS


def test_valid_nbformat(notebook):
    _, nb = notebook
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assert "widgets" not in nb.metadata  # saved widget state is output too


def test_committed_without_outputs(notebook):
    _, nb = notebook
    for cell in code_cells(nb):
        assert cell.outputs == [] and cell.execution_count is None, f"committed with outputs: {cell.source}"
        # Without stored outputs a checked cell could only fail: notebooks check by raising instead.
        assert CHECK_MARK not in cell.source, cell.source


def test_the_checkpoint_notebook_verifies_the_weights_against_their_sidecar():
    nb = nbformat.read(NOTEBOOK_DIR / "06_verify_checkpoints.ipynb", as_version=4)
    lines = [line for cell in code_cells(nb) for line in cell.source.splitlines()]
    assert any(line.startswith("assert ") and "sidecar" in line for line in lines)


def test_title_and_colab_badge(notebook):
    name, nb = notebook
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    badge = f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({widgets.colab_url(name)})"
    assert badge in first.source
    assert widgets.colab_url(name) == f"https://colab.research.google.com/github/midikit/midikit/blob/main/notebooks/{name}"


def test_install_cell_installs_midikit_only_in_colab_and_never_torch(notebook):
    _, nb = notebook
    install = code_cells(nb)[0]
    pip_lines = [line.strip() for line in install.source.splitlines() if "pip" in line
                 and not line.strip().startswith("#")]
    assert pip_lines == ['%pip install -q "midikit @ git+{REPO_URL}"']
    assert f'REPO_URL = "{widgets.REPO_URL}"' in install.source
    assert 'if "google.colab" in sys.modules:' in install.source
    assert not re.search(r"--upgrade|-U\b|--force-reinstall|\btorch\b", "\n".join(pip_lines))
    assert all("pip" not in cell.source for cell in code_cells(nb)[1:])
    assert all("import midikit" not in line and "from midikit" not in line for line in install.source.splitlines())


def test_cells_are_thin_drivers(notebook):
    _, nb = notebook
    for cell in code_cells(nb):
        tree = ast.parse(TransformerManager().transform_cell(cell.source))
        heavy = [type(node).__name__ for node in ast.walk(tree)
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.While))]
        assert not heavy, f"{heavy} in a cell; put it in midikit: {cell.source}"
        lines = [line for line in cell.source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        assert len(lines) <= MAX_CODE_LINES, cell.source


# --------------------------------------------------------------------------- forms


def test_folder_form_reports_an_unmounted_drive(tmp_path):
    form = widgets.FolderForm(tmp_path)
    assert form.value == tmp_path and "✓" in form.message.value
    form.fields["checkpoint_dir"].value = "/content/drive/MyDrive/midikit_checkpoints"
    assert "Drive is not mounted" in form.message.value
    with pytest.raises(StorageError, match="Drive is not mounted"):
        form.value


def test_dataset_form_rejects_a_path_as_dataset_name(tmp_path):
    form = widgets.DatasetForm(tmp_path, dataset="folk")
    assert form.value.base == tmp_path / "folk"
    form.fields["dataset"].value = "a/b"
    assert "Invalid dataset name" in form.message.value
    with pytest.raises(StorageError, match="Invalid dataset name"):
        form.value


def test_preprocess_form_validates_transpositions(tmp_path):
    form = widgets.PreprocessForm(tmp_path, source="corpus")
    config = form.value
    assert (config.source, config.dataset, config.transpositions) == ("corpus", "folk_corpus", (-5, -3, -1, 0, 1, 3, 5))
    form.fields["transpositions"].value = "-5,up"
    assert "transpositions" in form.message.value and "⚠" in form.message.value
    with pytest.raises(ConfigError, match="transpositions"):
        form.value
    form.fields["transpositions"].value = "0,2"
    assert form.value.transpositions == (0, 2) and "✓" in form.message.value


def test_preprocess_form_dataset_name_follows_the_source(tmp_path):
    form = widgets.PreprocessForm(tmp_path, source="corpus")
    form.fields["source"].value = "nottingham"
    assert form.value.dataset == widgets.SOURCES["nottingham"][1]  # the new source's suggested name
    typed = "my_" + widgets.SOURCES["corpus"][1]
    form.fields["dataset"].value = typed
    form.fields["source"].value = "corpus"
    assert form.value.dataset == typed  # a name the user typed is kept


def test_preprocess_form_shows_the_folder_field_only_for_folders(tmp_path):
    form = widgets.PreprocessForm(tmp_path, source="corpus")
    assert form.fields["input_dir"].layout.display == "none"
    assert form.fields["dataset"].layout.display is None
    form.fields["source"].value = "folder"
    assert form.fields["input_dir"].layout.display is None
    assert "input_dir" in form.message.value  # an empty folder field is the package's error
    form.fields["input_dir"].value = str(tmp_path)
    assert form.value.input_dir == str(tmp_path)


def _finished_run(paths, run_id="lstm_20260101_000000"):
    paths.models.mkdir(parents=True)
    paths.best_weights(run_id).write_bytes(b"")
    runs.write_record(paths.run_checkpoints(run_id), {"run_id": run_id, "model_type": "lstm", "status": "finished",
                                                      "best_val_loss": 2.5})


def test_generate_form_shows_the_sampling_error(tmp_path):
    paths = widgets.DatasetForm(tmp_path, dataset="folk").value
    _finished_run(paths)
    form = widgets.GenerateForm(paths)
    where, sample = form.value
    assert (where.run, where.dataset, where.checkpoint_dir) == ("lstm_20260101_000000", "folk", str(tmp_path))
    # The generation defaults, and a random seed unless one is typed
    assert (sample.strategy, sample.temperature, sample.num_tokens, sample.seed) == ("temperature", 0.95, 2048, None)
    form.fields["p"].value = 1.5
    with pytest.raises(ConfigError) as raised:
        form.value
    assert "p must be a number > 0.0 and <= 1.0, got 1.5" in str(raised.value) and "&lt;= 1.0" in form.message.value
    form.fields["p"].value = 0.5
    form.fields["seed"].value = 7
    assert form.value[1].seed == 7 and "seed 7" in form.message.value


def test_generate_form_without_runs_offers_the_starter_model(tmp_path):
    paths = widgets.DatasetForm(tmp_path, dataset="folk").value
    form = widgets.GenerateForm(paths)
    assert [value for _, value in form.fields["run"].widget.options] == ["starter"]
    assert form.value[0].run == "starter"


def test_a_primer_uploaded_through_the_form_is_what_generation_continues(tmp_path, nottingham_dir):
    paths = widgets.DatasetForm(tmp_path, dataset="folk").value
    form = widgets.GenerateForm(paths)
    tune = (nottingham_dir / "ashover1.mid").read_bytes()
    # The message the browser sends when a file is chosen, through the widget's own deserializer (ipywidgets 8;
    # Colab's 7.7 keeps a dict of name -> content, which `uploaded_files` reads the same way).
    form.upload.set_state({"value": [{"name": "my tune.mid", "type": "audio/midi", "size": len(tune),
                                      "content": memoryview(tune), "last_modified": 1_700_000_000_000}]})
    where, _ = form.value
    assert Path(where.seed_midi).name == "my tune.mid" and Path(where.seed_midi).read_bytes() == tune
    assert where.seed_bars == 4 and "continues my tune.mid (its first 4 bars)" in form.message.value
    form.fields["seed_midi"].value = str(tmp_path / "missing.mid")
    assert "⚠" in form.message.value and "missing.mid is not a file" in form.message.value


def test_train_form_presets_and_model_validation(tiny_dataset):  # tiny_dataset: tests/conftest.py
    form = widgets.TrainForm("transformer", tiny_dataset, preset="cpu")
    train_config, model_config = form.value
    assert (train_config.preset, train_config.batch_size, model_config.d_model) == ("cpu", 32, 128)
    assert model_config.vocab_size > 0 and train_config.dataset == tiny_dataset.dataset
    assert model_config.context_length == load_dataset(tiny_dataset).seq_length  # as the CLI: not a preset's
    form.fields["preset"].value = "small"
    train_config, model_config = form.value
    assert (train_config.batch_size, model_config.d_model, model_config.num_layers) == (64, 256, 4)
    form.fields["nhead"].value = 5
    assert "nhead=5 does not divide d_model=256" in form.message.value
    with pytest.raises(ConfigError, match="nhead=5 does not divide"):
        form.value
    form.fields["nhead"].value = 8
    form.fields["max_steps"].value = -3
    with pytest.raises(ConfigError, match="max_steps"):
        form.value


def test_train_form_resumes_a_run_with_its_own_model_on_other_hardware(tiny_dataset, tmp_path):
    paths = DatasetPaths(tmp_path, tiny_dataset.dataset)
    shutil.copytree(tiny_dataset.data, paths.data)
    form = widgets.TrainForm("lstm", paths, preset="cpu")
    assert not form.resuming
    form.set_values(max_steps=4, eval_every=2, eval_windows=8)
    train_config, model_config = form.value
    stopped = train(replace(train_config, device="cpu", progress=False), model_config, on_eval=_stop_button, log=_quiet)
    assert stopped.status == "interrupted"

    # A runtime with another GPU fills the form from another preset; the run must continue anyway.
    form = widgets.TrainForm("lstm", paths, preset="small")
    form.set_values(max_steps=4)
    train_config, model_config = form.value
    assert form.resuming and train_config.resume == "auto" and stopped.run_id in form.message.value
    assert (model_config.hidden_size, form.fields["hidden_size"].value) == (128, 128)  # the run's, not small's 256
    assert form.fields["hidden_size"].disabled and form.fields["batch_size"].value == 32
    resumed = train(replace(train_config, device="cpu", progress=False), model_config, log=_quiet)
    assert resumed.run_id == stopped.run_id and resumed.resumed_from_step == stopped.steps

    form = widgets.TrainForm("lstm", paths, preset="small")
    assert not form.resuming  # the run finished: nothing to resume, a new run gets the preset's sizes
    assert form.value[1].hidden_size == 256 and not form.fields["hidden_size"].disabled


def test_train_form_can_start_a_new_run_instead_of_resuming(tiny_dataset, tmp_path):
    paths = DatasetPaths(tmp_path, tiny_dataset.dataset)
    shutil.copytree(tiny_dataset.data, paths.data)
    form = widgets.TrainForm("gru", paths, preset="cpu")
    form.set_values(max_steps=2, eval_every=1, eval_windows=8)
    train_config, model_config = form.value
    train(replace(train_config, device="cpu", progress=False), model_config, on_eval=_stop_button, log=_quiet)

    form = widgets.TrainForm("gru", paths, preset="small")
    assert form.resuming and form.value[1].hidden_size == 128
    form.fields["resume"].value = "never"
    train_config, model_config = form.value
    assert train_config.resume == "never" and model_config.hidden_size == 256 and "new run" in form.message.value
    form.fields["hidden_size"].value = 64  # editable again
    assert form.value[1].hidden_size == 64
    form.fields["resume"].value = "auto"
    assert form.value[1].hidden_size == 128 and form.fields["hidden_size"].disabled


def test_preprocess_form_refuses_a_folder_that_does_not_exist(tmp_path):
    form = widgets.PreprocessForm(tmp_path, source="folder")
    form.fields["input_dir"].value = str(tmp_path / "missing")
    assert "⚠" in form.message.value and "does not exist" in form.message.value
    with pytest.raises(StorageError, match="missing does not exist"):
        form.value
    form.fields["input_dir"].value = str(tmp_path)
    assert "✓" in form.message.value


def test_train_form_refuses_a_context_longer_than_the_dataset(tiny_dataset):
    form = widgets.TrainForm("lstm", tiny_dataset, preset="cpu")
    assert "✓" in form.message.value
    form.fields["context_length"].value = 100000
    assert "⚠" in form.message.value and "context_length=100000 is longer" in form.message.value
    with pytest.raises(ConfigError, match="context_length=100000"):
        form.value


def test_a_form_displays_its_box_in_ipywidgets_7_and_8(tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr(widgets.fields, "display", shown.append)
    form = widgets.FolderForm(tmp_path)
    form._ipython_display_()  # what IPython calls; ipywidgets 7 widgets have no _repr_mimebundle_
    assert shown == [form.box]


def _stop_button(history):
    raise KeyboardInterrupt  # what Colab's stop button raises


def _quiet(*_):
    pass


# --------------------------------------------------------------------------- displays


def test_tables_read_text_columns_from_the_left_and_keep_numbers_right():
    # JupyterLab right-aligns every cell, which put a run's long artifact paths at the far right, cut mid-path.
    table = widgets.html_table([{"artifact": "weights", "path": "/root/folk/models/a.pth", "steps": 40,
                                 "change": "+3.5%"}])
    head = re.findall(r"<th([^>]*)>(\w+)</th>", table.data)
    assert head == [(' style="text-align:left"', "artifact"), (' style="text-align:left"', "path"), ("", "steps"),
                    ("", "change")]
    assert '<td style="text-align:left">/root/folk/models/a.pth</td>' in table.data and "<td>40</td>" in table.data


def test_loss_arrays_of_a_run_stopped_before_its_first_evaluation(tmp_path, capsys):
    paths = DatasetPaths(tmp_path, "folk").ensure()
    run_id = "lstm_20260101_000000"
    np.save(paths.train_losses(run_id), np.zeros(0, dtype=np.float32))
    np.save(paths.val_losses(run_id), np.zeros(0, dtype=np.float32))
    widgets.show_loss_arrays(paths, run_id)
    assert capsys.readouterr().out == "0 training losses, none yet; 0 validation losses, no validation yet\n"
    np.save(paths.train_losses(run_id), np.array([3.5, 2.25], dtype=np.float32))
    widgets.show_loss_arrays(paths, run_id)
    assert capsys.readouterr().out == "2 training losses, last 2.250; 0 validation losses, no validation yet\n"
    np.save(paths.val_losses(run_id), np.array([2.5, 2.125], dtype=np.float32))
    widgets.show_loss_arrays(paths, run_id)
    assert capsys.readouterr().out == "2 training losses, last 2.250; 2 validation losses, best 2.125\n"


def test_a_generated_piece_without_notes_is_reported_not_drawn(tiny_dataset, nottingham_dir, tmp_path, monkeypatch,
                                                               capsys):
    empty, tune = symusic.Score(480), symusic.Score(nottingham_dir / "ashover1.mid")
    paths = [tmp_path / "lstm_20260101_000000_greedy_sample00.mid",
             tmp_path / "lstm_20260101_000000_greedy_sample01.mid"]
    empty.dump_midi(paths[0])
    tune.dump_midi(paths[1])
    result = GenerationResult(tokens=[[], [1]], midi_paths=paths, scores=[empty, tune], invalid_token_share=[0.0, 0.0],
                              seconds=1.0, tokens_per_second=1.0)
    shown = []
    monkeypatch.setattr(widgets.listening, "display", shown.append)
    widgets.show_generation(result, tiny_dataset, max_dataset_files=4)
    assert "sample00.mid: no notes" in capsys.readouterr().out
    assert [type(item).__name__ for item in shown] == ["Image", "Audio", "HTML"]  # the tune's roll and audio, the table
    assert "<td style=\"text-align:left\">num_notes</td><td>0</td><td>158</td>" in shown[-1].data


def test_typing_a_folder_name_never_creates_it(tmp_path):
    # A form is pure: checking what is typed must not make folders (on Drive: in the user's MyDrive).
    form = widgets.FolderForm(tmp_path / "typo")
    form.fields["checkpoint_dir"].value = str(tmp_path / "typo" / "deeper")
    assert "new folder" in form.message.value and form.value == tmp_path / "typo" / "deeper"
    dataset_form = widgets.DatasetForm(tmp_path / "other", dataset="folk")
    assert "not preprocessed yet" in dataset_form.message.value
    preprocess_form = widgets.PreprocessForm(tmp_path / "third", source="corpus")
    assert preprocess_form.value.checkpoint_dir == str(tmp_path / "third")
    assert list(tmp_path.iterdir()) == []


def test_the_notebooks_are_what_their_generator_writes_and_03_to_05_differ_only_in_the_model_type():
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "scripts" / "write_notebooks.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    sources = {}
    for name, model in (("03_train_lstm.ipynb", "lstm"), ("04_train_gru.ipynb", "gru"),
                        ("05_train_transformer.ipynb", "transformer")):
        nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        code = [cell.source for cell in code_cells(nb)]
        assert any(f'widgets.TrainForm("{model}", paths)' in source for source in code), name
        sources[name] = [source.replace(f'"{model}"', '"MODEL"') for source in code]
    assert len({tuple(code) for code in sources.values()}) == 1  # the same cells but for the model type


@pytest.mark.parametrize("gpu, preset", [("Tesla T4", "t4"), ("NVIDIA A100-SXM4-40GB", "large"),
                                         ("Some New GPU 9000", "t4")])
def test_a_first_run_on_a_gpu_is_sized_to_about_five_minutes_and_capped(tiny_dataset, monkeypatch, gpu, preset):
    import torch

    from midikit import estimates
    from midikit.models import build_model, count_parameters
    from midikit.presets import get_preset

    # The GPU this runtime reports (no GPU here): only its name and presence are asked.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: gpu)
    dataset = load_dataset(tiny_dataset)
    values, said = widgets.first_run_defaults("transformer", dataset, preset)
    config = get_preset("transformer", preset).model_config("transformer", dataset.vocab_size, dataset.seq_length)
    with torch.device("meta"):
        parameters = count_parameters(build_model(config))
    per_step = get_preset("transformer", preset).batch_size * dataset.seq_length
    minutes = values["max_steps"] * per_step / estimates.tokens_per_second("transformer", parameters, gpu) / 60
    assert 4 <= minutes <= 6 and values["max_minutes"] == estimates.FIRST_RUN_GUARD_MINUTES
    assert values["eval_every"] <= values["max_steps"] and "an estimate" in said and gpu in said
