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
from midikit.checkpoints import (
    CheckpointError,
    CheckpointWriter,
    capture_rng_state,
    find_resumable_run,
    inspect_run,
    list_checkpoints,
    list_runs,
    load_latest,
    load_state,
    read_run_info,
    remove_file,
    restore_rng_state,
    save_state,
    to_cpu_snapshot,
    write_run_info,
)
from midikit.data.sampler import sample_windows
from midikit.models import ConfigError, ModelConfig, build_model
from midikit.storage import StorageError

VOCAB = 40
CONFIG = dict(
    model_type="transformer", vocab_size=VOCAB, context_length=16, dropout=0.1, d_model=32, nhead=4, num_layers=2, dim_feedforward=64
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
            x, y = sample_windows(self.tokens, 4, 16, self.generator)
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
    with pytest.raises(StorageError, match="Remount") as raised:
        load_latest(tmp_path / "lstm_20260101_000000", log=pytest.fail)
    assert not isinstance(raised.value, CheckpointError)
    with pytest.raises(StorageError, match="Remount"):
        find_resumable_run(tmp_path, "lstm")


def test_leftover_temporary_file_is_ignored_then_cleaned_up(tmp_path):
    write_steps(tmp_path, [1])
    stray = tmp_path / ".step_00000002.pt.tmp-4242"
    stray.write_bytes(b"half a checkpoint")
    trainer_tmp = tmp_path / ".run.json.tmp-4242"  # someone else's: never touched
    trainer_tmp.write_bytes(b"{")
    assert list_checkpoints(tmp_path) == [tmp_path / "step_00000001.pt"]
    assert load_latest(tmp_path, log=pytest.fail)[1]["step"] == 1
    with CheckpointWriter(tmp_path, log=lambda message: None) as writer:
        writer.save(tiny_state(3), 3)
    assert not stray.exists() and trainer_tmp.exists()


def test_rotation_keeps_newest_and_best_and_truncates_before_deleting(tmp_path, monkeypatch):
    # Drive keeps deleted (and replaced) files in its trash: each must be emptied first.
    sizes_when_dropped = []
    real_unlink, real_replace = Path.unlink, os.replace

    def spy_unlink(self, missing_ok=False):
        if self.suffix == ".pt":
            sizes_when_dropped.append((self.name, self.stat().st_size))
        real_unlink(self, missing_ok=missing_ok)

    def spy_replace(src, dst):
        if Path(dst).suffix == ".pt" and Path(dst).exists():
            sizes_when_dropped.append((Path(dst).name, Path(dst).stat().st_size))
        real_replace(src, dst)

    monkeypatch.setattr(Path, "unlink", spy_unlink)
    monkeypatch.setattr(os, "replace", spy_replace)
    messages = []
    with CheckpointWriter(tmp_path, keep_last=2, log=messages.append) as writer:
        for step in range(1, 6):
            writer.save(tiny_state(step), step, best=step in (2, 4))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.pt", "best.pt.sha256", "step_00000004.pt", "step_00000004.pt.sha256", "step_00000005.pt", "step_00000005.pt.sha256",
    ]
    assert sorted(sizes_when_dropped) == [("best.pt", 0), ("step_00000001.pt", 0), ("step_00000002.pt", 0), ("step_00000003.pt", 0)]
    assert load_state(tmp_path / "best.pt")["step"] == 4
    assert writer.saves_completed == 5 and writer.last_error is None
    assert len(messages) == 5 and "step_00000002.pt + best.pt" in messages[1] and "MiB" in messages[1]

    # A save at an earlier step (a resume from an older checkpoint) drops the abandoned later files.
    with CheckpointWriter(tmp_path, keep_last=2, log=messages.append) as writer:
        writer.save(tiny_state(3), 3)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003.pt"]


def test_keep_last_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="keep_last"):
        CheckpointWriter(tmp_path, keep_last=0)


def hold_writes(monkeypatch) -> threading.Event:
    """Make every checkpoint write wait until the returned event is set (a slow or hung Drive)."""
    release = threading.Event()
    real_save_state = checkpoints.save_state

    def held_save_state(path, state):
        assert release.wait(timeout=30)
        return real_save_state(path, state)

    monkeypatch.setattr(checkpoints, "save_state", held_save_state)
    return release


def test_save_returns_before_the_write_and_snapshots_the_live_tensors(tmp_path, monkeypatch):
    release = hold_writes(monkeypatch)
    live = tiny_state(1)
    writer = CheckpointWriter(tmp_path, log=lambda message: None)
    writer.save(live, 1)
    assert not (tmp_path / "step_00000001.pt").exists()  # save() is back; the write is still held
    live["weights"].add_(100.0)  # training goes on and changes its tensors in place
    release.set()
    writer.close()
    assert torch.equal(load_state(tmp_path / "step_00000001.pt")["weights"], torch.ones(1000))


def test_a_hung_write_skips_later_saves_instead_of_stalling_training(tmp_path, monkeypatch):
    release = hold_writes(monkeypatch)
    messages = []
    writer = CheckpointWriter(tmp_path, log=messages.append, busy_timeout_s=0.05)
    writer.save(tiny_state(1), 1)
    writer.save(tiny_state(2), 2)  # the first write hangs: this one gives up instead of waiting
    assert writer.saves_skipped == 1 and "step 2 skipped" in messages[-1]
    release.set()
    writer.save(tiny_state(3), 3, wait=True)  # the final save always waits, then lands
    writer.close()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003.pt", "step_00000001.pt"]


