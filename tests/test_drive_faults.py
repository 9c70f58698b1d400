"""Drive faults beneath `torch.save` (testsupport.pyfaults: a file-system layer under the real
writes, never a replacement of the code under test), each survived by a real training run:
what the user reads, what is on disk afterwards, and that training reached its last step."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from helpers import own_root, the_run

from midikit import checkpoints, runs
from midikit.storage import DatasetPaths
from midikit.train import TrainConfig, train
from testsupport.pyfaults import FaultyFS

TINY = dict(embed_size=16, hidden_size=32, num_layers=1, dropout=0.1, context_length=32)

pytestmark = pytest.mark.usefixtures("one_thread")



def config(paths: DatasetPaths, **changes) -> TrainConfig:
    values = dict(dataset=paths.dataset, checkpoint_dir=str(paths.root), model_type="gru", preset="cpu", batch_size=8,
                  lr=3e-3, max_steps=40, eval_every=10, eval_windows=16, device="cpu", progress=False,
                  checkpoint_every_minutes=0, checkpoint_every_steps=10, patience=0)
    values.update(changes)
    return TrainConfig(**values)



def strays(paths: DatasetPaths) -> list:
    return [p for p in paths.base.rglob(".*.tmp-*")]


def valid_steps(run_dir) -> list[int]:
    return [checkpoints.step_of(p) for p in checkpoints.list_checkpoints(run_dir)
            if checkpoints.verify_checkpoint(p)[0] == "valid"]


@pytest.mark.parametrize("fault, explained", [
    ({"fail_writes": dict(error=errno.ENOTCONN, after_bytes=20_000)}, "Google Drive dropped its connection"),
    ({"fail_writes": dict(error=errno.EIO, after_bytes=20_000)}, "Input/output error"),
    ({"fail_fsync": dict(error=errno.EIO)}, "Input/output error"),
    ({"fail_rename": dict(error=errno.EIO)}, "Input/output error"),
])
def test_a_failing_write_is_retried_explained_once_and_lands(fault, explained, tiny_dataset, tmp_path):
    paths = own_root(tiny_dataset, tmp_path)
    messages = []
    with FaultyFS(paths.root) as fs:
        (method, kwargs), = fault.items()
        # the first state file's write fails, under torch.save
        getattr(fs, method)(**kwargs, times=1, match="*step_*.pt*")
        result = train(config(paths), log=messages.append, model_overrides=TINY)
        assert [e for e in fs.events if e.kind == "fail"], "the fault never fired"
    assert result.status == "max_steps" and result.steps == 40
    retried = [m for m in messages if m.startswith("Checkpoint step 10")]
    assert len([m for m in retried if explained in m]) == 1 and "landed after 2 attempts" in retried[-1], messages
    # While step 10 waited to retry, later saves may have been skipped (training never waits): the last catches up.
    assert valid_steps(the_run(paths))[0] == 40 and not strays(paths)


def test_a_full_disk_makes_room_and_every_checkpoint_lands(tiny_dataset, tmp_path):
    pilot = train(config(own_root(tiny_dataset, tmp_path / "pilot"), max_steps=10),
                  log=lambda m: None, model_overrides=TINY)
    checkpoint = checkpoints.list_checkpoints(pilot.artifacts["checkpoints"])[0].stat().st_size
    paths = own_root(tiny_dataset, tmp_path)
    messages = []
    with FaultyFS(paths.root) as fs:
        # Room for the data, the artifacts and about five checkpoints, counted as Drive does: a deleted or
        # replaced file keeps its size in the trash until it is emptied.
        fs.set_quota(fs.usage + 6 * checkpoint + 200_000, trash=True)
        result = train(config(paths, max_steps=80, eval_every=5, checkpoint_every_steps=5), log=messages.append,
                       model_overrides=TINY)
    assert result.status == "max_steps" and result.steps == 80
    assert not [m for m in messages if "NOT saved" in m], messages
    run_dir = the_run(paths)
    assert valid_steps(run_dir)[0] == 80 and len(checkpoints.list_checkpoints(run_dir)) <= 2 and not strays(paths)
    assert runs.read_record(run_dir).status == "max_steps"


def test_a_disk_too_small_for_a_checkpoint_says_what_it_needs(tiny_dataset, tmp_path):
    paths = own_root(tiny_dataset, tmp_path)
    messages = []
    with FaultyFS(paths.root) as fs:
        fs.set_quota(fs.usage + 150_000)  # the artifacts fit; a checkpoint does not
        result = train(config(paths, max_steps=20), log=messages.append, model_overrides=TINY)
    assert result.steps == 20 and result.status == "interrupted"  # trained to the end; resumable from what is on disk
    full = [m for m in messages if "The disk is full: a checkpoint of this run needs about" in m]
    assert full and "Largest files under" in full[0] and "--keep_last" in full[0]
    assert any("final checkpoint" in m and "could not be written" in m for m in messages)
    assert runs.read_record(the_run(paths)).status == "interrupted" and not strays(paths)


def test_a_hung_drive_never_holds_training_and_the_end_is_bounded(tiny_dataset, tmp_path):
    paths = own_root(tiny_dataset, tmp_path)
    messages = []
    with FaultyFS(paths.root) as fs:
        fs.block_writes(match="*step_*.pt*")  # every state write hangs
        result = train(config(paths, final_wait_minutes=0.02), log=messages.append, model_overrides=TINY)
        # Every step trained while every write hung (how long a save held the loop: bench/faults.py).
        assert result.steps == 40 and result.status == "interrupted"  # resumable, not "finished"
        assert any("skipped, the previous write" in m for m in messages)
        assert any("did not reach the disk within 1 s" in m for m in messages)  # the end waited what it was told
        fs.release()
    time.sleep(0.5)  # the released write sees it was given up on and discards its file
    assert checkpoints.list_checkpoints(the_run(paths)) == [] and not strays(paths)
    assert runs.read_record(the_run(paths)).status == "running"  # nothing landed: resumable, never "finished"


def test_a_dropped_mount_waits_says_how_to_remount_and_lands_when_back(tiny_dataset, tmp_path):
    paths = own_root(tiny_dataset, tmp_path)
    messages = []
    with FaultyFS(paths.root) as fs:
        def drop_at_step_20(history):
            if history["val_step"][-1] == 20:
                fs.unmount(vanish=True)  # the folder is gone, as under a dropped mount
                threading.Timer(2.5, fs.remount).start()

        result = train(config(paths), on_eval=drop_at_step_20, log=messages.append, model_overrides=TINY)
        mkdirs = [e for e in fs.events if "mkdir" in e.kind]
    assert result.status == "max_steps" and result.steps == 40
    assert not mkdirs  # nothing was made again where the real folder should be
    # The writes under way wait for the mount, each says once how to remount, then land.
    explained = [m for m in messages if "mount_drive(force_remount=True)" in m and "Retrying" in m]
    assert explained and all(m.count("is gone") == 1 for m in explained), messages
    assert any("landed after" in m for m in messages), messages
    assert valid_steps(the_run(paths))[0] == 40 and not strays(paths)


def test_the_command_exits_on_the_first_ctrl_c_even_with_a_hung_drive(tiny_dataset, tmp_path):
    paths = own_root(tiny_dataset, tmp_path)
    spec = json.dumps([{"block_writes": {"match": "*step_*.pt*"}}])
    args = ["train", "--dataset", paths.dataset, "--checkpoint_dir", str(paths.root), "--model_type", "gru", "--preset",
            "cpu", "--device", "cpu", "--batch_size", "8", "--max_steps", "100000", "--eval_every", "100000",
            "--eval_windows", "8", "--checkpoint_every_steps", "20", "--checkpoint_every_minutes", "0",
            "--final_wait_minutes", "0.02", "--no_progress", *sum(([f"--{k}", str(v)] for k, v in TINY.items()), [])]
    process = subprocess.Popen([sys.executable, "-m", "testsupport.pyfaults", "--spec", spec, "--", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 60
    # a write has started, and hangs
    while not (paths.checkpoints.is_dir() and list(paths.checkpoints.rglob(".step_*"))):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.05)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=60)[0]  # ends past the hung write (it never returns by itself)
    assert process.returncode == 130, output
    assert "did not reach the disk" in output


def test_a_final_save_that_cannot_read_the_runs_record_waits_for_it_and_the_run_stays_resumable(tiny_dataset, tmp_path):
    """At the last step Drive starts failing every read of run.json (a save reads it to see whether
    another runtime took the run over, and models.csv is rebuilt from it): the saves wait for it, saying
    why once, never taking the failure for "nobody else owns the run" nor giving up; when the final wait
    runs out the run is not called finished, and the same command in the same process continues it
    once Drive answers again."""
    paths = own_root(tiny_dataset, tmp_path)
    messages = []
    with FaultyFS(paths.root) as fs:
        def fail_reads_at_the_end(history):
            if history["val_step"][-1] == 20:
                while runs.read_record(the_run(paths)).get("step") != 10:  # the step-10 save has landed whole
                    time.sleep(0.01)
                fs.fail("open", errno.EIO, match="run.json")
        result = train(config(paths, max_steps=20, final_wait_minutes=0.05), on_eval=fail_reads_at_the_end,
                       log=messages.append, model_overrides=TINY)
    assert result.status == "interrupted" and result.steps == 20, messages
    # The step-10 save's record (models.csv is rebuilt from run.json) and/or step 20's check: each says it once.
    waited = [m.split(":")[0] for m in messages if "Input/output error" in m and "Retrying" in m]
    assert waited and len(waited) == len(set(waited)) and not [m for m in messages if "NOT saved" in m], messages
    assert any("did not reach the disk within 3 s" in m for m in messages), messages
    assert valid_steps(the_run(paths)) == [10] and not strays(paths)
    resumed = train(config(paths, max_steps=20), log=messages.append, model_overrides=TINY)
    assert resumed.resumed_from_step == 10 and resumed.status == "max_steps" and valid_steps(the_run(paths))[0] == 20


def test_a_second_ctrl_c_while_the_final_save_waits_for_drive_lets_go_of_the_run(tiny_dataset, tmp_path):
    """The last save hangs on Drive and the user presses Ctrl-C twice: the second one ends the command
    at once, no thread of the run is left behind once Drive answers, and the run resumes in the same
    process straight away (nothing holds it)."""
    paths = own_root(tiny_dataset, tmp_path)
    before = set(threading.enumerate())
    with FaultyFS(paths.root) as fs:
        def hang_the_last_save(history):
            if history["val_step"][-1] == 20:
                fs.block_writes(match="*step_*.pt*")
                for after_s in (1.0, 1.5):  # twice, while the final save waits; to the process, as Colab's button does
                    threading.Timer(after_s, os.kill, (os.getpid(), signal.SIGINT)).start()

        with pytest.raises(KeyboardInterrupt):
            train(config(paths, max_steps=20, final_wait_minutes=2), on_eval=hang_the_last_save, log=lambda m: None,
                  model_overrides=TINY)
        fs.release()
    deadline = time.monotonic() + 10
    while [t for t in set(threading.enumerate()) - before if t.is_alive()] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert runs.read_record(the_run(paths)).owner.released and valid_steps(the_run(paths))[0] == 10
    resumed = train(config(paths, max_steps=20), log=lambda m: None, model_overrides=TINY)
    assert resumed.resumed_from_step == 10 and resumed.status == "max_steps"


def test_the_first_failure_on_drive_says_what_is_wrong_with_the_mount(tmp_path, monkeypatch):
    """A save under /content/drive that fails asks the mount itself before it explains: not mounted
    (an empty mount point), or a plain folder standing where Drive should be; each with its fix."""
    from midikit import storage
    from midikit.retry import Retry

    mount_point = tmp_path / "content" / "drive"
    monkeypatch.setattr(storage, "DRIVE_MOUNT_POINT", mount_point)
    run_dir = mount_point / "MyDrive" / "midikit_checkpoints" / "tiny" / "checkpoints" / "gru_20260101_000000"

    def explained_first_failure() -> str:
        messages, failures = [], iter([FileNotFoundError(errno.ENOENT, "No such file or directory",
                                                         str(run_dir / "run.json"))])

        def read_the_record():
            failure = next(failures, None)
            if failure is not None:
                raise failure
        Retry(messages.append, first_wait_s=0.01, probe=run_dir)(read_the_record, "Checkpoint step 10")
        return messages[0]

    mount_point.mkdir(parents=True)
    assert "Drive is not mounted" in explained_first_failure()
    (mount_point / "MyDrive").mkdir()
    assert "is a plain folder on this runtime's own disk, not Google Drive" in explained_first_failure()
