"""The notebooks' forms: ipywidgets that build midikit's config objects.

A form never does work behind a button (a callback would not run under "Run all" or nbval): the
next cell reads `form.value`, which builds the config object from the fields' current values and
raises the same ConfigError/StorageError the package raises. Every change rebuilds it and shows
that error, or a one-line summary, under the fields. Building a value is pure: it reads (the
registry's run.json, a dataset's config.json) but never creates folders or loads checkpoints.

Each field's widget, label, tooltip and valid values come from the config classes' field
declarations (`midikit.configs`); a form only chooses which fields it shows.
"""

from __future__ import annotations

import html
from dataclasses import fields
from pathlib import Path

import ipywidgets as W
from IPython.display import display

from .. import presets, storage
from ..configs import GenerateConfig, ModelConfig, PreprocessConfig, SampleConfig, TrainConfig, model_fields
from ..errors import ConfigError, DatasetError, StorageError
from ..settings import value_type


__all__ = [
    "LOCAL_PREPROCESS_LIMIT",
    "CPU_MAX_STEPS",
    "CPU_EVAL_EVERY",
    "CPU_EVAL_WINDOWS",
    "CPU_NUM_TOKENS",
    "SOURCES",
    "_STYLE",
    "default_source",
    "default_dataset",
    "Field",
    "Choice",
    "Form",
    "FolderForm",
    "DatasetForm",
    "PreprocessForm",
    "TrainForm",
    "GenerateForm",
    "RunForm",
    "run_label",
]
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
_STYLE = {"description_width": "190px"}


def _layout():
    return W.Layout(width="520px")  # one per widget: hiding one field must not hide the others


def default_source() -> str:
    """Nottingham is a download; outside Colab (CI, offline machines) use the bundled corpus."""
    return "nottingham" if storage.in_colab() else "corpus"


def default_dataset(root: Path | None = None) -> str:
    """The dataset the notebooks work on unless told otherwise: the default source's dataset if it
    exists under `root` (or nothing exists yet), else the first dataset found there."""
    preferred = SOURCES[default_source()][1]
    existing = storage.list_datasets(root) if root is not None and Path(root).is_dir() else []
    return preferred if preferred in existing or not existing else existing[0]


# --------------------------------------------------------------------------- fields from declarations


class Field:
    """One config field's widget: made from its declaration; `read()` gives the value for the config
    (0 in a number field whose None means something, such as max_steps' "no limit", reads as None)."""

    def __init__(self, cls, name: str, value=None, label: str | None = None, options=None, zero_means_none: bool = True):
        declared = {f.name: f for f in fields(cls)}[name]
        self.name, self.meta = name, declared.metadata
        self.base, optional = value_type(cls, name)
        self.zero_means_none = optional and zero_means_none
        value = declared.default if value is None and declared.default is not None else value
        text = label or self.meta.get("label") or name
        if self.zero_means_none and self.base in (int, float) and self.meta.get("none"):
            text += f" (0 = {self.meta['none']})"
        self.widget = self._make(text, value, options)
        # ipywidgets 8 calls it `tooltip`; 7.7 (Colab's) `description_tooltip`.
        attribute = "tooltip" if int(W.__version__.split(".")[0]) >= 8 else "description_tooltip"
        setattr(self.widget, attribute, self.meta.get("help", ""))

    def _make(self, text, value, options):
        common = dict(description=text, style=_STYLE, layout=_layout())
        choices = options or self.meta.get("choices")
        if choices:
            return W.Dropdown(options=list(choices), value=value, **common)
        if self.base is bool:
            return W.Checkbox(value=bool(value), indent=False, **common)
        if self.base is int:
            return W.IntText(value=value or 0, **common)
        if self.base is float:
            return W.FloatText(value=value or 0.0, **common)
        return W.Text(value="" if value is None else str(value), continuous_update=False, **common)

    # The widget's value and look, through the field (tests and notebooks set them directly).
    value = property(lambda self: self.widget.value, lambda self, value: setattr(self.widget, "value", value))
    disabled = property(lambda self: self.widget.disabled, lambda self, flag: setattr(self.widget, "disabled", flag))
    layout = property(lambda self: self.widget.layout)

    def read(self):
        value = self.widget.value
        if self.zero_means_none and (value == "" or (self.base in (int, float) and value == 0)):
            return None
        return value

    def show(self, value) -> None:
        self.widget.value = (0 if self.base in (int, float) else "") if value is None else value


