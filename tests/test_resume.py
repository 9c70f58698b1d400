"""Exact resume, through the CLI in real processes: a run killed with SIGKILL (a Colab disconnect)
or stopped with Ctrl-C (Colab's stop button) and then resumed with `--resume auto` ends with
weights, optimizer state and loss history bit-identical to an uninterrupted run with the same seed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import assert_same_training, own_root

from midikit import checkpoints, runs
from midikit.storage import DatasetPaths

STEPS = 60
# A cpu-sized transformer with dropout, so the torch RNG must be restored too, not only the data order.
ARGS = [
    "--model_type", "transformer", "--preset", "cpu", "--device", "cpu", "--d_model", "32", "--nhead", "2",
    "--num_layers", "2", "--dim_feedforward", "64", "--dropout", "0.1", "--context_length", "32",
    "--batch_size", "8", "--lr", "3e-3", "--seed", "7", "--max_steps", str(STEPS), "--eval_every", "15",
    "--checkpoint_every_steps", "10", "--checkpoint_every_minutes", "0", "--resume", "auto", "--no_progress",
]



def start(paths: DatasetPaths) -> subprocess.Popen:
    command = [sys.executable, "-m", "midikit", "train", "--dataset", paths.dataset, "--checkpoint_dir",
               str(paths.root), *ARGS]
    # One thread each: several runs share two cores, and tiny models gain nothing from more.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(process: subprocess.Popen, expected_code: int = 0) -> str:
    output, _ = process.communicate(timeout=120)
    assert process.returncode == expected_code, output
    return output


def the_run(paths: DatasetPaths):
    (run_dir,) = paths.checkpoints.iterdir()
    return run_dir


def wait_for_checkpoint(paths: DatasetPaths, process: subprocess.Popen, min_step: int) -> None:
    """Poll the run folder until a valid checkpoint at or past `min_step` exists."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted:\n" + process.stdout.read()
        for run_dir in paths.checkpoints.glob("*_*"):
            for path in checkpoints.list_checkpoints(run_dir):
                step = int(path.stem.split("_")[1])
                if step >= min_step and checkpoints.verify_checkpoint(path)[0] == "valid":
                    return
        time.sleep(0.02)
    pytest.fail("no checkpoint appeared in time")


def assert_identical(paths: DatasetPaths, reference: DatasetPaths) -> None:
    _, state = checkpoints.load_latest(the_run(paths))
    _, expected = checkpoints.load_latest(the_run(reference))
    assert state["step"] == expected["step"] == STEPS and state["finished"]
    assert_same_training(state, expected)
    assert len(state["history"]["train_loss"]) == STEPS
    assert (state["best_val_loss"], state["best_step"]) == (expected["best_val_loss"], expected["best_step"])


def test_killed_or_stopped_runs_resume_bit_identical(tiny_dataset, tmp_path):
    reference, killed, stopped = (own_root(tiny_dataset, tmp_path / name)
                                  for name in ("reference", "killed", "stopped"))
    uninterrupted, victim = start(reference), start(killed)

    wait_for_checkpoint(killed, victim, min_step=20)
    victim.send_signal(signal.SIGKILL)  # no handler, no final save: a disconnect
    finish(victim, -signal.SIGKILL)
    to_stop = start(stopped)  # started only now, so it cannot finish before its stop arrives
    wait_for_checkpoint(stopped, to_stop, min_step=20)
    to_stop.send_signal(signal.SIGINT)
    finish(to_stop, 130)

    for paths, status in ((killed, "running"), (stopped, "interrupted")):
        run_dir = the_run(paths)
        record = runs.read_record(run_dir)
        assert record.status == status
        # A killed run's owner is a process that no longer exists on this host: it is resumed at once.
        assert record.owner_state() == ("dead" if status == "running" else "released")
        _, state = checkpoints.load_latest(run_dir)
        assert 20 <= state["step"] < STEPS
        output = finish(start(paths))
        assert f"Resuming {run_dir.name}" in output and f"step {state['step']} of {STEPS}" in output
        assert runs.read_record(run_dir).status == "max_steps"

    finish(uninterrupted)
    assert_identical(killed, reference)
    assert_identical(stopped, reference)
