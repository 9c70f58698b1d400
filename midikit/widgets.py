"""The notebooks' faces: ipywidgets forms that build midikit's config objects, and the displays
that show what the package did.

A form never does work behind a button (a callback would not run under "Run all" or nbval): the
next cell reads `form.value`, which builds the config object from the fields' current values and
raises the same ConfigError/StorageError the package raises. Every change rebuilds it and shows
that error, or a one-line summary, under the fields.
"""

from __future__ import annotations

import html
import io
import os
from pathlib import Path

import ipywidgets as W
import numpy as np
import torch
from IPython.display import HTML, Audio, FileLink, Image, display

from . import artifacts, checkpoints, evaluate, generate, presets, storage
from .data import TOKENIZERS, DatasetError, PreprocessConfig, load_dataset, preprocess
from .models import ConfigError, ModelConfig
from .storage import StorageError
from .train import TrainConfig, check_context, describe_resumable, train

# The one place that spells the repository; the notebooks' badges and install cells use the same string.
REPO_URL = "https://github.com/midikit/midikit"

# What a notebook does by default outside Colab (CI, a laptop): the offline corpus, cut short, and a
# few training steps, so that every notebook runs top to bottom in seconds.
LOCAL_PREPROCESS_LIMIT = 120
CPU_MAX_STEPS = 40
CPU_EVAL_EVERY = 20
CPU_EVAL_WINDOWS = 64
CPU_NUM_TOKENS = 256

SOURCES = {  # source -> (label, default dataset name)
    "nottingham": ("Nottingham (download)", "nottingham"),
    "corpus": ("offline folk corpus (music21)", "folk_corpus"),
    "folder": ("a folder of MIDI/ABC files", "my_midi"),
}
RNN_FIELDS = ("embed_size", "hidden_size", "num_layers", "dropout", "context_length")
TRANSFORMER_FIELDS = ("d_model", "nhead", "num_layers", "dim_feedforward", "dropout", "context_length")

_STYLE = {"description_width": "190px"}


def colab_url(notebook: str) -> str:
    """Where a notebook of this repository opens in Colab (the badge's link)."""
    return REPO_URL.replace("https://github.com/", "https://colab.research.google.com/github/") + f"/blob/main/notebooks/{notebook}"


# --------------------------------------------------------------------------- environment


def show_hardware() -> None:
    """Print the accelerator this runtime has and the preset midikit picks for it."""
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
    """Mount Google Drive in Colab; elsewhere say which local folder stands in for it."""
    mounted = storage.mount_drive()
    where = f"Google Drive mounted at {mounted}" if mounted else "Not in Colab: no Drive to mount, files stay on this machine"
    print(f"{where}. Default checkpoint folder: {storage.default_root()}")


def default_source() -> str:
    """Nottingham is a download; outside Colab (CI, offline machines) use the bundled corpus."""
    return "nottingham" if storage.in_colab() else "corpus"


def default_dataset(root: Path | None = None) -> str:
    """The dataset the notebooks work on unless told otherwise: the default source's dataset if it
    exists under `root` (or nothing exists yet), else the first dataset found there."""
    preferred = SOURCES[default_source()][1]
    existing = storage.list_datasets(root) if root is not None and Path(root).is_dir() else []
    return preferred if preferred in existing or not existing else existing[0]


# --------------------------------------------------------------------------- forms


def _layout():
    return W.Layout(width="520px")  # one per widget: hiding one field must not hide the others


def _text(description, value, **kwargs):
    return W.Text(value=str(value), description=description, continuous_update=False, style=_STYLE, layout=_layout(), **kwargs)


def _int(description, value):
    return W.IntText(value=value, description=description, style=_STYLE, layout=_layout())


def _float(description, value):
    return W.FloatText(value=value, description=description, style=_STYLE, layout=_layout())


def _choice(description, options, value):
    return W.Dropdown(options=options, value=value, description=description, style=_STYLE, layout=_layout())


