"""The run registry: one run.json per run, listing and choosing runs, one writer per run (a second
runtime is refused, a takeover stops the first), and models.csv derived under a lock."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from midikit import checkpoints, models_csv, owners, runs
from midikit.errors import RunOwnedError
from midikit.storage import DatasetPaths


def record(run_id: str, status: str, **fields) -> dict:
    model_type = run_id.split("_")[0]
    return {"run_id": run_id, "model_type": model_type, "status": status, "step": 10,
            "model_config": {"model_type": model_type, "vocab_size": 10}, "train_config": {"epochs": 1}, **fields}


def test_list_runs_answers_by_type_and_status_newest_first(tmp_path):
    paths = DatasetPaths(tmp_path, "d")
    for run_id, status in (("lstm_20260101_000000", "running"), ("lstm_20260102_000000", "max_steps"),
                           ("gru_20260103_000000", "interrupted"), ("lstm_20260104_000000", "failed")):
        runs.write_record(paths.run_checkpoints(run_id), record(run_id, status))
    (paths.checkpoints / "lstm_20260105_000000").mkdir()  # a folder without a record
    (paths.checkpoints / "notes").mkdir()  # not a run

    def listed(**kw):
        return [r.run_id for r in runs.list_runs(paths, **kw)]

    assert listed() == ["lstm_20260105_000000", "lstm_20260104_000000", "gru_20260103_000000", "lstm_20260102_000000",
                        "lstm_20260101_000000"]
    assert listed(model_type="lstm", status="resumable") == ["lstm_20260104_000000", "lstm_20260101_000000"]
    assert listed(status="done") == ["lstm_20260102_000000"]
    assert listed(status=("interrupted", "failed")) == ["lstm_20260104_000000", "gru_20260103_000000"]
    assert runs.list_runs(paths)[0].status == "unknown"
    assert runs.list_runs(DatasetPaths(tmp_path, "missing")) == []


def test_a_record_of_midikit_0_1_takes_its_configs_from_the_sidecar(tmp_path):
    paths = DatasetPaths(tmp_path, "d").ensure()
    run_id = "gru_20260101_000000"
    (paths.run_checkpoints(run_id)).mkdir()
    (paths.run_checkpoints(run_id) / "run.json").write_text(json.dumps({"run_id": run_id, "model_type": "gru",
                                                                        "status": "running"}))
    paths.weights_sidecar(run_id).write_text(json.dumps({"model_config": {"model_type": "gru"},
                                                         "train_config": {"lr": 0.1},
                                                          "metrics": {"steps": 7, "best_val_loss": 2.5},
                                                         "dataset": {"name": "d"}}))
    old = runs.read_record(paths.run_checkpoints(run_id))
    assert (old.status, old.get("step"), old.get("best_val_loss"), old.get("train_config")) == ("running", 7, 2.5,
                                                                                                {"lr": 0.1})


def test_a_live_owner_is_refused_a_dead_or_stale_one_is_not(tmp_path):
    run_dir = tmp_path / "lstm_20260101_000000"
    first = owners.claim(run_dir, record(run_dir.name, "running"))
    with pytest.raises(RunOwnedError, match=rf"host {socket.gethostname()}, process {os.getpid()}.*--takeover"):
        owners.claim(run_dir, record(run_dir.name, "running"))
    messages = []
    second = owners.claim(run_dir, record(run_dir.name, "running"), takeover=True, log=messages.append)
    assert second.claim == first.claim + 1 and "Taking over" in messages[0]
    assert owners.newer_claim(run_dir, first) == second and owners.newer_claim(run_dir, second) is None

    data = runs.read_record(run_dir).data
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = dict(data["owner"], pid=gone.pid, pid_started=None)  # a process of this host that no longer exists
    runs.write_record(run_dir, {**data, "owner": dead})
    assert runs.read_record(run_dir).owner_state() == "dead"
    owners.claim(run_dir, record(run_dir.name, "running"))  # at once: no waiting for the heartbeat to age

    elsewhere = dict(runs.read_record(run_dir).data["owner"], host="another-colab-runtime")
    runs.write_record(run_dir, {**data, "owner": elsewhere})
    assert runs.read_record(run_dir).owner_state() == "live"
    runs.write_record(run_dir, {**data, "owner": dict(elsewhere, heartbeat=time.time() - runs.STALE_AFTER_SECONDS - 1)})
    assert runs.read_record(run_dir).owner_state() == "stale"
    owners.claim(run_dir, record(run_dir.name, "running"))


def test_the_keeper_beats_off_the_caller_thread_and_stops_once_taken_over(tmp_path):
    paths = DatasetPaths(tmp_path, "d")
    run_dir = paths.run_checkpoints("lstm_20260101_000000")
    owner = owners.claim(run_dir, record(run_dir.name, "running"))
    keeper = owners.RecordKeeper(paths, run_dir, record(run_dir.name, "running"), owner, log=pytest.fail,
                                 heartbeat_s=0.05)
    beat = runs.read_record(run_dir).owner.heartbeat
    time.sleep(0.3)
    assert runs.read_record(run_dir).owner.heartbeat > beat  # refreshed with no update asked for
    keeper.update(step=20).result(timeout=5)
    assert runs.read_record(run_dir).get("step") == 20 and "lstm_20260101_000000" in paths.models_csv.read_text()

    owners.claim(run_dir, record(run_dir.name, "running"), takeover=True, log=lambda message: None)
    with pytest.raises(RunOwnedError, match="taken over"):
        keeper.update(step=30).result(timeout=5)
    assert keeper.lost.is_set() and runs.read_record(run_dir).get("step") == 10  # the new owner's record stands
    keeper.close()


def test_the_keeper_lets_go_of_the_run_once_drive_answers_again(tmp_path):
    """Drive's mount drops as the run ends: the release waits it out (under the one retry policy) and
    lands once the mount is back; reading who owns the run meanwhile fails, it never reads as "nobody"."""
    import threading

    from midikit.retry import is_transient
    from testsupport.pyfaults import FaultyFS

    paths = DatasetPaths(tmp_path, "d")
    run_dir = paths.run_checkpoints("lstm_20260101_000000")
    owner = owners.claim(run_dir, record(run_dir.name, "running"))
    messages = []
    keeper = owners.RecordKeeper(paths, run_dir, record(run_dir.name, "running"), owner, log=messages.append)
    with FaultyFS(tmp_path) as fs:
        fs.unmount()  # every call answers ENOTCONN
        with pytest.raises(Exception) as unreadable:
            owners.newer_claim(run_dir, owner)
        assert is_transient(unreadable.value)  # a save waits for it instead of taking it for "no other owner"
        threading.Timer(1.0, fs.remount).start()
        assert keeper.close(timeout=30, retry_wait_s=0.05)
    assert runs.read_record(run_dir).owner.released
    assert len([m for m in messages
                if "Transport endpoint is not connected" in m]) == 1 and "landed after" in messages[-1]


def test_a_models_csv_lock_left_by_this_process_or_an_ended_one_is_not_waited_for(tmp_path):
    paths = DatasetPaths(tmp_path, "d")
    runs.write_record(paths.run_checkpoints("lstm_20260101_000000"), record("lstm_20260101_000000", "running"))
    paths.logs.mkdir(parents=True, exist_ok=True)
    # What a release that Drive failed leaves: the lock file, naming this very process.
    (paths.logs / ".models.csv.lock").write_text(f"{socket.gethostname()} {os.getpid()}\n")
    # a fresh lock of another process would hold it for good
    models_csv.rebuild_models_csv(paths, attempts=2, wait_s=0.0)
    assert "lstm_20260101_000000" in paths.models_csv.read_text() and not (paths.logs / ".models.csv.lock").exists()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (paths.logs / ".models.csv.lock").write_text(f"{socket.gethostname()} {int(ended.stdout)}\n")  # a killed run's
    models_csv.rebuild_models_csv(paths, attempts=2, wait_s=0.0)
    assert not (paths.logs / ".models.csv.lock").exists()


def _finish_runs_together(root: str, run_id: str, barrier) -> None:
    paths = DatasetPaths(root, "d")
    barrier.wait()
    for step in range(1, 31):
        runs.write_record(paths.run_checkpoints(run_id), record(run_id, "running" if step < 30 else "max_steps",
                                                                step=step))
        models_csv.rebuild_models_csv(paths)


def test_two_runs_finishing_together_both_land_in_models_csv_with_final_values(tmp_path):
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    writers = [context.Process(target=_finish_runs_together, args=(str(tmp_path), run_id, barrier))
               for run_id in ("lstm_20260101_000000", "gru_20260101_000001")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    rows = {row["run_id"]: row for row in models_csv.read_models_csv(DatasetPaths(tmp_path, "d"))}
    assert {(run_id, row["status"], row["steps"]) for run_id, row in rows.items()} == {
        ("lstm_20260101_000000", "max_steps", "30"), ("gru_20260101_000001", "max_steps", "30")}
    assert not (tmp_path / "d" / "logs" / ".models.csv.lock").exists()


def test_rows_of_runs_whose_folder_is_gone_stay_in_models_csv(tmp_path):
    paths = DatasetPaths(tmp_path, "d")
    for run_id in ("lstm_20260101_000000", "gru_20260101_000001"):
        runs.write_record(paths.run_checkpoints(run_id), record(run_id, "max_steps"))
    models_csv.rebuild_models_csv(paths)
    shutil.rmtree(paths.run_checkpoints("lstm_20260101_000000"))  # the user deleted the checkpoints
    models_csv.rebuild_models_csv(paths)
    assert [row["run_id"] for row in models_csv.read_models_csv(paths)] == ["gru_20260101_000001",
                                                                            "lstm_20260101_000000"]


# --------------------------------------------------------------------------- two runtimes, one run


def _train(paths: DatasetPaths, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "midikit", "train", "--dataset", paths.dataset, "--checkpoint_dir",
               str(paths.root),
               "--model_type", "gru", "--preset", "cpu", "--device", "cpu", "--embed_size", "16", "--hidden_size", "32",
               "--num_layers", "1", "--context_length", "32", "--batch_size", "8", "--max_steps", "20000",
               "--eval_every", "100000", "--eval_windows", "8", "--checkpoint_every_steps", "25",
               "--checkpoint_every_minutes", "0", "--keep_last", "1000", "--no_progress", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))


def _valid_steps(run_dir) -> set[int]:
    return {checkpoints.step_of(p) for p in checkpoints.list_checkpoints(run_dir)
            if checkpoints.verify_checkpoint(p)[0] == "valid"}


def _claims(run_dir) -> tuple[int, int]:
    """(the owner's claim number, the step of the newest checkpoint recorded) from run.json."""
    current = runs.read_record(run_dir)
    if current is None or current.owner is None:
        return 0, 0
    return current.owner.claim, current.get("step") or 0


def _wait_for(condition, process, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_second_runtime_is_refused_and_a_takeover_stops_the_first(tiny_dataset, tmp_path):
    paths = DatasetPaths(tmp_path, tiny_dataset.dataset)
    shutil.copytree(tiny_dataset.data, paths.data)
    first = _train(paths)
    try:
        _wait_for(lambda: paths.checkpoints.is_dir()
                  and any(_valid_steps(d) for d in paths.checkpoints.iterdir()), first)
        (run_dir,) = paths.checkpoints.iterdir()

        refused = _train(paths)  # the user opens a new Colab tab and runs the cell again
        output = refused.communicate(timeout=60)[0]
        assert refused.returncode == 2, output
        assert f"is being trained by another runtime (host {socket.gethostname()}, process {first.pid}" in output
        assert "--takeover" in output and not [p for p in paths.checkpoints.iterdir() if p != run_dir]

        before = _valid_steps(run_dir)
        second = _train(paths, "--takeover")
        _wait_for(lambda: _claims(run_dir)[0] == 2, second)
        resumed_at = _claims(run_dir)[1]
        _wait_for(lambda: _claims(run_dir)[1] >= resumed_at + 50, second)  # two checkpoints of its own
        first_output = first.communicate(timeout=60)[0]  # it notices at its next save and ends by itself
        assert first.returncode == 3 and "took this run over" in first_output
        assert "Checkpoint saved" not in first_output.split("was taken over")[-1]  # nothing written after noticing
        second.send_signal(signal.SIGINT)
        second_output = second.communicate(timeout=60)[0]
        assert second.returncode == 130 and f"Taking over {run_dir.name}" in second_output
    finally:
        for process in (first, second if "second" in locals() else None):
            if process is not None and process.poll() is None:
                process.kill()
    # Nothing either wrote was deleted by the other, and every file is a valid checkpoint.
    assert before <= _valid_steps(run_dir)
    assert all(f["status"] == "valid" for f in checkpoints.inspect_run(run_dir))
    final = runs.read_record(run_dir)
    assert final.status == "interrupted" and final.owner.released and final.owner.claim == 2
