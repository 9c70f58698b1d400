"""The same trainer under torchrun (DistributedDataParallel, gloo on the CPU, 2 processes): one set
of files written by rank 0 alone, an exact resume after every process is killed, a clear stop when
one process dies, and checkpoints that move between one process and two."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import own_root, the_run

from midikit import checkpoints, models_csv, runs
from midikit.storage import DatasetPaths

STEPS = 60
ARGS = ["--model_type", "gru", "--preset", "cpu", "--device", "cpu", "--embed_size", "16", "--hidden_size", "32",
        "--num_layers", "1", "--dropout", "0.1", "--context_length", "32", "--batch_size", "8", "--max_steps",
        str(STEPS), "--eval_every", "15", "--eval_windows", "16", "--checkpoint_every_steps", "10",
        "--checkpoint_every_minutes", "0", "--seed", "5", "--no_progress"]



def launch(paths: DatasetPaths, processes: int = 2, *extra: str) -> subprocess.Popen:
    train = ["-m", "midikit", "train", "--dataset", paths.dataset, "--checkpoint_dir", str(paths.root), *ARGS, *extra]
    runner = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    return subprocess.Popen([sys.executable, *runner, *train], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)


def finish(process: subprocess.Popen, code: int = 0) -> str:
    output = process.communicate(timeout=180)[0]
    assert process.returncode == code, output
    return output



def workers(paths: DatasetPaths) -> list[int]:
    """The training processes torchrun started for this root (torchrun puts them in sessions of their own)."""
    found = subprocess.run(["pgrep", "-f", "--", f"-m midikit train --dataset {paths.dataset} "
                                                 f"--checkpoint_dir {paths.root}"],
                           capture_output=True, text=True).stdout.split()
    runners = subprocess.run(["pgrep", "-f", "torch.distributed.run"], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found if pid not in runners]


def kill_everything(process: subprocess.Popen, paths: DatasetPaths) -> None:
    """SIGKILL torchrun and every training process at once: what a disconnected runtime does to them."""
    pids = workers(paths)
    os.killpg(process.pid, signal.SIGKILL)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while workers(paths) and time.monotonic() < deadline:
        time.sleep(0.05)


def wait_for_step(paths: DatasetPaths, process: subprocess.Popen, step: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        for run_dir in paths.checkpoints.glob("gru_*") if paths.checkpoints.is_dir() else []:
            if any(checkpoints.step_of(p) >= step and checkpoints.verify_checkpoint(p)[0] == "valid"
                   for p in checkpoints.list_checkpoints(run_dir)):
                return
        time.sleep(0.05)
    pytest.fail("no checkpoint in time")


def final_state(paths: DatasetPaths) -> dict:
    return checkpoints.load_latest(the_run(paths), log=lambda message: None)[1]


def test_two_processes_one_run_and_an_exact_resume_after_killing_them_all(tiny_dataset, tmp_path):
    reference, killed = own_root(tiny_dataset, tmp_path / "reference"), own_root(tiny_dataset, tmp_path / "killed")
    uninterrupted, victim = launch(reference), launch(killed)
    wait_for_step(killed, victim, 20)
    kill_everything(victim, killed)
    output = finish(launch(killed))
    assert output.count(f"Resuming {the_run(killed).name}") == 1  # rank 0 speaks for the run
    assert "x 2 processes (effective batch 16)" in output

    first = finish(uninterrupted)
    assert first.count("Starting ") == 1 and first.count("weights ") == 1
    # One set of files: one run folder, one .pth, one row; every file written once, by rank 0.
    assert [p.name for p in reference.models.glob("*.pth")] == [f"{the_run(reference).name}.pth"]
    assert [row["run_id"] for row in models_csv.read_models_csv(reference)] == [the_run(reference).name]
    expected, state = final_state(reference), final_state(killed)
    assert state["step"] == expected["step"] == STEPS and state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    for name, tensor in expected["model"].items():
        assert torch.equal(state["model"][name], tensor), name
    for index, moments in expected["optimizer"]["state"].items():
        for key, tensor in moments.items():
            assert torch.equal(state["optimizer"]["state"][index][key], tensor), (index, key)
    assert torch.equal(state["history"]["train_loss"], expected["history"]["train_loss"])
    assert state["history"]["val_loss"] == expected["history"]["val_loss"]


def test_a_dead_process_stops_the_others_with_a_clear_message(tiny_dataset, tmp_path):
    paths = own_root(tiny_dataset, tmp_path)
    run = launch(paths, 2, "--max_steps", "100000", "--eval_every", "100000")
    wait_for_step(paths, run, 10)
    os.kill(max(workers(paths)), signal.SIGKILL)  # one of the two training processes
    output = run.communicate(timeout=120)[0]  # the survivor stops too: it does not wait for its peer for good
    assert run.returncode != 0
    # midikit's own line, not only torchrun's exit codes: the survivor says what happened and what to run.
    assert "another process of this run stopped" in output and "Run the same torchrun command again" in output, output
    assert runs.read_record(the_run(paths)).status in ("running", "failed")  # resumable


def test_checkpoints_move_between_one_process_and_two(tiny_dataset, tmp_path):
    paths = own_root(tiny_dataset, tmp_path)
    alone = launch(paths, 1, "--max_steps", "20")
    finish(alone)
    output = finish(launch(paths, 2, "--max_steps", "40", "--resume", str(the_run(paths)), "--extend"))
    assert "saved by 1 process(es) and continues with 2" in output and "Resuming" in output
    assert final_state(paths)["step"] == 40 and final_state(paths)["world_size"] == 2
    output = finish(launch(paths, 1, "--max_steps", "50", "--resume", str(the_run(paths)), "--extend"))
    assert "saved by 2 process(es) and continues with 1" in output and final_state(paths)["step"] == 50