class Form:
    """Input widgets plus one message line. Subclasses turn the field values into a config object
    in `build` (raising ConfigError/StorageError for bad values) and describe it in `summary`."""

    title = ""

    def __init__(self, fields: dict[str, W.ValueWidget]):
        self.fields = fields
        self._holding = False
        self.message = W.HTML()
        self.box = W.VBox([W.HTML(f"<b>{self.title}</b>"), *fields.values(), self.message])
        for widget in fields.values():
            widget.observe(self._refresh, names="value")
        self._refresh()

    @property
    def value(self):
        """The config object the current field values describe; raises what the package raises."""
        return self.build({name: widget.value for name, widget in self.fields.items()})

    def build(self, values: dict):
        raise NotImplementedError

    def summary(self, value) -> str:
        return "ok"

    def set_values(self, **values) -> None:
        """Set several fields at once, checking the result once rather than after each."""
        held, self._holding = self._holding, True  # observers may set values too: only the outermost call checks
        try:
            for name, value in values.items():
                self.fields[name].value = value
        finally:
            self._holding = held
        self._refresh()

    def _refresh(self, change=None):
        if self._holding:
            return
        try:
            text, color = "✓ " + self.summary(self.value), "#1a7f37"
        except (ConfigError, StorageError) as exc:
            text, color = "⚠ " + str(exc), "#cf222e"
        self.message.value = f"<span style='color:{color}'>{html.escape(text)}</span>"

    def _ipython_display_(self):
        # Displaying the box itself works in ipywidgets 7 (Colab's) and 8 alike; only 8 has _repr_mimebundle_.
        display(self.box)


class FolderForm(Form):
    """The checkpoint folder (on Drive in Colab). `.value` -> the checked, absolute folder."""

    title = "Checkpoint folder"

    def __init__(self, checkpoint_dir: str | Path | None = None, extra: dict | None = None):
        fields = {"checkpoint_dir": _text("checkpoint folder", checkpoint_dir or storage.default_root())}
        super().__init__({**fields, **(extra or {})})

    def build(self, values):
        return storage.resolve_root(values["checkpoint_dir"])

    def summary(self, root):
        datasets = storage.list_datasets(root)
        return f"{root} · datasets: {', '.join(datasets) if datasets else 'none yet'}"


class DatasetForm(FolderForm):
    """Checkpoint folder + dataset name. `.value` -> the dataset's DatasetPaths."""

    title = "Checkpoint folder and dataset"

    def __init__(self, checkpoint_dir: str | Path | None = None, dataset: str | None = None):
        root = Path(checkpoint_dir or storage.default_root())
        existing = storage.list_datasets(root) if root.is_dir() else []
        self.dataset_field = W.Combobox(
            value=dataset or default_dataset(root), options=existing, description="dataset",
            ensure_option=False, continuous_update=False, style=_STYLE, layout=_layout(),
        )
        super().__init__(checkpoint_dir, {"dataset": self.dataset_field})

    def build(self, values):
        return storage.DatasetPaths(super().build(values), values["dataset"])

    def summary(self, paths):
        self.dataset_field.options = storage.list_datasets(paths.root)  # suggestions follow the folder
        try:
            data = load_dataset(paths)
        except DatasetError:
            return f"{paths.base} · not preprocessed yet (the next cell preprocesses it with the defaults)"
        return f"{paths.base} · vocabulary {data.vocab_size}, {len(data.train_offsets) - 1:,} training sequences"


