"""The notebooks' displays: what the package did, shown as tables, plots, piano rolls and audio.

Displays only read (the run registry, checkpoints' checksums, artifacts); nothing here trains,
preprocesses or writes. A notebook that finds nothing to show says which notebook to run first.
"""

from __future__ import annotations

import html
import io
import re
from pathlib import Path

import numpy as np
from IPython.display import HTML, Image, display

from .. import artifacts, checkpoints, models_csv, presets, runs, storage
from ..errors import DatasetError, StorageError

__all__ = [
    "REPO_URL",
    "RUN_COLUMNS",
    "colab_url",
    "show_hardware",
    "mount_drive",
    "html_table",
    "human_size",
    "human_age",
    "show_folder",
    "show_dataset_counts",
    "show_skipped",
    "plot_token_lengths",
    "require_dataset",
    "require_playable_run",
    "show_runs_to_play",
    "show_resumable",
    "LossPlot",
    "show_artifacts",
    "show_models_csv",
    "show_checkpoints",
    "show_loss_arrays",
    "flush_drive",
]
# The one place that spells the repository; the notebooks' badges and install cells use the same string.
REPO_URL = "https://github.com/midikit/midikit"


def colab_url(notebook: str) -> str:
    """Where a notebook of this repository opens in Colab (the badge's link)."""
    return (REPO_URL.replace("https://github.com/", "https://colab.research.google.com/github/")
            + f"/blob/main/notebooks/{notebook}")


