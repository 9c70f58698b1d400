"""Small helpers several test files share (pytest puts this folder on sys.path: `from helpers import ...`)."""

from __future__ import annotations

import shutil

import torch

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


def assert_same_training(state: dict, expected: dict) -> None:
    """Two training states (checkpoint dicts) hold the same run: weights, AdamW's moments, and the
    loss, learning-rate and validation histories, bit for bit."""
    assert state["model"].keys() == expected["model"].keys()
    for name, tensor in expected["model"].items():
        assert torch.equal(state["model"][name], tensor), name
    for index, moments in expected["optimizer"]["state"].items():
        for key, tensor in moments.items():
            assert torch.equal(state["optimizer"]["state"][index][key], tensor), (index, key)
    for key in ("train_loss", "lr"):
        assert torch.equal(state["history"][key], expected["history"][key]), key
    for key in ("val_loss", "val_step"):
        assert state["history"][key] == expected["history"][key], key
