"""The starter model: music to play before training one.

A Transformer trained with the best CPU recipe (bench/results/quality_cpu.md) on music21's
offline folk corpus, Ryan's Mammoth Collection (1883; see README.md here for the licence and the
command that rebuilt it). Its folder has the standard layout of a dataset folder, so `load_run`
reads it like any run: `models/<run_id>.pth` (weights, loaded with weights_only=True) and its
`.json` sidecar, `data/` (the tokenizer, the special token ids and a small token store: the
validation songs and 64 training songs, untransposed, for `evaluate`), and `quality.json`, the
model's report.

    from midikit.starter import load_starter
    run = load_starter()                      # a LoadedRun; generated MIDI goes under <root>/starter
    generate(run, SampleConfig(num_samples=2, seed=0))
"""

from __future__ import annotations

import json
from pathlib import Path

from ..storage import DatasetPaths, resolve_root

DATASET = "starter"  # the dataset folder name, in the package and under the user's root (for outputs)


def starter_dir() -> Path:
    """The folder of the starter model's files (inside the installed package)."""
    return Path(__file__).resolve().parent


def starter_weights() -> Path:
    """The starter model's weights file (its .json sidecar beside it)."""
    found = sorted((starter_dir() / "models").glob("*.pth"))
    if len(found) != 1:
        from ..errors import GenerationError

        raise GenerationError(f"The starter model's folder {starter_dir() / 'models'} should hold one .pth and holds "
                              f"{len(found)}: reinstall midikit, or rebuild it with python scripts/build_starter.py.")
    return found[0]


def starter_report() -> dict:
    """The starter model's quality report (`midikit.evaluate`'s JSON), as measured when it was built."""
    return json.loads((starter_dir() / "quality.json").read_text())


def load_starter(device: str = "auto", paths: DatasetPaths | None = None, log=print):
    """The starter model as a `midikit.trained.LoadedRun`, with no checkpoint folder needed. What
    it generates or reports is written under `paths` (default: the dataset "starter" under the
    default root), never into the package."""
    from ..trained import load_run

    run = load_run(starter_weights(), device=device, log=log)
    run.paths = paths if paths is not None else DatasetPaths(resolve_root(None, create=False), DATASET)
    return run


__all__ = ["DATASET", "load_starter", "starter_dir", "starter_report", "starter_weights"]