class Choice(Field):
    """A dropdown that is not a config field (which run, which file)."""

    def __init__(self, label: str, options, value):
        self.name, self.meta, self.base, self.zero_means_none = label, {}, str, False
        self.widget = W.Dropdown(options=options, value=value, description=label, style=_STYLE, layout=_layout())


class Form:
    """Fields plus one message line. Subclasses turn the values into a config object in `build`
    (raising ConfigError/StorageError for bad values) and describe it in `summary`."""

    title = ""

    def __init__(self, form_fields: dict[str, Field]):
        self.fields = form_fields
        self._holding = False
        self.message = W.HTML()
        self.box = W.VBox([W.HTML(f"<b>{html.escape(self.title)}</b>"), *(f.widget for f in form_fields.values()), self.message])
        for form_field in form_fields.values():
            form_field.widget.observe(self._refresh, names="value")
        self._refresh()

    @property
    def value(self):
        """The config object the current field values describe; raises what the package raises."""
        return self.build({name: form_field.read() for name, form_field in self.fields.items()})

    def build(self, values: dict):
        raise NotImplementedError

    def summary(self, value) -> str:
        return "ok"

    def set_values(self, **values) -> None:
        """Set several fields at once, checking the result once rather than after each."""
        held, self._holding = self._holding, True  # observers may set values too: only the outermost call checks
        try:
            for name, value in values.items():
                self.fields[name].show(value)
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


# --------------------------------------------------------------------------- the forms


class FolderForm(Form):
    """The checkpoint folder (on Drive in Colab). `.value` -> the checked, absolute folder (not created)."""

    title = "Checkpoint folder"

    def __init__(self, checkpoint_dir: str | Path | None = None, extra: dict | None = None):
        root = Field(TrainConfig, "checkpoint_dir", str(checkpoint_dir or storage.default_root()), label="checkpoint folder")
        super().__init__({"checkpoint_dir": root, **(extra or {})})

    def build(self, values):
        return storage.resolve_root(values["checkpoint_dir"], create=False)

    def summary(self, root):
        if not root.exists():
            return f"{root} · new folder (created when something is saved there)"
        datasets = storage.list_datasets(root)
        return f"{root} · datasets: {', '.join(datasets) if datasets else 'none yet'}"


class DatasetForm(FolderForm):
    """Checkpoint folder + dataset name. `.value` -> the dataset's DatasetPaths."""

    title = "Checkpoint folder and dataset"

    def __init__(self, checkpoint_dir: str | Path | None = None, dataset: str | None = None):
        root = Path(checkpoint_dir or storage.default_root())
        existing = storage.list_datasets(root) if root.is_dir() else []
        dataset_field = Field(TrainConfig, "dataset", dataset or default_dataset(root))
        dataset_field.widget = W.Combobox(value=dataset_field.widget.value, options=existing, description="dataset",
                                          ensure_option=False, continuous_update=False, style=_STYLE, layout=_layout())
        self.dataset_field = dataset_field.widget
        super().__init__(checkpoint_dir, {"dataset": dataset_field})

    def build(self, values):
        return storage.DatasetPaths(super().build(values), values["dataset"])

    def summary(self, paths):
        from ..data import load_dataset

        self.dataset_field.options = storage.list_datasets(paths.root) if paths.root.is_dir() else []
        try:
            data = load_dataset(paths)
        except DatasetError:
            return f"{paths.base} · not preprocessed yet: run notebook 02 (or `python -m midikit preprocess`) first"
        return f"{paths.base} · vocabulary {data.vocab_size}, {len(data.train_offsets) - 1:,} training sequences"


