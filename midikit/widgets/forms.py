"""The notebooks' forms for where things are and how to preprocess: the checkpoint folder, a
dataset, preprocessing settings and one run of a dataset. (Training: `train_form`; generation:
`generate_form`; what forms are made of: `fields`.)
"""

from __future__ import annotations

from pathlib import Path

import ipywidgets as W

from .. import preferences, storage
from ..configs import PreprocessConfig, TrainConfig
from ..errors import DatasetError, StorageError
from .fields import _STYLE, Choice, Field, Form, _layout

__all__ = [
    "LOCAL_PREPROCESS_LIMIT",
    "SOURCES",
    "BEST_RECIPE",
    "default_source",
    "default_dataset",
    "FolderForm",
    "DatasetForm",
    "PreprocessForm",
    "RunForm",
    "run_label",
]
# What a notebook does by default outside Colab (CI, a laptop): the offline corpus, cut short, so that
# every notebook runs top to bottom in seconds.
LOCAL_PREPROCESS_LIMIT = 120
# The preprocessing of the best model measured on the CPU (bench/results/quality_cpu.md): BPE merges
# up to 1,000 tokens and a context of 256 of them (with the Transformer's rotary positions, the default).
BEST_RECIPE = dict(bpe_vocab=1000, seq_length=256)

SOURCES = {  # source -> (label, default dataset name)
    "nottingham": ("Nottingham (download)", "nottingham"),
    "corpus": ("offline folk corpus (music21)", "folk_corpus"),
    "folder": ("a folder of MIDI/ABC files", "my_midi"),
}


def _on_drive(folder: Path) -> bool:
    return Path(folder).absolute().is_relative_to(storage.DRIVE_MOUNT_POINT)


def default_source() -> str:
    """Nottingham is a download; outside Colab (CI, offline machines) use the bundled corpus."""
    return "nottingham" if storage.in_colab() else "corpus"


def default_dataset(root: Path | None = None) -> str:
    """The dataset the notebooks work on unless told otherwise: the default source's dataset if it
    exists under `root` (or nothing exists yet), else the first dataset found there."""
    preferred = SOURCES[default_source()][1]
    existing = storage.list_datasets(root) if root is not None and Path(root).is_dir() else []
    return preferred if preferred in existing or not existing else existing[0]


# --------------------------------------------------------------------------- the forms


class FolderForm(Form):
    """The checkpoint folder (on Drive in Colab). `.value` -> the checked, absolute folder (not created)."""

    title = "Checkpoint folder"

    def __init__(self, checkpoint_dir: str | Path | None = None, extra: dict | None = None):
        default, self.origin = preferences.default_root_and_origin()
        self.default = str(Path(checkpoint_dir or default).expanduser())
        if checkpoint_dir:
            self.origin = "given to this form"
        root = Field(TrainConfig, "checkpoint_dir", self.default, label="checkpoint folder")
        super().__init__({"checkpoint_dir": root, **(extra or {})})

    def build(self, values):
        return storage.resolve_root(values["checkpoint_dir"], create=False)

    def summary(self, root):
        typed = self.fields["checkpoint_dir"].value
        origin = f"default: {self.origin}" if typed == self.default else "typed here"
        # Legal, and lost with the runtime: a Colab folder outside Drive is said plainly, never silently used.
        local = "" if not storage.in_colab() or _on_drive(root) else (
            f" · on this runtime's own disk, lost when it ends: choose a folder under "
            f"{storage.DRIVE_MOUNT_POINT}/MyDrive")
        if not root.exists():
            return f"{root} ({origin}) · new folder (created when something is saved there){local}"
        datasets = storage.list_datasets(root)
        return f"{root} ({origin}) · datasets: {', '.join(datasets) if datasets else 'none yet'}{local}"

    def remember(self) -> Path:
        """Make this folder every later notebook's (and command's) default, and say so; returns it."""
        root = self.value
        kept_in = preferences.remember_root(root)
        print(f"Later notebooks, new runtimes and `python -m midikit` default to {root} (kept in {kept_in}); "
              f"a folder typed into a form, --checkpoint_dir or ${storage.ROOT_ENV_VAR} still wins.")
        return root


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
        self.source_field = Field(PreprocessConfig, "source", source,
                                  options=[(label, key) for key, (label, _) in SOURCES.items()])
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
            "seq_length": Field(PreprocessConfig, "seq_length", BEST_RECIPE["seq_length"]),
            "bpe_vocab": Field(PreprocessConfig, "bpe_vocab", BEST_RECIPE["bpe_vocab"]),
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
            raise DatasetError(f"The input folder {folder} does not exist or is not a folder; enter the folder that "
                               "holds your .mid/.midi/.abc files (in Colab mount Drive first: "
                               "/content/drive/MyDrive/...).")
        return PreprocessConfig(
            source=values["source"], input_dir=values["input_dir"] if values["source"] == "folder" else None,
            dataset=values["dataset"], checkpoint_dir=str(storage.resolve_root(values["checkpoint_dir"], create=False)),
            val_split=values["val_split"], transpositions=values["transpositions"], limit=values["limit"],
            tokenizer=values["tokenizer"], tracks=values["tracks"], bpe_vocab=values["bpe_vocab"],
            seq_length=values["seq_length"],
        ).validate()

    def summary(self, config):
        limit = f"first {config.limit} files" if config.limit else "all files"
        return (f"{config.source} → {config.dataset} · {config.tokenizer} · "
                f"{len(config.transpositions)} transpositions · {limit}")


class RunForm(Form):
    """One run of the dataset that has best weights (finished, stopped or paused), newest first, from
    the run registry. `.value` -> its run id."""

    title = "Run"

    def __init__(self, paths: storage.DatasetPaths):
        from .. import runs

        self.paths = paths
        self.records = {record.run_id: record for record in runs.playable_runs(paths)}
        if not self.records:
            raise StorageError(f"No run with best weights in {paths.checkpoints}: train one first (notebooks 03-05); "
                               "a run has weights from its first checkpoint on.")
        options = [(run_label(record), run_id) for run_id, record in self.records.items()]
        super().__init__({"run_id": Choice("run", options, options[0][1])})

    def build(self, values):
        return values["run_id"]

    def summary(self, run_id):
        from ..runs import describe_progress

        record = self.records[run_id]
        loss = record.get("best_val_loss")
        return f"{describe_progress(record)} · best val loss {'-' if loss is None else f'{loss:.4f}'}"


def run_label(record) -> str:
    """A run as a dropdown shows it: its id, how far it got, its best validation loss."""
    from ..runs import describe_progress

    loss = record.get("best_val_loss")
    text = f"{record.run_id} · {describe_progress(record)}"
    return text + (f" · val {loss:.3f}" if isinstance(loss, (int, float)) else "")