def flaky_torch_save(monkeypatch, failures):
    """torch.save that fails like a dropped Drive mount `failures` times (None: always)."""
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if failures is None or calls["n"] <= failures:
            f.write(b"partial")
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    return calls


def test_failed_writes_are_retried_and_land(tmp_path, monkeypatch):
    calls = flaky_torch_save(monkeypatch, failures=2)
    messages = []
    with CheckpointWriter(tmp_path, retries=3, retry_wait_s=0.01, log=messages.append) as writer:
        writer.save(tiny_state(7), 7)
    assert calls["n"] == 3
    assert sum("retrying" in m for m in messages) == 2 and "Checkpoint saved" in messages[-1]
    assert writer.last_error is None and writer.saves_completed == 1
    assert load_latest(tmp_path, log=pytest.fail)[1]["step"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000007.pt", "step_00000007.pt.sha256"]


def test_a_write_that_keeps_failing_is_reported_not_raised(tmp_path, monkeypatch):
    flaky_torch_save(monkeypatch, failures=None)
    messages = []
    writer = CheckpointWriter(tmp_path, retries=1, retry_wait_s=0.01, log=messages.append)
    writer.save(tiny_state(1), 1)
    writer.wait()
    assert isinstance(writer.last_error, StorageError)
    assert writer.last_error.__cause__.errno == errno.ENOTCONN and "Remount" in str(writer.last_error)
    assert "NOT saved" in messages[-1] and writer.saves_completed == 0
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()  # Drive is back: the next save catches up
    writer.save(tiny_state(2), 2, wait=True)
    writer.close()
    assert writer.last_error is None and writer.saves_completed == 1
    assert load_latest(tmp_path, log=pytest.fail)[1]["step"] == 2


def make_run(checkpoints_dir, run_id, status, steps=(1,), damage=None):
    run_dir = checkpoints_dir / run_id
    paths = write_steps(run_dir, steps)
    write_run_info(run_dir, {"run_id": run_id, "model_type": run_id.split("_")[0], "status": status, "dataset": "nottingham"})
    if damage == "unverified":
        checkpoints.checksum_path(paths[-1]).unlink()
    elif damage == "corrupt":
        with open(paths[-1], "r+b") as handle:
            handle.truncate(10)
    return run_dir


def test_find_resumable_run_skips_finished_and_invalid_runs(tmp_path):
    resumable = make_run(tmp_path, "lstm_20260101_000000", "running", steps=(3, 4))
    make_run(tmp_path, "lstm_20260102_000000", "finished")
    make_run(tmp_path, "lstm_20260103_000000", "running", damage="corrupt")
    make_run(tmp_path, "lstm_20260104_000000", "running", damage="unverified")
    (tmp_path / "lstm_20260105_000000").mkdir()  # killed before its first checkpoint
    transformer = make_run(tmp_path, "transformer_20250101_000000", "running")
    assert find_resumable_run(tmp_path, "lstm") == resumable
    assert find_resumable_run(tmp_path, "transformer") == transformer
    assert find_resumable_run(tmp_path, "gru") is None
    assert find_resumable_run(tmp_path / "missing", "lstm") is None
    assert read_run_info(resumable)["status"] == "running" and "updated" in read_run_info(resumable)


def test_inspect_and_list_runs_report_each_file(tmp_path):
    run_dir = make_run(tmp_path, "gru_20260101_000000", "running", steps=(1, 2, 3))
    checkpoints.checksum_path(run_dir / "step_00000003.pt").unlink()
    with open(run_dir / "step_00000002.pt", "r+b") as handle:
        handle.truncate(10)
    checkpoints._copy_checkpoint(run_dir / "step_00000001.pt", run_dir / "best.pt", checkpoints._sha256_of(run_dir / "step_00000001.pt"))
    files = inspect_run(run_dir)
    assert [(f["name"], f["step"], f["status"]) for f in files] == [
        ("step_00000003.pt", 3, "unverified"), ("step_00000002.pt", 2, "corrupt"), ("step_00000001.pt", 1, "valid"), ("best.pt", 1, "valid"),
    ]
    assert files[1]["size_bytes"] == 10 and files[0]["age_s"] >= 0
    (run,) = list_runs(tmp_path)
    assert (run["run_id"], run["model_type"], run["status"], run["newest_step"]) == ("gru_20260101_000000", "gru", "running", 1)

    remove_file(run_dir / "step_00000003.pt")
    assert not (run_dir / "step_00000003.pt").exists()


# Imports torch once, then forks a fresh writer process per line on stdin (and says its pid),
# so the test can SIGKILL many real writers without paying for the import each time.
WRITERS = """
import os, sys, torch
from midikit.checkpoints import CheckpointWriter, load_latest
run_dir = sys.argv[1]
for _ in sys.stdin:
    pid = os.fork()
    if pid == 0:
        latest = load_latest(run_dir, log=lambda message: None)
        step = latest[1]["step"] if latest else 0
        writer = CheckpointWriter(run_dir, keep_last=2, log=lambda message: None)
        while True:
            step += 1
            writer.save({"step": step, "weights": torch.full((1_000_000,), float(step))}, step, best=step % 3 == 0)
            if writer.saves_completed == 0:  # say the pid once there is something to resume from
                writer.wait()
                print(os.getpid(), flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


def test_sigkill_during_writes_never_leaves_a_corrupt_latest(tmp_path):
    rng = random.Random(0)
    run_dir = tmp_path / "lstm_20260101_000000"
    steps_seen = []
    writers = subprocess.Popen([sys.executable, "-c", WRITERS, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
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
