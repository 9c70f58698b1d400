"""Shared fixtures: the real Nottingham files and a tiny preprocessed dataset built from them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# ../shared/data/nottingham from the repository root (never copied into the repo).
NOTTINGHAM_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "nottingham"


def pytest_configure(config):
    # The folder a user chose in notebook 01 is remembered in their config folder (midikit.preferences):
    # tests and the processes they start read a fresh one, never the user's.
    os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="midikit_config_")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are all dispatch overhead: a second torch thread only adds waiting (a lot when
    the two cores are shared), so these tests run on one and restore the setting afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def nottingham_dir() -> Path:
    """The 1034 Nottingham MIDI files (melody + chord track each); skips the test when absent."""
    if not any(NOTTINGHAM_DIR.glob("*.mid")):
        pytest.skip(f"Nottingham MIDI files not found at {NOTTINGHAM_DIR}")
    return NOTTINGHAM_DIR


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """DatasetPaths of a small preprocessed dataset named "tiny": the first 60 Nottingham files
    transposed by 0 and +2 (REMI, merged tracks), or 60 tunes of the offline music21 corpus when
    Nottingham is absent. Built once per session in a temporary root; copy it before writing."""
    from midikit.data import PreprocessConfig, preprocess

    if any(NOTTINGHAM_DIR.glob("*.mid")):
        source = dict(input_dir=str(NOTTINGHAM_DIR))
    else:
        source = dict(source="corpus")
    config = PreprocessConfig(
        **source, dataset="tiny", checkpoint_dir=str(tmp_path_factory.mktemp("tiny_root")), limit=60,
        transpositions=(0, 2)
    )
    return preprocess(config, progress=False, log=lambda message: None).paths
