"""Write the seven notebooks from one description, so they say the same things the same way and the
three training notebooks (03-05) come from one template: they differ only in their model type.

    python scripts/write_notebooks.py           # rewrite notebooks/*.ipynb
    python scripts/write_notebooks.py --check   # exit 1 if a committed notebook differs (tests run this)

Notebooks are written without outputs or execution counts; cells stay thin (the package does the work).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from midikit.widgets.displays import REPO_URL, colab_url  # noqa: E402

NOTEBOOKS = REPO / "notebooks"
TRAINING = {  # notebook -> (model type, title, what the model is)
    "03_train_lstm.ipynb": ("lstm", "LSTM", "The LSTM: an embedding, stacked LSTM layers and a linear head."),
    "04_train_gru.ipynb": ("gru", "GRU", "The GRU: like the LSTM with fewer gates, a little faster per step."),
    "05_train_transformer.ipynb": ("transformer", "Transformer", "The Transformer: a causal decoder (each position "
                                   "sees only the past) with rotary positions and SDPA attention."),
}


def md(text: str):
    return nbformat.v4.new_markdown_cell(text)


def code(text: str):
    return nbformat.v4.new_code_cell(text)


def header(name: str, title: str, intro: str) -> list:
    badge = f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(name)})"
    return [md(f"# {title}\n\n{badge}\n\n{intro}")]


def set_up(imports: str) -> list:
    install = ("# Colab starts every runtime fresh: install midikit there. Colab's CUDA torch already satisfies\n"
               "# midikit's loose torch requirement, so pip keeps it. Elsewhere midikit is installed already\n"
               "# (pip install -e .) and this cell does nothing.\n"
               "import sys\n\n"
               f'REPO_URL = "{REPO_URL}"  # the same string as midikit.widgets.REPO_URL\n'
               'if "google.colab" in sys.modules:\n'
               '    %pip install -q "midikit @ git+{REPO_URL}"')
    return [md("## Set-up\nInstall (Colab only), the hardware and Google Drive. Mounting asks for access to your Drive "
               "once per runtime; if Drive's connection dropped, the same cell mounts it again."),
            code(install), code(imports), code("widgets.show_hardware()"), code("widgets.mount_drive()")]


DATASET_FORM = [code("data = widgets.DatasetForm()\ndata"),
                code("paths = data.value\ndataset = widgets.require_dataset(paths)")]


def setup_notebook() -> list:
    return [
        *header("01_setup.ipynb", "Set-up: GPU, Google Drive and the checkpoint folder",
                "Run this first. It installs midikit (in Colab), shows the GPU, mounts Google Drive and lets you "
                "choose the checkpoint folder: every notebook reads and writes its datasets, checkpoints, weights, "
                "logs and plots there, so they survive the end of a Colab session. Outside Colab nothing is mounted "
                "and the folder is local (`$MIDIKIT_ROOT`, or `./midikit_data`)."),
        *set_up("from midikit import widgets"),
        md("## Checkpoint folder\nThe default is `MyDrive/midikit_checkpoints` in Colab. Type another folder if you "
           "like: the cell after the form remembers it (on Drive, so a new runtime finds it too), and notebooks 02-07 "
           "and `python -m midikit` start from it. Each form says where its default came from."),
        code("folder = widgets.FolderForm()\nfolder"),
        code("root = folder.remember()"),
        md("## What is already there\nDatasets, runs (from each dataset's `logs/models.csv`) and training-state "
           "checkpoints."),
        code("widgets.show_folder(root)"),
    ]


def preprocess_notebook() -> list:
    return [
        *header("02_preprocess.ipynb", "Preprocess a MIDI dataset",
                "Turns MIDI/ABC files into tokens the models train on: the Nottingham folk tunes (downloaded), "
                "music21's offline folk corpus, or a folder of your own files on Drive. Tokenizes with miditok, splits "
                "train/validation by file, transposes the training tunes, learns BPE merges, and stores the result in "
                "the checkpoint folder. Running it again with the same settings reuses the stored result."),
        *set_up("from midikit import widgets\nfrom midikit.data import preprocess"),
        md("## Settings\nThe defaults are the recipe that made the best model in midikit's quality benchmark: BPE "
           "merges up to 1,000 tokens and a context of 256 of them (`bench/results/quality_cpu.md`). Outside Colab "
           "they use the offline corpus with a `limit`, so the notebook runs in seconds; set `limit` to "
           "0 to use every file."),
        code("form = widgets.PreprocessForm()\nform"),
        md("## Preprocess"),
        code("result = preprocess(form.value)"),
        md("## What came out\nCounts per split, the files that were skipped (and why), and the sequence lengths."),
        code("widgets.show_dataset_counts(result.paths)"),
        code("widgets.show_skipped(result.paths)"),
        code("widgets.plot_token_lengths(result.paths)"),
    ]


def training_notebook(name: str) -> list:
    model_type, title, blurb = TRAINING[name]
    return [
        *header(name, f"Train the {title}",
                f"Trains (or resumes) the {title} on a preprocessed dataset. Training-state checkpoints go to the "
                "checkpoint folder every few minutes, at every new best and when you press stop, so a Colab disconnect "
                "loses minutes, not hours: run the notebook again and it resumes the unfinished run exactly where it "
                f"stopped. {blurb}"),
        *set_up("from midikit import widgets\nfrom midikit.models import build_model, count_parameters\n"
                "from midikit.train import train"),
        md("## Checkpoint folder and dataset\nThe folder that holds everything (the one chosen in notebook 01) and the "
           "dataset to use. If the dataset is not preprocessed yet, the next cell says so: run notebook 02 first."),
        *DATASET_FORM,
        md("## Hyperparameters\n"
           "*Run all* trains a **first run** sized for this runtime: on a GPU about five minutes (an estimate from "
           "the GPU's speed; `max_minutes` stops it at ten in any case), on a CPU a few steps. Once a run exists, the "
           "form starts from its values instead. The preset fills the model sizes (`large`: an A100-class GPU, `t4`: "
           "a 16 GB T4, `small`, `cpu`); `context_length` comes from the dataset.\n\n"
           "- **Go bigger**: set `max_steps` to 0 to train for `epochs`, and `max_minutes` to what this session may "
           "use (0: no limit); when the time is up the run saves and stays resumable, and running the training cell "
           "again continues it.\n"
           "- **extend** continues a run past the horizon it was planned with (a finished run too): its learning rate "
           "goes on from where it was and decays over the new horizon.\n"
           "- **resume**: an unfinished run of this model type is continued with its own model (greyed out), even on "
           "another GPU; `never` starts a new run with the form's settings."),
        code(f'form = widgets.TrainForm("{model_type}", paths)\nform'),
        code("train_config, model_config = form.value\nparameters = count_parameters(build_model(model_config))\n"
             'print(f"{model_config.model_type}, preset {train_config.preset}: {parameters:,} parameters")'),
        md("## Resume or start"),
        code("widgets.show_resumable(train_config, form)"),
        md("## Train\nA live loss plot and a progress bar. Colab's stop button saves a checkpoint and stops cleanly "
           "(the cells below still run); run this cell again to continue."),
        code("plot = widgets.LossPlot(f\"{train_config.model_type} on {train_config.dataset}\")\n"
             "result = train(train_config, model_config, on_eval=plot)"),
        md("## Where everything went\nThe run's files under the dataset's folder, and what to do next."),
        code("widgets.show_artifacts(result)"),
        md("## Before you close the tab\nColab uploads to Drive in the background: this cell pushes everything still "
           "pending and unmounts Drive (`drive.flush_and_unmount()`), so nothing is lost when the runtime ends. "
           "Mount again (the set-up cell) before training more in this runtime. Outside Colab there "
           "is nothing to flush."),
        code("widgets.flush_drive()"),
    ]


def verify_notebook() -> list:
    return [
        *header("06_verify_checkpoints.ipynb", "Verify checkpoints",
                "Browses the checkpoint folder: the runs in `models.csv`, every training-state checkpoint with its "
                "size, age and checksum status, a run's loss curve and summary, its best weights loaded back with "
                "`torch.load(weights_only=True)` and its loss arrays. Nothing here trains; its last cell saves the "
                "run's quality report beside it (`outputs/quality/`)."),
        *set_up("import json\n\nimport torch\nfrom IPython.display import Image, display\n\nfrom midikit import "
                "widgets\nfrom midikit.models import ModelConfig, build_model"),
        md("## Checkpoint folder and dataset\nThe next cell lists the dataset's runs that have best weights: finished, "
           "stopped (the stop button, a disconnect) or paused by their time budget, each with how far it got. With "
           "none yet it says so: train one first (notebooks 03-05). Nothing here trains or preprocesses."),
        *DATASET_FORM[:1],
        code("paths = data.value\nruns = widgets.require_playable_run(paths)"),
        md("## Runs (`logs/models.csv`)"),
        code("widgets.show_models_csv(paths)"),
        md("## Training-state checkpoints\n`valid`: the checksum matches; `corrupt`: it does not (training falls back "
           "to an older one); `unverified`: no checksum file."),
        code("widgets.show_checkpoints(paths)"),
        md("## One run"),
        code("run = widgets.RunForm(paths)\nrun"),
        code("run_id = run.value\ndisplay(Image(filename=paths.loss_plot(run_id)))"),
        code("print(paths.training_summary(run_id).read_text())"),
        md("## Load the best weights and count the parameters\nThe original csce585-midi project's snippet, with "
           "`weights_only=True`: the `.pth` is a plain state_dict."),
        code("state_dict = torch.load(paths.best_weights(run_id), map_location=\"cpu\", weights_only=True)\n"
             "parameters = sum(p.numel() for p in state_dict.values())\nprint(f\"{run_id}: "
             "{parameters:,} parameters\")"),
        code("sidecar = json.loads(paths.weights_sidecar(run_id).read_text())\n"
             "assert parameters == sidecar[\"metrics\"][\"parameters\"], (\n"
             "    \"the .pth does not match its sidecar: the run's files are inconsistent\")\n"
             "print(f\"{parameters:,} parameters, as the sidecar says\")"),
        md("The sidecar's model config rebuilds the model with no other input:"),
        code("model = "
             "build_model(ModelConfig.from_dict(sidecar[\"model_config\"]))\nmodel.load_state_dict(state_dict)"),
        md("## Loss arrays"),
        code("widgets.show_loss_arrays(paths, run_id)"),
        md(QUALITY_TEXT),
        code("from midikit import evaluate\n\nreport = evaluate.run_report(widgets.quality_config(paths, run_id))\n"
             "widgets.show_quality(report)"),
    ]


QUALITY_TEXT = (
    "## How good is the music?\nThe run's quality report, as `python -m midikit evaluate` makes it: the held-out loss "
    "on the validation songs (nats per token, and per note so runs with other tokenizations compare), then pieces "
    "generated until the model ends them, measured against the training data with a verdict per metric, the share of "
    "pieces without notes, miditok's token-error rate and the share that ended cleanly (EOS). On a CPU the notebook "
    "makes fewer pieces so that it stays quick (the terminal command makes the full report). The report "
    "is saved beside the run (`outputs/quality/`), and in its `run.json` once the run has finished.")


def generate_notebook() -> list:
    return [
        *header("07_generate.ipynb", "Generate music",
                "Plays a run of the checkpoint folder (finished, or stopped with its best weights on Drive), or the "
                "small starter model shipped with midikit before you have trained one: samples new pieces, or "
                "continues a tune of your own, and shows a piano roll, an audio player and the pieces' metrics next "
                "to the training data's. The MIDI files are saved under the dataset's `outputs/generated/` folder and "
                "download as one zip."),
        *set_up("from midikit import generate, widgets"),
        md("## Checkpoint folder and dataset\nThe next cell lists what can play: every run of the dataset with best "
           "weights and how far it got. Nothing here trains or preprocesses."),
        *DATASET_FORM[:1],
        code("paths = data.value\nwidgets.show_runs_to_play(paths)"),
        md("## Run, sampling and a primer\n`greedy` always takes the likeliest token; `top_k` and `top_p` sample among "
           "the likeliest; a higher `temperature` is more adventurous. The seed is random unless you type one: the "
           "pieces print theirs, so a piece you like can be made again. To continue a tune of your own, upload a MIDI "
           "file (or type its path on Drive) and choose how many of its bars to keep: each piece plays the primer, "
           "then the model's continuation."),
        code("form = widgets.GenerateForm(paths)\nform"),
        code("where, sample = form.value\nrun = generate.load_run(where.run, paths)\n"
             "result = generate.generate(run, sample, seed_midi=where.seed_midi, seed_bars=where.seed_bars)\n"
             'print(f"{len(result.midi_paths)} piece(s), {sum(result.new_tokens)} new tokens in '
             '{result.seconds:.1f} s")'),
        md("## Optional: instrument sounds\nThe audio preview plays plain sine tones unless FluidSynth is installed; "
           "with it, each track sounds as its General MIDI instrument (piano, strings, ...), from the soundfont that "
           "pretty_midi ships. In Colab the next cell installs it (`apt-get update`, then `apt-get install -y "
           "fluidsynth`; apt's errors are shown); set `INSTRUMENTS = False` to skip it. Elsewhere run `sudo apt-get "
           "install -y fluidsynth` yourself (`pip install pyfluidsynth` adds the Python binding, which midikit then "
           "uses instead of the program: the same synthesizer)."),
        code("from midikit import audio\n\n"
             "INSTRUMENTS = True  # False: keep the plain sine tones (nothing is installed)\n"
             'if INSTRUMENTS and "google.colab" in sys.modules:\n    !apt-get update -qq && apt-get '
             'install -y -qq fluidsynth\n'
             "print(audio.audio_synthesizer().line)"),
        md("## Look and listen\nA piano roll and an audio preview per piece, then the metrics against the dataset."),
        code("widgets.show_generation(result, run.paths)"),
        md("## Download\nAll the pieces as one zip (Colab's download; a link elsewhere)."),
        code("zip_path = widgets.download_all(result.midi_paths)  # kept, not shown: the cell prints where it is"),
        md(QUALITY_TEXT.replace("The run's quality report", "The chosen run's quality report")),
        code("from midikit import evaluate\n\nreport = evaluate.run_report(widgets.quality_config(paths, where.run), "
             "run=run)\nwidgets.show_quality(report)"),
    ]


def notebooks() -> dict[str, nbformat.NotebookNode]:
    cells = {"01_setup.ipynb": setup_notebook(), "02_preprocess.ipynb": preprocess_notebook(),
             **{name: training_notebook(name) for name in TRAINING}, "06_verify_checkpoints.ipynb": verify_notebook(),
             "07_generate.ipynb": generate_notebook()}
    built = {}
    for name, notebook_cells in cells.items():
        nb = nbformat.v4.new_notebook(cells=notebook_cells)
        nb.metadata = {"colab": {"provenance": [], "toc_visible": True},
                       "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                       "language_info": {"name": "python"}}
        for index, cell in enumerate(nb.cells):  # stable ids: a rewrite changes nothing that did not change
            cell.id = f"{name[:2]}-{index:02d}"
        built[name] = nb
    return built


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed notebooks instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for name, nb in notebooks().items():
        text = nbformat.writes(nb) + "\n"
        path = NOTEBOOKS / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python scripts/write_notebooks.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