class PreprocessForm(Form):
    """Source, dataset name, tokenizer and augmentation. `.value` -> a PreprocessConfig."""

    title = "Preprocessing"

    def __init__(self, checkpoint_dir: str | Path | None = None, dataset: str | None = None, source: str | None = None):
        source = source or default_source()
        local = not storage.in_colab()
        d = PreprocessConfig()  # the package's defaults, not a second copy of them
        self.source_field = Field(PreprocessConfig, "source", source, options=[(label, key) for key, (label, _) in SOURCES.items()])
        self.input_field = Field(PreprocessConfig, "input_dir", "" if local else "/content/drive/MyDrive/midi")
        self.dataset_field = Field(PreprocessConfig, "dataset", dataset or SOURCES[source][1])
        super().__init__({
            "source": self.source_field, "input_dir": self.input_field,
            "checkpoint_dir": Field(PreprocessConfig, "checkpoint_dir", str(checkpoint_dir or storage.default_root())),
            "dataset": self.dataset_field,
            "tokenizer": Field(PreprocessConfig, "tokenizer", d.tokenizer),
            "tracks": Field(PreprocessConfig, "tracks", d.tracks,
                            options=[("merged into one stream", "merged"), ("one sequence per track", "separate")]),
            "transpositions": Field(PreprocessConfig, "transpositions", ",".join(str(t) for t in d.transpositions)),
            "val_split": Field(PreprocessConfig, "val_split", d.val_split),
            "limit": Field(PreprocessConfig, "limit", LOCAL_PREPROCESS_LIMIT if local else 0),
            "bpe_vocab": Field(PreprocessConfig, "bpe_vocab", 0),
        })
        self.source_field.widget.observe(self._on_source, names="value")
        self._on_source({"old": None, "new": source})

    def _on_source(self, change):
        # The dataset name follows the source until the user types their own.
        old_default = SOURCES[change["old"]][1] if change["old"] else None
        if self.dataset_field.widget.value == old_default:
            self.dataset_field.widget.value = SOURCES[change["new"]][1]
        self.input_field.widget.layout.display = None if change["new"] == "folder" else "none"

    def build(self, values):
        folder = Path(values["input_dir"]).expanduser() if values["input_dir"] else None
        if values["source"] == "folder" and folder is not None and not folder.is_dir():  # preprocess() would fail later
            raise DatasetError(f"The input folder {folder} does not exist or is not a folder; enter the folder that holds "
                               "your .mid/.midi/.abc files (in Colab mount Drive first: /content/drive/MyDrive/...).")
        return PreprocessConfig(
            source=values["source"], input_dir=values["input_dir"] if values["source"] == "folder" else None,
            dataset=values["dataset"], checkpoint_dir=str(storage.resolve_root(values["checkpoint_dir"], create=False)),
            val_split=values["val_split"], transpositions=values["transpositions"], limit=values["limit"],
            tokenizer=values["tokenizer"], tracks=values["tracks"], bpe_vocab=values["bpe_vocab"],
        ).validate()

    def summary(self, config):
        limit = f"first {config.limit} files" if config.limit else "all files"
        return f"{config.source} → {config.dataset} · {config.tokenizer} · {len(config.transpositions)} transpositions · {limit}"