class PreprocessForm(Form):
    """Source, dataset name, tokenizer and augmentation. `.value` -> a PreprocessConfig."""

    title = "Preprocessing"

    def __init__(self, checkpoint_dir: str | Path | None = None, dataset: str | None = None, source: str | None = None):
        source = source or default_source()
        local = not storage.in_colab()
        self.source_field = _choice("source", [(label, key) for key, (label, _) in SOURCES.items()], source)
        self.input_field = _text("folder of MIDI/ABC files", "" if local else "/content/drive/MyDrive/midi")
        self.dataset_field = _text("dataset name", dataset or SOURCES[source][1])
        d = PreprocessConfig()  # the package's defaults, not a second copy of them
        super().__init__({
            "source": self.source_field,
            "input_dir": self.input_field,
            "checkpoint_dir": _text("checkpoint folder", checkpoint_dir or storage.default_root()),
            "dataset": self.dataset_field,
            "tokenizer": _choice("tokenizer", TOKENIZERS, d.tokenizer),
            "tracks": _choice("tracks", [("merged into one stream", "merged"), ("one sequence per track", "separate")], d.tracks),
            "transpositions": _text("transpositions (semitones)", ",".join(str(t) for t in d.transpositions)),
            "val_split": _float("validation share", d.val_split),
            "limit": _int("limit (first N files, 0 = all)", LOCAL_PREPROCESS_LIMIT if local else 0),
        })
        self.source_field.observe(self._on_source, names="value")
        self._on_source({"old": None, "new": source})

    def _on_source(self, change):
        # The dataset name follows the source until the user types their own.
        old_default = SOURCES[change["old"]][1] if change["old"] else None
        if self.dataset_field.value == old_default:
            self.dataset_field.value = SOURCES[change["new"]][1]
        self.input_field.layout.display = None if change["new"] == "folder" else "none"

    def build(self, values):
        folder = Path(values["input_dir"]).expanduser() if values["input_dir"] else None
        if values["source"] == "folder" and folder is not None and not folder.is_dir():  # preprocess() would fail later
            raise DatasetError(f"The input folder {folder} does not exist or is not a folder; enter the folder that holds "
                               "your .mid/.midi/.abc files (in Colab mount Drive first: /content/drive/MyDrive/...).")
        return PreprocessConfig(
            source=values["source"],
            input_dir=(values["input_dir"] or None) if values["source"] == "folder" else None,
            dataset=values["dataset"],
            checkpoint_dir=str(storage.resolve_root(values["checkpoint_dir"])),
            val_split=values["val_split"],
            transpositions=values["transpositions"],  # parsed by PreprocessConfig
            limit=values["limit"] or None,
            tokenizer=values["tokenizer"],
            tracks=values["tracks"],
        ).validate()

    def summary(self, config):
        limit = f"first {config.limit} files" if config.limit else "all files"
        return f"{config.source} → {config.dataset} · {config.tokenizer} · {len(config.transpositions)} transpositions · {limit}"


class TrainForm(Form):
    """Hyperparameters for one model type. A new run's model sizes come from a preset chosen for the
    hardware, its context length from the dataset (`preprocess --seq_length`); while an unfinished
    run is to be resumed the model fields show that run's own sizes, read-only, since a run keeps
    its model (on whatever GPU the runtime has now). `.value` -> (TrainConfig, ModelConfig)."""

    def __init__(self, model_type: str, paths: storage.DatasetPaths, preset: str | None = None):
        self.model_type, self.paths = model_type, paths
        self.dataset = load_dataset(paths)
        self.vocab_size, self.seq_length = self.dataset.vocab_size, self.dataset.seq_length
        self.title = f"Train the {model_type} on {paths.dataset}"
        preset = preset or presets.preset_for_hardware()
        on_cpu = presets.preset_for_hardware() == "cpu"
        self.model_names = TRANSFORMER_FIELDS if model_type == "transformer" else RNN_FIELDS
        self.resumable = describe_resumable(TrainConfig(dataset=paths.dataset, checkpoint_dir=str(paths.root), model_type=model_type))
        self.run_model = ModelConfig.from_dict(self.resumable["model_config"]) if self.resumable else None
        self.run_train = self.resumable["train_config"] if self.resumable else None
        defaults = ModelConfig()  # replaced by the preset's or the run's values below
        self.preset_field = _choice("preset", [(f"{name}: {presets.get_preset(model_type, name).description}", name) for name in presets.PRESET_NAMES], preset)
        model_fields = {name: (_float if name == "dropout" else _int)(name, getattr(defaults, name)) for name in self.model_names}
        resume_label = f"continue {self.resumable['run_id']} (step {self.resumable['step']})" if self.resumable else "the unfinished run, if any"
        train_fields = {
            "epochs": _int("epochs", TrainConfig.epochs),
            "batch_size": _int("batch_size", 64),
            "lr": _float("lr", 1e-3),
            "max_steps": _int("max_steps (0 = no limit)", CPU_MAX_STEPS if on_cpu else 0),
            "eval_every": _int("eval_every (0 = once per epoch)", CPU_EVAL_EVERY if on_cpu else 0),
            "eval_windows": _int("validation windows", CPU_EVAL_WINDOWS if on_cpu else TrainConfig.eval_windows),
            "patience": _int("patience (evaluations)", TrainConfig.patience),
            "checkpoint_every_minutes": _float("checkpoint every (minutes)", TrainConfig.checkpoint_every_minutes),
            "resume": _choice("resume", [(resume_label, "auto"), ("never: start a new run", "never")], "auto"),
            "seed": _int("seed", TrainConfig.seed),
        }
        super().__init__({"preset": self.preset_field, **model_fields, **train_fields})
        self.preset_field.observe(self._fill_model_fields, names="value")
        self.fields["resume"].observe(self._fill_model_fields, names="value")
        self._fill_model_fields()

    @property
    def resuming(self) -> bool:
        return self.run_model is not None and self.fields["resume"].value == "auto"

    def _fill_model_fields(self, change=None):
        if self.resuming:
            config, batch_size, lr = self.run_model, self.run_train["batch_size"], self.run_train["lr"]
        else:
            preset = presets.get_preset(self.model_type, self.preset_field.value)
            config = preset.model_config(self.model_type, self.vocab_size, context_length=self.seq_length)
            batch_size, lr = preset.batch_size, preset.lr
        self.set_values(**{name: getattr(config, name) for name in self.model_names}, batch_size=batch_size, lr=lr)
        for name in ("preset", *self.model_names, "batch_size", "lr"):
            self.fields[name].disabled = self.resuming  # a run keeps these: train() would ignore new values

    def build(self, values):
        if self.resuming:  # exactly the saved config, so train() finds nothing that conflicts with the run
            model_config = self.run_model
        else:
            sizes = {name: values[name] for name in self.model_names}
            model_config = ModelConfig(model_type=self.model_type, vocab_size=self.vocab_size, **sizes).validate()
        check_context(model_config, self.dataset)  # train() refuses a context longer than a split: say so here
        train_config = TrainConfig(
            dataset=self.paths.dataset,
            checkpoint_dir=str(self.paths.root),
            model_type=self.model_type,
            preset=values["preset"],
            epochs=values["epochs"],
            batch_size=values["batch_size"],
            lr=values["lr"],
            max_steps=values["max_steps"] or None,
            eval_every=values["eval_every"] or None,
            eval_windows=values["eval_windows"],
            patience=values["patience"],
            checkpoint_every_minutes=values["checkpoint_every_minutes"],
            resume=values["resume"],
            seed=values["seed"],
        ).validate()
        return train_config, model_config

    def summary(self, configs):
        train_config, model_config = configs
        length = f"{train_config.max_steps} steps" if train_config.max_steps else f"up to {train_config.epochs} epochs"
        origin = f"continues {self.resumable['run_id']} with its own model" if self.resuming else "new run"
        return (f"{origin}: {model_config.model_type} · {model_config.num_layers} layers · context {model_config.context_length} · "
                f"batch {train_config.batch_size} · lr {train_config.lr:g} · {length}")