def show_hardware() -> None:
    """Print the accelerator this runtime has and the preset midikit picks for it."""
    import torch

    preset = presets.preset_for_hardware()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        precision = "bf16" if torch.cuda.is_bf16_supported() else "no bf16 (fp16 with a grad scaler)"
        print(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, {precision} → preset {preset}")
        return
    print(f"CPU → preset {preset}")
    if storage.in_colab():
        print("No GPU in this runtime: Runtime → Change runtime type → a GPU trains many times faster.")


def mount_drive() -> None:
    """Mount Google Drive in Colab (again, if its mount dropped); elsewhere say which local folder stands
    in for it. A plain folder where Drive should be mounted is refused with its fix (StorageError)."""
    from .. import preferences

    mounted = storage.mount_drive()
    where = (f"Google Drive mounted at {mounted}" if mounted
             else "Not in Colab: no Drive to mount, files stay on this machine")
    root, origin = preferences.default_root_and_origin()
    print(f"{where}. Default checkpoint folder: {root} ({origin})")


def flush_drive() -> None:
    """Upload what Drive still holds back (Colab uploads in the background) and say what was done."""
    print(storage.flush_drive())


def html_table(rows: list[dict], columns: list[str] | None = None) -> HTML:
    """A plain HTML table of dicts (no pandas in Colab's install path). JupyterLab right-aligns every
    cell: columns of numbers stay so, columns of text (paths, verdicts) read from the left."""
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    left = {c for c in columns if any(isinstance(row.get(c), str) and re.search(r"[A-Za-z/]", row[c]) for row in rows)}
    style = {c: ' style="text-align:left"' if c in left else "" for c in columns}
    head = "".join(f"<th{style[c]}>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td{style[c]}>{html.escape(_cell(row.get(c, '')))}</td>" for c in columns)
                   + "</tr>" for row in rows)
    return HTML(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _figure(width=8, height=3.5):
    from matplotlib.figure import Figure  # no pyplot: nothing global, works in any backend

    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot()


def _png(fig) -> Image:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return Image(data=buffer.getvalue())


def human_size(size_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size_bytes < 1024 or unit == "GiB":
            return f"{size_bytes:.0f} {unit}" if unit == "B" else f"{size_bytes:.1f} {unit}"
        size_bytes /= 1024


def human_age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.1f} {unit} ago"
    return f"{seconds:.0f} s ago"


def show_folder(root: Path) -> None:
    """What a checkpoint folder holds: per dataset its preprocessed data, its runs (models.csv)
    and its training-state checkpoints."""
    datasets = storage.list_datasets(root)
    if not datasets:
        print(f"{root} holds no dataset yet: notebook 02 preprocesses one.")
        return
    for name in datasets:
        paths = storage.DatasetPaths(root, name)
        display(HTML(f"<h4>{html.escape(name)}</h4>"))
        try:
            show_dataset_counts(paths)
        except DatasetError as exc:
            print(f"not preprocessed: {exc}")
        show_models_csv(paths)
        records = runs.list_runs(paths)
        if records:
            display(html_table([_checkpoint_run_row(record, checkpoints.inspect_run(record.path))
                                for record in records]))


def show_dataset_counts(paths: storage.DatasetPaths) -> None:
    """Files, sequences and tokens per split, and the vocabulary: deterministic for fixed inputs."""
    from ..data import load_dataset

    config = load_dataset(paths).config
    splits = config["splits"]
    print(f"{paths.dataset}: {config['tokenizer']['name']} tokens, vocabulary {config['vocab_size']}")
    print(f"files: {config['files_found']} found, {config['files_processed']} used, "
          f"{len(config['files_skipped'])} skipped")
    for split in ("train", "val"):
        counts = splits[split]
        print(f"{split}: {counts['files']} files → {counts['sequences']:,} sequences, {counts['tokens']:,} tokens")


def show_skipped(paths: storage.DatasetPaths) -> None:
    from ..data import load_dataset

    skipped = load_dataset(paths).config["files_skipped"]
    if not skipped:
        print("No file was skipped.")
        return
    print(f"{len(skipped)} files skipped:")
    display(html_table(skipped))


def plot_token_lengths(paths: storage.DatasetPaths) -> None:
    """Histogram of tokens per sequence, train and validation."""
    from ..data import load_dataset

    dataset = load_dataset(paths)
    fig, ax = _figure()
    for split, offsets in (("train", dataset.train_offsets), ("validation", dataset.val_offsets)):
        ax.hist(np.diff(offsets), bins=40, alpha=0.6, label=split)
    ax.set_xlabel("tokens per sequence")
    ax.set_ylabel("sequences")
    ax.set_title(f"{paths.dataset}: sequence lengths")
    ax.legend()
    display(_png(fig))


def require_dataset(paths: storage.DatasetPaths):
    """The preprocessed dataset at `paths`; when it is missing, say which notebook makes it (never
    preprocess behind the user's back)."""
    from ..data import load_dataset

    try:
        return load_dataset(paths)
    except DatasetError as exc:
        raise DatasetError(f"{exc} In the notebooks: run 02_preprocess first "
                           "(same checkpoint folder and dataset name).") from None


def require_playable_run(paths: storage.DatasetPaths) -> list:
    """The dataset's runs with best weights (finished, stopped or paused), newest first, each said with how
    far it got; when there is none, say what to run first."""
    playable = runs.playable_runs(paths)
    if not playable:
        raise StorageError(f"No run with best weights in {paths.checkpoints}: train one first (notebooks 03-05, or "
                           f"`python -m midikit train --dataset {paths.dataset}`), then run this notebook again.")
    for record in playable:
        print(f"{record.run_id}: {runs.describe_progress(record)}")
    return playable


def show_runs_to_play(paths: storage.DatasetPaths) -> None:
    """What notebook 07 can play: the dataset's runs with best weights, and the starter model."""
    playable = runs.playable_runs(paths)
    for record in playable:
        print(f"{record.run_id}: {runs.describe_progress(record)}")
    if not playable:
        print(f"No run with best weights in {paths.checkpoints} yet (notebooks 03-05 train one): the form below plays "
              "the starter model shipped with midikit meanwhile.")


def show_resumable(train_config, form=None) -> None:
    """Say whether training will resume an unfinished run, and from where (the registry's run.json:
    no checkpoint is read). With `form`, its own look-up is reused."""
    if form is not None:
        info = form.run if train_config.resume == "auto" else None
    else:
        from ..train import describe_resumable

        info = describe_resumable(train_config)
    if info is not None and info["owner_state"] == "live" and not train_config.takeover:
        print(f"{info['run_id']} is still being trained by another runtime ({info['owner']}): training will refuse to "
              "start. Stop that runtime, wait for its heartbeat to go stale, or choose 'take over' in the form.")
    elif info is not None:
        verb = "Taking over" if train_config.takeover else "Extending" if info["done"] else "Resuming"
        horizon = " to the form's new horizon" if train_config.extend else ""
        print(f"{verb} {info['run_id']}{horizon}: {info['progress']} (epoch {info['epoch']}, best validation loss "
              f"{_cell(info['best_val_loss'])}). Its model settings come from the run; choose resume 'never' in the "
              "form to start a new run with the form's settings.")
    elif train_config.resume == "never":
        print(f"resume is 'never': starting a new {train_config.model_type} run.")
    else:
        print(f"No unfinished {train_config.model_type} run to resume: starting a new one.")


class LossPlot:
    """An on_eval callback that redraws the training and validation loss in one output."""

    def __init__(self, title: str):
        self.title = title
        self.fig, self.ax = _figure()
        self.handle = display(HTML("<i>The loss plot appears after the first evaluation.</i>"), display_id=True)

    def __call__(self, history: dict) -> None:
        artifacts.plot_losses(history, ax=self.ax, title=self.title)
        self.handle.update(_png(self.fig))


_NEXT = {
    "time_budget": "The session's time budget (max_minutes) ended it: run the training cell again to continue it for "
                   "another budget (set max_minutes to 0 for no limit).",
    "interrupted": "Stopped: run the training cell again to continue it where it stopped.",
    "max_steps": "To go bigger: tick extend and raise max_steps (or set it to 0 to train for the epochs), then run the "
                 "training cell again; this run continues with a new horizon. Notebook 07 plays it now.",
    "finished": "Finished all its epochs. Notebook 07 plays it; extend (with more epochs) trains it further.",
    "early_stopped": "Stopped early: validation loss no longer improved. Notebook 07 plays its best weights.",
}


def show_artifacts(result) -> None:
    print(f"{result.run_id}: {result.status} after {result.steps} steps ({result.epochs} epochs), "
          f"best validation loss {_cell(result.best_val_loss)}")
    if result.status in _NEXT:
        print(_NEXT[result.status])
    display(html_table([{"artifact": name, "path": str(path)} for name, path in result.artifacts.items()]))


RUN_COLUMNS = ["run_id", "model_type", "status", "preset", "parameters", "steps", "best_val_loss", "final_train_loss",
               "elapsed_seconds", "updated"]


def show_models_csv(paths: storage.DatasetPaths) -> None:
    rows = models_csv.read_models_csv(paths)
    if not rows:
        print(f"No run in {paths.models_csv} yet.")
        return
    display(html_table(rows, RUN_COLUMNS))


def _checkpoint_run_row(record: runs.RunRecord, files: list[dict]) -> dict:
    valid = [f["step"] for f in files if f["status"] == "valid" and f["step"] is not None]
    return {
        "run_id": record.run_id, "model_type": record.model_type, "status": record.status,
        "writer": _owner_text(record), "newest_valid_step": max(valid, default=None), "files": len(files),
        "size": human_size(sum(f["size_bytes"] for f in files)),
    }


def _owner_text(record: runs.RunRecord) -> str:
    state = record.owner_state()
    return {"live": f"training now ({record.owner.host})", "stale": "no heartbeat (disconnected?)",
            "dead": "stopped (process gone)", "released": "-", "none": "-"}.get(state, state)


def show_checkpoints(paths: storage.DatasetPaths) -> None:
    """Every run's training-state checkpoints with size, age and integrity (checksums verified)."""
    records = runs.list_runs(paths)
    if not records:
        print(f"No training-state checkpoint in {paths.checkpoints} yet.")
    for record in records:
        files = checkpoints.inspect_run(record.path)
        valid = [f["step"] for f in files if f["status"] == "valid" and f["step"] is not None]
        display(HTML(f"<b>{html.escape(record.run_id)}</b> · {html.escape(record.status)} · "
                     f"{html.escape(_owner_text(record))} · newest valid step {max(valid, default=None)}"))
        display(html_table([
            {"file": f["name"], "step": f["step"], "size": human_size(f["size_bytes"]), "age": human_age(f["age_s"]),
             "status": f["status"], "detail": f["detail"]}
            for f in files
        ]))


def show_loss_arrays(paths: storage.DatasetPaths, run_id: str) -> None:
    """What the run's saved loss arrays hold: a run stopped early may have none yet."""
    train_losses = np.load(paths.train_losses(run_id), allow_pickle=False)
    val_losses = np.load(paths.val_losses(run_id), allow_pickle=False)
    last = f"last {train_losses[-1]:.3f}" if len(train_losses) else "none yet"
    best = f"best {val_losses.min():.3f}" if len(val_losses) else "no validation yet"
    print(f"{len(train_losses)} training losses, {last}; {len(val_losses)} validation losses, {best}")