class TrainForm(Form):
    """Hyperparameters for one model type. A new run's model sizes come from a preset chosen for the
    hardware, its context length from the dataset (`preprocess --seq_length`); while an unfinished run
    is to be resumed the model fields show that run's own sizes, read-only, since a run keeps its
    model (on whatever GPU the runtime has now). What is resumable comes from the run registry
    (run.json), never from loading a checkpoint. `.value` -> (TrainConfig, ModelConfig)."""

    TRAIN_FIELDS = ("epochs", "batch_size", "lr", "max_steps", "eval_every", "eval_windows", "patience",
                    "checkpoint_every_minutes", "seed")

    def __init__(self, model_type: str, paths: storage.DatasetPaths, preset: str | None = None):
        from ..data import load_dataset
        from ..train import describe_resumable

        self.model_type, self.paths = model_type, paths
        self.dataset = load_dataset(paths)
        self.title = f"Train the {model_type} on {paths.dataset}"
        on_cpu = presets.preset_for_hardware() == "cpu"
        self.model_names = model_fields(model_type)
        self.resumable = describe_resumable(TrainConfig(dataset=paths.dataset, checkpoint_dir=str(paths.root), model_type=model_type))
        self.run_model = ModelConfig.from_dict(self.resumable["model_config"]) if self.resumable else None
        self.preset_field = Field(TrainConfig, "preset", preset or presets.preset_for_hardware(), options=[
            (f"{name}: {presets.get_preset(model_type, name).description}", name) for name in presets.PRESET_NAMES])
        cpu_defaults = dict(max_steps=CPU_MAX_STEPS, eval_every=CPU_EVAL_EVERY, eval_windows=CPU_EVAL_WINDOWS) if on_cpu else {}
        super().__init__({
            "preset": self.preset_field,
            **{name: Field(ModelConfig, name) for name in self.model_names},
            # batch_size and lr show the preset's (or the run's) values: 0 is not "the preset's" here.
            **{name: Field(TrainConfig, name, cpu_defaults.get(name), zero_means_none=name not in ("batch_size", "lr"))
               for name in self.TRAIN_FIELDS},
            "resume": Field(TrainConfig, "resume", "auto", options=self._resume_options()),
        })
        self.preset_field.widget.observe(self._fill_model_fields, names="value")
        self.fields["resume"].widget.observe(self._fill_model_fields, names="value")
        self._fill_model_fields()

    def _resume_options(self) -> list[tuple[str, str]]:
        run = self.resumable
        if run is None:
            return [("the unfinished run, if any", "auto"), ("never: start a new run", "never")]
        options = [(f"continue {run['run_id']} (step {run['step']})", "auto"), ("never: start a new run", "never")]
        if run["owner_state"] == "live":  # another runtime still trains it: continuing is refused, taking over is a choice
            options[0] = (f"continue {run['run_id']} once its other runtime stops", "auto")
            options.insert(1, (f"take over {run['run_id']} from {run['owner']}", "takeover"))
        return options

    @property
    def resuming(self) -> bool:
        return self.run_model is not None and self.fields["resume"].widget.value in ("auto", "takeover")

    def _fill_model_fields(self, change=None):
        if self.resuming:
            config, batch_size, lr = self.run_model, self.resumable["train_config"]["batch_size"], self.resumable["train_config"]["lr"]
        else:
            preset = presets.get_preset(self.model_type, self.preset_field.widget.value)
            config = preset.model_config(self.model_type, self.dataset.vocab_size, context_length=self.dataset.seq_length)
            batch_size, lr = preset.batch_size, preset.lr
        self.set_values(**{name: getattr(config, name) for name in self.model_names}, batch_size=batch_size, lr=lr)
        for name in ("preset", *self.model_names, "batch_size", "lr"):
            self.fields[name].widget.disabled = self.resuming  # a run keeps these: train() would refuse new values

    def build(self, values):
        from ..train import check_context

        if self.resuming:  # exactly the saved config, so train() finds nothing that conflicts with the run
            model_config = self.run_model
        else:
            sizes = {name: values[name] for name in self.model_names}
            model_config = ModelConfig(model_type=self.model_type, vocab_size=self.dataset.vocab_size, **sizes).validate()
        check_context(model_config, self.dataset)  # train() refuses a context longer than a split: say so here
        chosen = {name: values[name] for name in self.TRAIN_FIELDS}
        train_config = TrainConfig(
            dataset=self.paths.dataset, checkpoint_dir=str(self.paths.root), model_type=self.model_type,
            preset=values["preset"], resume="never" if values["resume"] == "never" else "auto",
            takeover=values["resume"] == "takeover", **chosen,
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
        from .. import runs

        finished = runs.finished_runs(paths)
        if not finished:
            raise StorageError(f"No finished run in {paths.checkpoints}: train one first (notebooks 03-05).")
        options = [(run_label(run), str(paths.best_weights(run.run_id))) for run in finished]
        on_cpu = presets.preset_for_hardware() == "cpu"
        super().__init__({
            "run": Field(GenerateConfig, "model", options[0][1], label="run", options=options),
            **{name: Field(SampleConfig, name) for name in ("strategy", "k", "p", "temperature")},
            "num_tokens": Field(SampleConfig, "num_tokens", CPU_NUM_TOKENS if on_cpu else None),
            **{name: Field(SampleConfig, name) for name in ("bars", "num_samples")},
            "seed": Field(SampleConfig, "seed", 0, label="seed (-1 = random)", zero_means_none=False),
        })

    def build(self, values):
        seed = values.pop("seed")
        run = values.pop("run")
        sample = SampleConfig(**values, seed=None if seed is None or seed < 0 else seed).validate()
        return Path(run), sample

    def summary(self, value):
        weights, sample = value
        length = f"{sample.bars} bars" if sample.bars else f"{sample.num_tokens} tokens"
        return f"{weights.stem} · {sample.strategy} · {length} × {sample.num_samples}"


class RunForm(Form):
    """One run of the dataset, newest first (from the run registry). `.value` -> its run id."""

    title = "Run"

    def __init__(self, paths: storage.DatasetPaths):
        from .. import runs

        self.paths = paths
        self.records = {record.run_id: record for record in runs.list_runs(paths) if record.status != "unknown"}
        if not self.records:
            raise StorageError(f"No run in {paths.checkpoints}: train one first (notebooks 03-05).")
        first = next(iter(self.records))
        super().__init__({"run_id": Choice("run", list(self.records), first)})

    def build(self, values):
        return values["run_id"]

    def summary(self, run_id):
        record = self.records[run_id]
        loss = record.get("best_val_loss")
        return f"{record.status} after {record.get('step')} steps · best val loss {'-' if loss is None else f'{loss:.4f}'}"


def run_label(record) -> str:
    loss = record.get("best_val_loss")
    return f"{record.run_id} · best val loss {loss:.3f}" if isinstance(loss, (int, float)) else record.run_id