class GenerateForm(Form):
    """A finished run of the dataset and the sampling settings. `.value` -> (weights path, SampleConfig)."""

    title = "Generate"

    def __init__(self, paths: storage.DatasetPaths):
        runs = generate.list_finished_runs(paths)
        if not runs:
            raise StorageError(f"No finished run in {paths.models}: train one first (notebooks 03-05).")
        options = [(_run_label(run), str(run["weights"])) for run in runs]
        super().__init__({
            "run": _choice("run", options, options[0][1]),
            "strategy": _choice("strategy", generate.STRATEGIES, "top_p"),
            "k": _int("k (top_k)", generate.SampleConfig.k),
            "p": _float("p (top_p)", generate.SampleConfig.p),
            "temperature": _float("temperature", generate.SampleConfig.temperature),
            "num_tokens": _int("tokens to generate", CPU_NUM_TOKENS if presets.preset_for_hardware() == "cpu" else generate.SampleConfig.num_tokens),
            "bars": _int("bars (0 = use the token count)", 0),
            "num_samples": _int("variations", 1),
            "seed": _int("seed (-1 = random)", 0),
        })

    def build(self, values):
        sample = generate.SampleConfig(
            strategy=values["strategy"], k=values["k"], p=values["p"], temperature=values["temperature"],
            num_tokens=values["num_tokens"], bars=values["bars"] or None, num_samples=values["num_samples"],
            seed=None if values["seed"] < 0 else values["seed"],
        ).validate()
        return Path(values["run"]), sample

    def summary(self, value):
        weights, sample = value
        length = f"{sample.bars} bars" if sample.bars else f"{sample.num_tokens} tokens"
        return f"{weights.stem} · {sample.strategy} · {length} × {sample.num_samples}"


