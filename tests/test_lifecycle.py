"""A run's life, edge by edge: what the .pth holds, interruptions at awkward moments, orphan runs,
the schedule's horizon, bad values, and faults beneath the code (the file system, the loss) rather
than replacements of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import own_root, the_run

from midikit import checkpoints, runs
from midikit.errors import ConfigError, StorageError
from midikit.storage import DatasetPaths, parse_run_id
from midikit.train import TrainConfig, train

TINY = dict(embed_size=16, hidden_size=32, num_layers=1, dropout=0.1, context_length=32)
TINY_TRANSFORMER = dict(d_model=32, nhead=2, num_layers=2, dim_feedforward=64, dropout=0.1, context_length=32)

pytestmark = pytest.mark.usefixtures("one_thread")



def config(paths: DatasetPaths, **changes) -> TrainConfig:
    values = dict(dataset=paths.dataset, checkpoint_dir=str(paths.root), model_type="gru", preset="cpu", batch_size=8,
                  lr=3e-3, max_steps=30, eval_every=10, eval_windows=32, device="cpu", progress=False,
                  checkpoint_every_minutes=0, patience=0)
    values.update(changes)
    return TrainConfig(**values)


def quiet(*_):
    pass



def pth_weights(paths: DatasetPaths, run_id: str) -> dict:
    return torch.load(paths.best_weights(run_id), weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


class LossFault:
    """A fault beneath the loop: `F.cross_entropy` (the loss of every step and evaluation) raises or
    signals at a chosen call, the way Colab's stop button lands wherever the loop happens to be."""

    def __init__(self, monkeypatch, when, action):
        self.calls = {"train": 0, "eval": 0}
        real = F.cross_entropy

        def cross_entropy(*args, **kwargs):
            kind = "eval" if kwargs.get("reduction") == "sum" else "train"
            self.calls[kind] += 1
            if when(kind, self.calls):
                action()
            return real(*args, **kwargs)

        monkeypatch.setattr(F, "cross_entropy", cross_entropy)


def ctrl_c():
    raise KeyboardInterrupt


# --------------------------------------------------------------------------- models/<run>.pth


def test_the_pth_always_holds_the_best_weights(tiny_dataset, tmp_path):
    # Every step is checkpointed and evaluations come every 3 steps, so a save often starts while the
    # previous one (a new best) is still being written: the .pth must still end with the best weights.
    paths = own_root(tiny_dataset, tmp_path)
    result = train(config(paths, max_steps=45, eval_every=3, checkpoint_every_steps=1, lr=3e-2), log=quiet,
                   model_overrides=TINY)
    sidecar = json.loads(result.artifacts["sidecar"].read_text())
    best = checkpoints.load_state(the_run(paths) / "best.pt")
    assert best["step"] == sidecar["metrics"]["best_step"] == sidecar["weights_step"] == result.history["val_step"][
        int(np.argmin(result.history["val_loss"]))]
    assert_same_weights(pth_weights(paths, result.run_id), best["model"])


