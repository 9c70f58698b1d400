"""Checkpoints: exact round trip, fallback past damaged files, rotation, the background writer
under failure, run discovery, and a real SIGKILL during writes."""

import errno
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from midikit import checkpoints
from midikit.checkpoints import inspect_run, list_checkpoints, load_latest, load_state, remove_file, save_state
from midikit.data.sampler import sample_windows
from midikit.errors import CheckpointError, StorageError
from midikit.models import ModelConfig, build_model
from midikit.retry import WriteAbandoned, retrying
from midikit.snapshots import SnapshotPool, to_cpu_snapshot
from midikit.train.setup import capture_rng_state, restore_rng_state
from midikit.writer import BackgroundWriter

VOCAB = 40
CONFIG = dict(
    model_type="transformer", vocab_size=VOCAB, context_length=16, dropout=0.1, d_model=32, nhead=4, num_layers=2,
    dim_feedforward=64
)


class Trainer:
    """A miniature of the real loop: model, AdamW, warm-up schedule, sampler generator, dropout."""

    def __init__(self):
        self.model = build_model(ModelConfig(**CONFIG))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-2)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: min(1.0, (step + 1) / 3))
        self.generator = torch.Generator().manual_seed(7)
        self.tokens = torch.arange(500) % VOCAB
        self.step = 0

    def train(self, steps):
        for _ in range(steps):
            x, y, _ = sample_windows(self.tokens, 4, 16, self.generator)
            logits = self.model(x)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1

    def state(self):
        return {
            "format": "midikit-train-state",
            "version": 1,
            "model_config": self.model.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None,
            "step": self.step,
            "rng": capture_rng_state(self.generator),
            "history": {"train_loss": [2.5, 2.25], "train_step": [1, 2]},
            "best_val_loss": float("inf"),
        }

    def load(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        restore_rng_state(state["rng"], self.generator)


def next_draws(generator):
    return (torch.rand(3), np.random.rand(3), random.random(), torch.randint(0, 10**6, (3,), generator=generator))


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def tiny_state(step, fill=None):
    return {"step": step, "weights": torch.full((1000,), float(step if fill is None else fill))}


def test_round_trip_resumes_bit_identically(tmp_path, one_thread):
    torch.manual_seed(0)
    original = Trainer()
    original.train(3)
    state = original.state()
    saved = to_cpu_snapshot(state)  # `state` aliases the live tensors, which training changes
    path = tmp_path / "step_00000003.pt"
    info = save_state(path, state)
    assert info.step == 3 and info.size_bytes == path.stat().st_size
    assert (tmp_path / "step_00000003.pt.sha256").read_text().split() == [info.sha256, path.name]

    expected_draws = next_draws(original.generator)
    original.train(2)

    torch.manual_seed(12345)  # scramble every RNG: the checkpoint alone must put them back
    np.random.seed(1)
    random.seed(2)
    loaded = load_state(path)
    assert_same(torch.load(path, weights_only=True), loaded)
    assert_same(saved, loaded)
    resumed = Trainer()
    resumed.load(loaded)
    assert_same(next_draws(resumed.generator), expected_draws)
    resumed.train(2)
    assert_same(resumed.model.state_dict(), original.model.state_dict())
    assert_same(resumed.optimizer.state_dict(), original.optimizer.state_dict())
    assert resumed.scheduler.get_last_lr() == original.scheduler.get_last_lr()


@pytest.mark.parametrize("value", [np.zeros(3), np.float64(0.5), torch.Generator()])
def test_snapshot_rejects_what_weights_only_cannot_load(value):
    with pytest.raises(TypeError, match=r"state\['history'\]\[1\] is a .*weights_only=True"):
        to_cpu_snapshot({"history": [1.0, value]})


def test_snapshot_reuses_buffers_without_sharing_with_the_source():
    live = {"w": torch.ones(4), "groups": [torch.zeros(2)]}
    first = to_cpu_snapshot(live)
    live["w"].add_(1)
    second = to_cpu_snapshot(live, reuse=first)
    assert second["w"] is first["w"] and torch.equal(second["w"], torch.full((4,), 2.0))
    live["w"].add_(1)
    assert torch.equal(second["w"], torch.full((4,), 2.0))


def write_steps(run_dir, steps):
    run_dir.mkdir(parents=True, exist_ok=True)
    return [save_state(run_dir / checkpoints.step_file_name(step), tiny_state(step)).path for step in steps]


def test_truncated_newest_falls_back_and_says_so(tmp_path):
    older, newest = write_steps(tmp_path, [1, 2])
    with open(newest, "r+b") as handle:
        handle.truncate(newest.stat().st_size // 2)
    messages = []
    path, state = load_latest(tmp_path, log=messages.append)
    assert path == older and state["step"] == 1
    assert len(messages) == 1 and newest.name in messages[0] and older.name in messages[0]
    assert "corrupt" in messages[0]


def test_flipped_byte_fails_the_checksum(tmp_path):
    older, newest = write_steps(tmp_path, [1, 2])
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_state(newest)
    messages = []
    assert load_latest(tmp_path, log=messages.append)[0] == older
    assert newest.name in messages[0]


def test_missing_checksum_means_not_valid(tmp_path):
    (only,) = write_steps(tmp_path, [5])
    checkpoints.checksum_path(only).unlink()
    assert checkpoints.verify_checkpoint(only)[0] == "unverified"
    with pytest.raises(CheckpointError, match="unverified"):
        load_state(only)
    messages = []
    assert load_latest(tmp_path, log=messages.append) is None
    assert only.name in messages[0]


def test_a_dropped_drive_raises_instead_of_looking_corrupt(tmp_path, monkeypatch):
    # Calling good checkpoints corrupt while Drive is down would make a resume start over.
    write_steps(tmp_path / "lstm_20260101_000000", [1])

    def dropped(path):
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    monkeypatch.setattr(checkpoints, "_sha256_of", dropped)
    with pytest.raises(StorageError, match="remount") as raised:
        load_latest(tmp_path / "lstm_20260101_000000", log=pytest.fail)
    assert not isinstance(raised.value, CheckpointError)


def test_leftover_temporary_file_is_ignored_then_cleaned_up(tmp_path):
    write_steps(tmp_path, [1])
    stray = tmp_path / ".step_00000002.pt.tmp-4242-0"
    stray.write_bytes(b"half a checkpoint")
    record_tmp = tmp_path / ".run.json.tmp-4242-1"  # the record keeper's: never touched here
    record_tmp.write_bytes(b"{")
    assert list_checkpoints(tmp_path) == [tmp_path / "step_00000001.pt"]
    assert load_latest(tmp_path, log=pytest.fail)[1]["step"] == 1
    assert checkpoints.remove_temporaries(tmp_path) == 1
    assert not stray.exists() and record_tmp.exists()


def test_rotation_keeps_newest_and_best_and_empties_what_it_drops(tmp_path, monkeypatch):
    # Drive keeps deleted (and replaced) files in its trash: each must be emptied first.
    sizes_when_deleted = []
    real_unlink = Path.unlink

    def spy_unlink(self, missing_ok=False):
        if self.suffix == ".pt":
            sizes_when_deleted.append((self.name, self.stat().st_size))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", spy_unlink)
    replaced_best = None
    for step in range(1, 6):
        checkpoints.write_checkpoint(tmp_path, to_cpu_snapshot(tiny_state(step)), step, best=step in (2, 4),
                                     keep_last=2)
        if step == 2:  # a second name for the inode of best.pt at step 2: shows what happens to the replaced file
            replaced_best = tmp_path / "replaced_best"
            os.link(tmp_path / "best.pt", replaced_best)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.pt", "best.pt.sha256", "replaced_best", "step_00000004.pt", "step_00000004.pt.sha256", "step_00000005.pt",
        "step_00000005.pt.sha256",
    ]
    assert sorted(sizes_when_deleted) == [("step_00000001.pt", 0), ("step_00000002.pt", 0), ("step_00000003.pt", 0)]
    assert replaced_best.stat().st_size == 0  # emptied after best.pt was replaced, never before
    assert load_state(tmp_path / "best.pt")["step"] == 4

    # Rotation never touches later steps (a write still landing); continuing from an older step on
    # purpose drops them explicitly.
    checkpoints.write_checkpoint(tmp_path, to_cpu_snapshot(tiny_state(3)), 3, best=False, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000005.pt", "step_00000004.pt", "step_00000003.pt"]
    assert [p.name for p in checkpoints.discard_newer_than(tmp_path, 3)] == ["step_00000005.pt", "step_00000004.pt"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003.pt"]


def test_a_vanished_run_folder_is_never_recreated(tmp_path):
    gone = tmp_path / "lstm_20260101_000000"
    with pytest.raises(StorageError, match="gone: Google Drive's mount dropped") as raised:
        checkpoints.write_checkpoint(gone, to_cpu_snapshot(tiny_state(1)), 1, best=False, keep_last=2)
    assert raised.value.transient and not gone.exists()


def test_the_writer_returns_at_once_and_the_snapshot_is_the_state_at_save_time(tmp_path):
    release = threading.Event()
    live = tiny_state(1)
    snapshot = to_cpu_snapshot(live)

    def job(abandoned):
        assert release.wait(timeout=30)  # a slow Drive
        return checkpoints.write_checkpoint(tmp_path, snapshot, 1, best=False, keep_last=2, abandoned=abandoned)

    writer = BackgroundWriter(log=pytest.fail)
    future = writer.submit(job, "checkpoint step 1")
    assert not future.done() and not (tmp_path / "step_00000001.pt").exists()
    live["weights"].add_(100.0)  # training goes on and changes its tensors in place
    release.set()
    assert writer.close(timeout=30) and future.result().step == 1
    assert torch.equal(load_state(tmp_path / "step_00000001.pt")["weights"], torch.ones(1000))


def test_a_hung_write_is_skipped_then_abandoned_and_discards_its_file(tmp_path):
    release = threading.Event()

    def write(step, hang=False):
        def job(abandoned):
            if hang:
                release.wait(timeout=30)
            return checkpoints.write_checkpoint(tmp_path, to_cpu_snapshot(tiny_state(step)), step, False, 2, abandoned)
        return job

    messages = []
    writer = BackgroundWriter(log=messages.append, busy_wait_s=0.05, abandon_after_s=0.3)
    hung = writer.submit(write(1, hang=True), "checkpoint step 1")
    assert writer.submit(write(2), "checkpoint step 2") is None  # skipped, not waiting for the hung write
    assert not hung.done() and "step 2: skipped" in messages[-1]
    time.sleep(0.3)
    landed = writer.submit(write(3), "checkpoint step 3")  # the hung write is abandoned; this one goes on
    assert "step 1: abandoned" in messages[-1]
    assert writer.close(timeout=30) and landed.result().step == 3
    release.set()  # the abandoned write returns at last: its file is discarded, not installed
    with pytest.raises(WriteAbandoned):
        hung.result(timeout=30)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003.pt"]
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_the_snapshot_pool_never_hands_out_a_copy_a_write_still_holds():
    from concurrent.futures import Future

    pool = SnapshotPool(size=2)
    first, event = pool.take(tiny_state(1))
    assert event is None  # CPU tensors: copied at once
    in_flight, hung = Future(), Future()
    pool.hold(first, in_flight)
    second, _ = pool.take(tiny_state(2))
    assert second["weights"] is not first["weights"]
    pool.hold(second, hung)
    assert pool.take(tiny_state(3)) is None  # both copies held: the save is skipped, nothing is overwritten
    assert torch.equal(first["weights"], torch.full((1000,), 1.0))
    in_flight.set_result(None)
    third, _ = pool.take(tiny_state(3))
    assert third["weights"] is first["weights"] and torch.equal(third["weights"], torch.full((1000,), 3.0))
    assert torch.equal(second["weights"], torch.full((1000,), 2.0))  # the hung write's copy is untouched


def test_retrying_waits_out_a_dropped_mount_and_says_so_once():
    failures = iter([OSError(errno.ENOTCONN, "Transport endpoint is not connected"), RuntimeError("wrapped")])

    def flaky():
        failure = next(failures, None)
        if isinstance(failure, RuntimeError):  # as torch.save wraps a failing file: the OSError is __context__
            try:
                raise OSError(errno.EIO, "Input/output error")
            except OSError:
                raise failure
        if failure is not None:
            raise failure
        return "landed"

    messages = []
    assert retrying(flaky, "Checkpoint step 7", messages.append, retry_wait_s=0.01) == "landed"
    assert len(messages) == 2 and "remount" in messages[0] and "landed after 3 attempts" in messages[1]

    def wrong_kind_of_file():
        raise OSError(errno.EISDIR, "Is a directory")

    with pytest.raises(OSError):  # not a disk hiccup: raised at once, never retried
        retrying(wrong_kind_of_file, "x", pytest.fail)


def test_inspect_run_reports_each_file(tmp_path):
    run_dir = tmp_path / "gru_20260101_000000"
    write_steps(run_dir, (1, 2, 3))
    checkpoints.checksum_path(run_dir / "step_00000003.pt").unlink()
    with open(run_dir / "step_00000002.pt", "r+b") as handle:
        handle.truncate(10)
    checkpoints._copy_checkpoint(run_dir / "step_00000001.pt", run_dir / "best.pt",
                                 checkpoints._sha256_of(run_dir / "step_00000001.pt"))
    files = inspect_run(run_dir)
    assert [(f["name"], f["step"], f["status"]) for f in files] == [
        ("step_00000003.pt", 3, "unverified"), ("step_00000002.pt", 2, "corrupt"), ("step_00000001.pt", 1, "valid"),
        ("best.pt", 1, "valid"),
    ]
    assert files[1]["size_bytes"] == 10 and files[0]["age_s"] >= 0

    remove_file(run_dir / "step_00000003.pt")
    assert not (run_dir / "step_00000003.pt").exists()


# Imports torch once, then forks a fresh writer process per line on stdin (and says its pid),
# so the test can SIGKILL many real writers without paying for the import each time.
WRITERS = """
import os, sys, torch
from pathlib import Path
from midikit.checkpoints import load_latest, write_checkpoint
run_dir = Path(sys.argv[1])
run_dir.mkdir(parents=True, exist_ok=True)
for _ in sys.stdin:
    pid = os.fork()
    if pid == 0:
        latest = load_latest(run_dir, log=lambda message: None)
        step = latest[1]["step"] if latest else 0
        first = True
        while True:
            step += 1
            write_checkpoint(run_dir, {"step": step, "weights": torch.full((1_000_000,), float(step))}, step,
                             best=step % 3 == 0, keep_last=2)
            if first:  # say the pid once there is something to resume from
                print(os.getpid(), flush=True)
                first = False
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


def test_sigkill_during_writes_never_leaves_a_corrupt_latest(tmp_path):
    rng = random.Random(0)
    run_dir = tmp_path / "lstm_20260101_000000"
    steps_seen = []
    writers = subprocess.Popen([sys.executable, "-c", WRITERS, str(run_dir)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(6):
            writers.stdin.write("go\n")
            writers.stdin.flush()
            pid = int(writers.stdout.readline())
            time.sleep(rng.uniform(0.05, 0.4))
            os.kill(pid, signal.SIGKILL)
            assert writers.stdout.readline().strip() == "reaped"
            latest = load_latest(run_dir, log=lambda message: None)
            assert latest is not None
            path, state = latest
            assert path.name == checkpoints.step_file_name(state["step"])
            assert torch.equal(state["weights"], torch.full((1_000_000,), float(state["step"])))
            # A killed write leaves an unverified file or a stray temporary, never a corrupt checkpoint.
            assert [f for f in inspect_run(run_dir) if f["status"] == "corrupt"] == []
            steps_seen.append(state["step"])
    finally:
        writers.kill()
        writers.wait()
    assert steps_seen == sorted(steps_seen) and steps_seen[-1] > steps_seen[0]
