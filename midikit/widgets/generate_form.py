"""The generation form: which run plays (any run of the dataset with best weights, or the starter
model shipped with midikit), how to sample, and a primer of your own to continue.

A primer comes from a path (a MIDI file on Drive) or from the computer through the upload button
(an ipywidgets FileUpload: the same in Colab and JupyterLab); an upload is kept on the runtime's
own disk and its path fills the primer field, so both ways end in the same `seed_midi` that
`python -m midikit generate --seed_midi` takes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ipywidgets as W

from .. import runs, storage
from ..configs import GenerateConfig, SampleConfig, describe_sampling
from ..errors import ConfigError
from ..trained import STARTER
from .fields import LABEL_PX, Field, Form, tooltip
from .forms import run_label

__all__ = ["GenerateForm", "uploaded_files"]

STARTER_LABEL = "starter: the small model shipped with midikit (folk tunes)"


def uploaded_files(upload: W.FileUpload) -> list[tuple[str, bytes]]:
    """(name, content) of each file in an upload widget: ipywidgets 7 (Colab's) keeps a dict of
    {name: {"content": bytes, ...}}, ipywidgets 8 a tuple of {"name", "content": memoryview, ...}."""
    value = upload.value
    if isinstance(value, dict):
        return [(name, bytes(item["content"])) for name, item in value.items()]
    return [(item["name"], bytes(item["content"])) for item in value]


class GenerateForm(Form):
    """`.value` -> (GenerateConfig, SampleConfig)."""

    title = "Generate"
    SAMPLING = ("strategy", "k", "p", "temperature")

    def __init__(self, paths: storage.DatasetPaths):
        self.paths = paths
        playable = runs.playable_runs(paths)
        options = [(run_label(record), record.run_id) for record in playable] + [(STARTER_LABEL, STARTER)]
        # Its whole label ("upload a prim…" at the default width), under the primer field it fills.
        under_fields = W.Layout(width="auto", align_self="flex-start", margin=f"2px 2px 2px {LABEL_PX + 8}px")
        self.upload = W.FileUpload(accept=".mid,.midi", multiple=False, description="upload a primer",
                                   layout=under_fields)
        tooltip(self.upload, "a MIDI file from your computer to continue; it fills the primer field")
        super().__init__({
            "run": Field(GenerateConfig, "run", options[0][1], options=options),
            **{name: Field(SampleConfig, name) for name in self.SAMPLING},
            "num_tokens": Field(SampleConfig, "num_tokens"),
            **{name: Field(SampleConfig, name) for name in ("bars", "num_samples")},
            "seed": Field(SampleConfig, "seed", -1, label="seed (-1 = random)", zero_means_none=False),
            "seed_midi": Field(GenerateConfig, "seed_midi", "", label="primer MIDI (path, or upload)"),
            "seed_bars": Field(GenerateConfig, "seed_bars", 4),
        }, extras=[self.upload])
        self.upload.observe(self._keep_upload, names="value")

    def _keep_upload(self, change=None) -> None:
        """An uploaded primer goes to this runtime's disk; its path fills the primer field."""
        files = uploaded_files(self.upload)
        if not files:
            return
        name, content = files[-1]
        folder = Path(tempfile.gettempdir()) / "midikit_primers"
        folder.mkdir(exist_ok=True)
        path = folder / Path(name).name  # only the file's own name: nothing outside the folder
        path.write_bytes(content)
        self.fields["seed_midi"].value = str(path)

    def build(self, values):
        seed, bars, primer = values.pop("seed"), values.pop("seed_bars"), values.pop("seed_midi") or None
        if primer is not None and not Path(primer).expanduser().is_file():
            raise ConfigError(f"The primer {primer} is not a file; type the path of a .mid file (in Colab: "
                              "/content/drive/MyDrive/...), upload one with the button, or leave the field empty.")
        where = GenerateConfig(run=values.pop("run"), dataset=self.paths.dataset, checkpoint_dir=str(self.paths.root),
                               seed_midi=primer, seed_bars=bars if primer else None).validate()
        sample = SampleConfig(**values, seed=None if seed is None or seed < 0 else seed).validate()
        if sample.bars is not None and self._bpe(where.run):  # generate() would refuse it: say so here
            raise ConfigError("bars counts Bar tokens, which this run's BPE tokenizer merges into others: "
                              "leave bars at 0 and set tokens to generate instead.")
        return where, sample

    def _bpe(self, run: str) -> bool:
        """Whether the chosen run's tokens are BPE merges (from its dataset's config.json: no model is loaded)."""
        import json

        if run == STARTER:
            from ..starter import starter_dir

            config = starter_dir() / "data" / "config.json"
        else:
            config = self.paths.data / "config.json"
        try:
            return bool(json.loads(config.read_text()).get("bpe_vocab"))
        except (OSError, ValueError):
            return False

    def summary(self, value):
        where, sample = value
        length = f"{sample.bars} bars" if sample.bars else f"up to {sample.num_tokens} tokens"
        seed = "a random seed" if sample.seed is None else f"seed {sample.seed}"
        primer = (f" · continues {Path(where.seed_midi).name}"
                  + (f" (its first {where.seed_bars} bars)" if where.seed_bars else "") if where.seed_midi else "")
        sampling = describe_sampling(sample.strategy, sample.p, sample.k, sample.temperature)
        return f"{where.run} · {sampling} · {length} × {sample.num_samples} · {seed}{primer}"
