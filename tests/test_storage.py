"""Storage: the folder layout, Drive checks and atomic writes."""

import errno
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from midikit import models_csv, runs, storage
from midikit.artifacts import RunReport, write_run_artifacts
from midikit.models import ModelConfig
from midikit.storage import DatasetPaths, StorageError


def test_layout_is_the_seeds(tmp_path):
    paths = storage.dataset_paths(tmp_path, "nottingham")
    run_id = storage.make_run_id("lstm", "20261128_214500")
    base = tmp_path / "nottingham"
    assert paths.best_weights(run_id) == base / "models" / "lstm_20261128_214500.pth"
    assert paths.loss_plot(run_id) == base / "outputs" / "plots" / "loss_curve_lstm_20261128_214500.png"
    assert paths.models_csv == base / "logs" / "models.csv"
    assert paths.training_summary(run_id) == base / "logs" / "training_summary_lstm_20261128_214500.txt"
    assert paths.train_losses(run_id) == base / "logs" / "train_losses_lstm_20261128_214500.npy"
    for folder in (paths.models, paths.plots, paths.generated, paths.logs, paths.data, paths.checkpoints):
        assert folder.is_dir()


@pytest.mark.parametrize("bad", ["../../etc", "lstm", "lstm_2026_1", "LSTM_20261128_214500", "lstm_20261128_214500/.."])
def test_run_ids_from_a_shared_folder_cannot_escape_it(tmp_path, bad):
    paths = DatasetPaths(tmp_path, "d")
    with pytest.raises(StorageError, match="not a midikit run id"):
        paths.run_checkpoints(bad)
    with pytest.raises(StorageError):
        paths.best_weights(bad)


@pytest.mark.parametrize("bad", ["", "a/b", "..", "."])
def test_bad_dataset_names_are_refused(tmp_path, bad):
    with pytest.raises(StorageError, match="dataset name"):
        DatasetPaths(tmp_path, bad)


@pytest.fixture
def fake_colab_drive(monkeypatch, tmp_path):
    """Colab's folders faked in a temporary place: storage's real functions look at this mount point."""
    mount_point = tmp_path / "content" / "drive"
    monkeypatch.setattr(storage, "DRIVE_MOUNT_POINT", mount_point)
    return mount_point


def test_unmounted_drive_root_says_how_to_mount(fake_colab_drive):
    assert storage.drive_state() == storage.NOT_MOUNTED
    with pytest.raises(StorageError, match="Drive is not mounted"):
        storage.resolve_root(fake_colab_drive / "MyDrive" / "midikit_checkpoints")


def test_a_hand_made_mydrive_folder_is_refused_with_its_fix(fake_colab_drive):
    # A folder made where Drive mounts: writing there would silently land on the runtime's own disk.
    (fake_colab_drive / "MyDrive").mkdir(parents=True)
    assert storage.drive_state() == storage.PLAIN_FOLDER
    root = fake_colab_drive / "MyDrive" / "midikit_checkpoints"
    with pytest.raises(StorageError, match="plain folder .* not Google Drive") as refused:
        storage.resolve_root(root)
    assert f"mv {fake_colab_drive} {fake_colab_drive}_local" in str(refused.value)
    assert not root.exists()  # nothing was created on the local disk


def test_a_real_mount_at_the_mount_point_is_drive():
    # /dev/shm is a tmpfs on Linux: the kernel's mount table lists it, which no plain folder can fake.
    if not os.path.ismount("/dev/shm"):
        pytest.skip("/dev/shm is not a mount point on this machine")
    assert storage.drive_state(Path("/dev/shm")) == storage.MOUNTED
    assert storage.drive_problem(Path("/dev/shm/x"), Path("/dev/shm")) is None


def test_root_that_cannot_be_created_is_one_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="Cannot use|Cannot write"):
        storage.resolve_root(blocker / "root")


def test_default_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(storage.ROOT_ENV_VAR, str(tmp_path / "r"))
    assert storage.default_root() == tmp_path / "r"
    monkeypatch.delenv(storage.ROOT_ENV_VAR)
    assert storage.default_root() == storage.LOCAL_DEFAULT_ROOT  # not in Colab here


def test_full_disk_is_explained():
    error = storage.explain_os_error(OSError(errno.ENOSPC, "No space left on device"), Path("/x"))
    assert "full" in str(error)


def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "f.json"
    storage.atomic_write_text(target, "old")
    storage.atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_diverged_run_still_gets_its_artifacts(tmp_path):
    paths = storage.dataset_paths(tmp_path, "d")
    run_id = storage.make_run_id("gru", "20261128_214500")
    config = ModelConfig(model_type="gru", vocab_size=10, hidden_size=8, embed_size=4, num_layers=1).to_dict()
    history = {"train_loss": torch.tensor([2.0, math.nan]), "val_loss": [math.inf], "val_step": [2]}
    metrics = {"best_val_loss": math.inf, "best_step": 2, "final_train_loss": math.nan, "steps": 2, "epochs": 0,
               "total_steps": 2, "tokens_seen": 64, "elapsed_seconds": 1.0, "parameters": 100}
    report = RunReport(run_id, "finished", config, {"lr": 1e-3}, {"name": "d"}, metrics, history, weights_step=2)
    artifacts = write_run_artifacts(paths, report)
    runs.write_record(paths.run_checkpoints(run_id), report.record_fields())
    models_csv.rebuild_models_csv(paths)
    sidecar = json.loads(artifacts["sidecar"].read_text())
    assert sidecar["metrics"]["best_val_loss"] is None and sidecar["metrics"]["final_train_loss"] is None
    assert np.isnan(np.load(artifacts["train_losses"], allow_pickle=False)[1])
    assert runs.read_record(paths.run_checkpoints(run_id)).get("best_val_loss") is None
    assert run_id in artifacts["csv"].read_text()