def test_a_failed_pth_write_then_a_disconnect_still_ends_with_the_best_weights(tiny_dataset, tmp_path):
    paths = own_root(tiny_dataset, tmp_path)
    args = ["train", "--dataset", paths.dataset, "--checkpoint_dir", str(paths.root), "--model_type", "gru", "--preset",
            "cpu",
            "--device", "cpu", "--batch_size", "8", "--max_steps", "400", "--eval_every", "5", "--eval_windows", "16",
            "--checkpoint_every_steps", "5",
            "--checkpoint_every_minutes", "0", "--patience", "0", "--no_progress",
            *sum(([f"--{k}", str(v)] for k, v in TINY.items()), [])]
    spec = json.dumps([{"fail_writes": {"error": "EACCES", "match": "*.pth*"}}])  # models/<run>.pth cannot be written
    env = dict(os.environ, OMP_NUM_THREADS="1")
    victim = subprocess.Popen([sys.executable, "-m", "testsupport.pyfaults", "--spec", spec, "--", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _has_step(paths, 15):
        assert victim.poll() is None, victim.stdout.read()
        time.sleep(0.05)
    victim.kill()  # a disconnect: no final save
    output = victim.communicate()[0]
    run_dir = the_run(paths)
    assert "Best weights" in output and "NOT saved" in output and not paths.best_weights(run_dir.name).exists()
    _, state = checkpoints.load_latest(run_dir)
    assert "best_model" in state  # the weights the .pth could not take travelled in the state file

    messages = []
    result = train(config(paths, max_steps=400, eval_every=5, eval_windows=16, checkpoint_every_steps=5),
                   log=messages.append)
    assert result.run_id == run_dir.name and result.resumed_from_step == state["step"]
    sidecar = json.loads(result.artifacts["sidecar"].read_text())
    best = checkpoints.load_state(run_dir / "best.pt")
    assert sidecar["weights_step"] == sidecar["metrics"]["best_step"] == best["step"]
    assert_same_weights(pth_weights(paths, result.run_id), best["model"])


def _has_step(paths: DatasetPaths, step: int) -> bool:
    if not paths.checkpoints.is_dir():
        return False
    return any(checkpoints.step_of(p) >= step for run in paths.checkpoints.iterdir()
               for p in checkpoints.list_checkpoints(run)
               if checkpoints.verify_checkpoint(p)[0] == "valid")


# --------------------------------------------------------------------------- interruptions


def test_a_second_ctrl_c_during_evaluation_leaves_a_run_that_resumes_exactly(tiny_dataset, tmp_path, monkeypatch):
    reference = train(config(own_root(tiny_dataset, tmp_path / "ref"), model_type="transformer",
                             checkpoint_every_steps=5),
                      log=quiet, model_overrides=TINY_TRANSFORMER)

    paths = own_root(tiny_dataset, tmp_path / "cut")
    run_config = config(paths, model_type="transformer", checkpoint_every_steps=5)
    with monkeypatch.context() as patch:
        LossFault(patch, lambda kind, calls: kind == "eval" and calls["train"] == 20, ctrl_c)  # evaluating step 20
        cut = train(run_config, log=quiet, model_overrides=TINY_TRANSFORMER)
    assert cut.status == "interrupted" and cut.steps == 20
    _, state = checkpoints.load_latest(the_run(paths))
    # step 20 without its evaluation was never saved
    assert state["step"] == 15 and state["history"]["val_step"] == [10]

    resumed = train(run_config, log=quiet)
    assert (resumed.resumed_from_step == 15
            and resumed.history["val_step"] == reference.history["val_step"] == [10, 20, 30])
    assert (resumed.history["val_loss"] == reference.history["val_loss"]
            and resumed.best_val_loss == reference.best_val_loss)
    assert resumed.history["train_loss"] == reference.history["train_loss"]


def test_a_stop_asked_for_during_the_last_step_finishes_the_run(tiny_dataset, tmp_path, monkeypatch):
    paths = own_root(tiny_dataset, tmp_path)
    messages = []
    LossFault(monkeypatch, lambda kind, calls: kind == "train" and calls["train"] == 30, lambda: os.kill(os.getpid(),
                                                                                                         signal.SIGINT))
    result = train(config(paths), log=messages.append, model_overrides=TINY)
    assert any("Stop requested" in m for m in messages)
    assert result.status == "max_steps" and result.steps == 30
    assert runs.read_record(the_run(paths)).status == "max_steps"
    assert train(config(paths), log=quiet, model_overrides=TINY).run_id != result.run_id  # nothing left to resume


def test_an_exception_saves_what_is_consistent_and_leaks_no_thread(tiny_dataset, tmp_path):
    paths = own_root(tiny_dataset, tmp_path)

    def broken_callback(history):
        raise ValueError("the notebook's plot broke")

    with pytest.raises(ValueError, match="plot broke"):
        train(config(paths), on_eval=broken_callback, log=quiet, model_overrides=TINY)
    run_dir = the_run(paths)
    _, state = checkpoints.load_latest(run_dir)
    assert state["step"] == 10 and state["history"]["val_step"] == [10]
    assert runs.read_record(run_dir).status == "failed" and runs.read_record(run_dir).owner.released
    time.sleep(0.2)
    assert not [t for t in threading.enumerate() if t.name.startswith("midikit-")]
    resumed = train(config(paths), log=quiet)
    assert resumed.run_id == run_dir.name and resumed.resumed_from_step == 10 and resumed.status == "max_steps"


def test_a_run_killed_before_its_first_checkpoint_starts_over_under_its_own_id(tiny_dataset, tmp_path, monkeypatch):
    paths = own_root(tiny_dataset, tmp_path)
    with monkeypatch.context() as patch:
        # inside step 3: nothing saved yet
        LossFault(patch, lambda kind, calls: kind == "train" and calls["train"] == 3, ctrl_c)
        orphan = train(config(paths, checkpoint_every_steps=5), log=quiet, model_overrides=TINY)
    assert orphan.status == "interrupted" and checkpoints.load_latest(the_run(paths), log=quiet) is None
    messages = []
    again = train(config(paths, checkpoint_every_steps=5), log=messages.append)
    assert again.run_id == orphan.run_id and again.status == "max_steps" and again.steps == 30
    assert any("starting it over from step 0 under the same id" in m for m in messages)
    assert [p.name for p in paths.checkpoints.iterdir()] == [orphan.run_id]


# --------------------------------------------------------------------------- the horizon


def test_resuming_with_another_length_keeps_the_schedule_unless_extended(tiny_dataset, tmp_path):
    paths = own_root(tiny_dataset, tmp_path)
    stopped = train(config(paths, max_steps=40), on_eval=lambda history: ctrl_c() if history["val_step"][-1] == 20
                    else None, log=quiet, model_overrides=TINY)
    assert stopped.steps == 20
    messages = []
    resumed = train(config(paths, max_steps=80), log=messages.append)
    assert resumed.steps == 40 and any("keeps its horizon of 40 steps" in m and "--extend" in m for m in messages)
    lrs = resumed.history["lr"]
    # No jump where the run was resumed: the cosine curve of the 40-step horizon goes on.
    assert abs(lrs[20] - lrs[19]) < 2 * abs(lrs[19] - lrs[18]) + 1e-12


# --------------------------------------------------------------------------- values


def test_numpy_numbers_are_accepted_and_stored_as_python_numbers(tiny_dataset, tmp_path):
    paths = own_root(tiny_dataset, tmp_path)
    result = train(config(paths, lr=np.float64(3e-3), max_steps=np.int64(10), checkpoint_every_steps=5), log=quiet,
                   model_overrides=TINY)
    _, state = checkpoints.load_latest(the_run(paths))  # weights_only=True would refuse a numpy scalar
    assert type(state["train_config"]["lr"]) is float and type(state["train_config"]["max_steps"]) is int
    assert result.steps == 10


def test_a_run_id_with_a_trailing_newline_is_refused():
    with pytest.raises(StorageError, match="not a midikit run id"):
        parse_run_id("lstm_20261201_120000\n")


@pytest.mark.parametrize("changes, message", [
    (dict(lr=float("inf")), "lr must be a finite number"),
    (dict(seed=-1), "seed must be an integer >= 0"),
    (dict(patience=True), "patience must be an integer, got True"),
    (dict(epochs=2.5), "epochs must be an integer, got 2.5"),
])
def test_bad_values_are_one_clear_message(changes, message):
    with pytest.raises(ConfigError, match=message):
        replace(TrainConfig(), **changes).validate()
