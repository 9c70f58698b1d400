"""Small helpers several test files share (pytest puts this folder on sys.path: `from helpers import ...`)."""

from __future__ import annotations

import shutil

from midikit.storage import RUN_ID_PATTERN, DatasetPaths


def own_root(tiny_dataset: DatasetPaths, folder) -> DatasetPaths:
    """A private root holding a copy of the tiny dataset, so runs of one test never meet another's."""
    paths = DatasetPaths(folder / "root", tiny_dataset.dataset)
    shutil.copytree(tiny_dataset.data, paths.data)
    return paths


def the_run(paths: DatasetPaths):
    """The one run folder of a root (a test that expects one run fails if there are two)."""
    (run_dir,) = [p for p in paths.checkpoints.iterdir() if RUN_ID_PATTERN.match(p.name)]
    return run_dir