class RunForm(Form):
    """One run of the dataset, newest first (from models.csv). `.value` -> its run id."""

    title = "Run"

    def __init__(self, paths: storage.DatasetPaths):
        self.paths = paths
        rows = sorted(artifacts.read_models_csv(paths), key=lambda row: storage.parse_run_id(row["run_id"])[1], reverse=True)
        if not rows:
            raise StorageError(f"No run in {paths.models_csv}: train one first (notebooks 03-05).")
        self.rows = {row["run_id"]: row for row in rows}
        super().__init__({"run_id": _choice("run", list(self.rows), rows[0]["run_id"])})

    def build(self, values):
        return values["run_id"]

    def summary(self, run_id):
        row = self.rows[run_id]
        return f"{row['status']} after {row['steps']} steps · best val loss {row['best_val_loss'] or '-'}"


def _run_label(run: dict) -> str:
    loss = run.get("metrics", {}).get("best_val_loss")
    return f"{run['run_id']} · best val loss {loss:.3f}" if isinstance(loss, (int, float)) else run["run_id"]


# --------------------------------------------------------------------------- displays


def html_table(rows: list[dict], columns: list[str] | None = None) -> HTML:
    """A plain HTML table of dicts (no pandas in Colab's install path)."""
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c, '')))}</td>" for c in columns) + "</tr>" for row in rows)
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
        runs = checkpoints.list_runs(paths.checkpoints) if paths.checkpoints.is_dir() else []
        if runs:
            display(html_table([_checkpoint_run_row(run) for run in runs]))


def show_dataset_counts(paths: storage.DatasetPaths) -> None:
    """Files, sequences and tokens per split, and the vocabulary: deterministic for fixed inputs."""
    config = load_dataset(paths).config
    splits = config["splits"]
    print(f"{paths.dataset}: {config['tokenizer']['name']} tokens, vocabulary {config['vocab_size']}")
    print(f"files: {config['files_found']} found, {config['files_processed']} used, {len(config['files_skipped'])} skipped")
    for split in ("train", "val"):
        counts = splits[split]
        print(f"{split}: {counts['files']} files → {counts['sequences']:,} sequences, {counts['tokens']:,} tokens")


def show_skipped(paths: storage.DatasetPaths) -> None:
    skipped = load_dataset(paths).config["files_skipped"]
    if not skipped:
        print("No file was skipped.")
        return
    print(f"{len(skipped)} files skipped:")
    display(html_table(skipped))


def plot_token_lengths(paths: storage.DatasetPaths) -> None:
    """Histogram of tokens per sequence, train and validation."""
    dataset = load_dataset(paths)
    fig, ax = _figure()
    for split, offsets in (("train", dataset.train_offsets), ("validation", dataset.val_offsets)):
        ax.hist(np.diff(offsets), bins=40, alpha=0.6, label=split)
    ax.set_xlabel("tokens per sequence")
    ax.set_ylabel("sequences")
    ax.set_title(f"{paths.dataset}: sequence lengths")
    ax.legend()
    display(_png(fig))


def ensure_dataset(paths: storage.DatasetPaths):
    """The dataset at `paths`; when it is not there yet, preprocess it with notebook 02's defaults."""
    try:
        return load_dataset(paths)
    except DatasetError:
        print(f"{paths.dataset} is not preprocessed yet: preprocessing it with notebook 02's defaults.")
    preprocess(PreprocessForm(paths.root, dataset=paths.dataset).value)
    return load_dataset(paths)


def ensure_finished_run(paths: storage.DatasetPaths) -> None:
    """Make sure the dataset has a finished run to look at: train a short CPU-sized LSTM if not."""
    if generate.list_finished_runs(paths):
        return
    print(f"No finished run in {paths.models}: training a short cpu-preset LSTM ({CPU_MAX_STEPS} steps) "
          "so this notebook has one to use. Notebooks 03-05 train real ones.")
    ensure_dataset(paths)
    form = TrainForm("lstm", paths, preset="cpu")
    form.set_values(resume="never", max_steps=CPU_MAX_STEPS, eval_every=CPU_EVAL_EVERY, eval_windows=CPU_EVAL_WINDOWS)
    train_config, model_config = form.value
    train(train_config, model_config)


def show_resumable(train_config, form: "TrainForm | None" = None) -> None:
    """Say whether training will resume an unfinished run, and from where (from `form`'s look-up
    when given: each look-up reads the whole checkpoint)."""
    if form is not None:
        info = form.resumable if train_config.resume == "auto" else None
    else:
        info = describe_resumable(train_config)
    if info is not None:
        print(f"Resuming {info['run_id']} at step {info['step']} (epoch {info['epoch']}, "
              f"best validation loss {_cell(info['best_val_loss'])}). Its model settings come from the checkpoint; "
              "choose resume 'never' in the form to start a new run with the form's settings.")
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


def train_with_live_plot(train_config, model_config):
    """Train (or resume) with a live loss plot; returns the TrainResult."""
    return train(train_config, model_config, on_eval=LossPlot(f"{train_config.model_type} on {train_config.dataset}"))


def show_artifacts(result) -> None:
    print(f"{result.run_id}: {result.status} after {result.steps} steps ({result.epochs} epochs), "
          f"best validation loss {_cell(result.best_val_loss)}")
    display(html_table([{"artifact": name, "path": str(path)} for name, path in result.artifacts.items()]))


RUN_COLUMNS = ["run_id", "model_type", "status", "preset", "parameters", "steps", "best_val_loss", "final_train_loss", "elapsed_seconds", "updated"]


def show_models_csv(paths: storage.DatasetPaths) -> None:
    rows = artifacts.read_models_csv(paths)
    if not rows:
        print(f"No run in {paths.models_csv} yet.")
        return
    display(html_table(rows, RUN_COLUMNS))


def _checkpoint_run_row(run: dict) -> dict:
    return {
        "run_id": run["run_id"], "model_type": run["model_type"], "status": run["status"],
        "newest_step": run["newest_step"], "files": len(run["files"]),
        "size": human_size(sum(f["size_bytes"] for f in run["files"])),
    }


def show_checkpoints(paths: storage.DatasetPaths) -> None:
    """Every run's training-state checkpoints with size, age and integrity (checksums verified)."""
    runs = checkpoints.list_runs(paths.checkpoints) if paths.checkpoints.is_dir() else []
    if not runs:
        print(f"No training-state checkpoint in {paths.checkpoints} yet.")
    for run in runs:
        display(HTML(f"<b>{html.escape(run['run_id'])}</b> · {html.escape(str(run['status']))} · newest valid step {run['newest_step']}"))
        display(html_table([
            {"file": f["name"], "step": f["step"], "size": human_size(f["size_bytes"]), "age": human_age(f["age_s"]),
             "status": f["status"], "detail": f["detail"]}
            for f in run["files"]
        ]))


def show_loss_arrays(paths: storage.DatasetPaths, run_id: str) -> None:
    """What the run's saved loss arrays hold: a run stopped early may have none yet."""
    train_losses = np.load(paths.train_losses(run_id), allow_pickle=False)
    val_losses = np.load(paths.val_losses(run_id), allow_pickle=False)
    last = f"last {train_losses[-1]:.3f}" if len(train_losses) else "none yet"
    best = f"best {val_losses.min():.3f}" if len(val_losses) else "no validation yet"
    print(f"{len(train_losses)} training losses, {last}; {len(val_losses)} validation losses, {best}")


def show_generation(result, paths: storage.DatasetPaths, max_dataset_files: int = 50) -> None:
    """Per generated piece a piano roll and an audio player; then its metrics next to the dataset's."""
    for path, score in zip(result.midi_paths, result.scores):
        if score.note_num() == 0:  # the model ended the piece at once: nothing to draw or play
            print(f"{path.name}: no notes (the model ended the piece at its first token)")
            continue
        fig, ax = _figure(10, 3)
        evaluate.plot_piano_roll(path, ax=ax, title=path.name)
        display(_png(fig))
        audio, rate = evaluate.render_audio(path)
        display(Audio(audio, rate=rate))
    generated = {f"sample {i}": evaluate.midi_metrics(path) for i, path in enumerate(result.midi_paths)}
    real = evaluate.dataset_metrics(paths, max_files=max_dataset_files)
    display(html_table([
        {"metric": name, **{label: values[name] for label, values in generated.items()},
         f"dataset ({real['count']} pieces)": f"{real['mean'][name]:.3g} ± {real['std'][name]:.2g}"}
        for name in evaluate.METRICS
    ]))


def download(path: Path) -> None:
    """Colab: send the file to the browser. Elsewhere: a link to it."""
    if storage.in_colab():
        from google.colab import files  # only importable inside Colab

        files.download(str(path))
    else:
        display(FileLink(os.path.relpath(path)))
