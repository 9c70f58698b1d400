"""How long a checkpoint holds training up, measured the way training takes one.

The training thread's part of a save is `SnapshotPool.take` (the recorder's path): copies queued into
CPU buffers that the pool's own thread made when the run started (pinned on a GPU, so the copies
run on a side stream beside the next forward and backward), and the best weights the same way
through a second pool. The next optimizer step waits for those copies on the GPU (`after_copy`).
A write thread then waits for the copies and writes the file, as the recorder's writer does.

The stall of a save is how much longer the training step that carries it takes than a plain one
(wall clock, the device synchronised before and after); "while it is written" is the mean extra
time of the next steps, while the write runs beside them. Used by train_bench.py and gpu_check.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import torch

from midikit import snapshots
from midikit.train import train_step
from midikit.train.recorder import adamw_buffer_spec

PLAIN_STEPS = 7  # plain steps timed for the median
AFTER_STEPS = 3  # steps timed after each save, while its file is written


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_step(training, batch, save=None) -> float:
    _sync(training.device)
    started = time.perf_counter()
    copied = save() if save is not None else None
    train_step(training, *batch, 1.0, wait_for=copied)
    _sync(training.device)
    return time.perf_counter() - started


def _write_when_copied(snapshot, copied, path: Path, done: Future) -> None:
    """The writer's part: wait for the copies, then write the file (off the training thread)."""
    try:
        if copied is not None:
            copied.synchronize()
        torch.save(snapshot, path)
        done.set_result(path)
    except BaseException as exc:
        done.set_exception(exc)


class _Saver:
    """Takes saves as the recorder does: state (+ weights) snapshots from prepared pools, then a write thread."""

    def __init__(self, training, folder: Path, prepare: bool = True):
        model = training.raw_model
        self.training, self.folder = training, folder
        self.pool, self.weights_pool = snapshots.SnapshotPool(2), snapshots.SnapshotPool(2)
        self.fill = None
        if prepare:
            spec = snapshots.buffer_spec(model.state_dict().values())
            self.fill = self.pool.prepare(spec + adamw_buffer_spec(model), training.device)
            self.weights_fill = self.weights_pool.prepare(spec, training.device)
        self.writes: list[Future] = []

    def state(self) -> dict:
        training = self.training
        return {"model": training.raw_model.state_dict(), "optimizer": training.optimizer.state_dict(),
                "scheduler": training.scheduler.state_dict()}

    def save(self, with_weights: bool):
        snapshot, copied = self.pool.take(self.state())
        weights = None
        if with_weights:
            weights, copied = self.weights_pool.take(self.training.raw_model.state_dict())
        done: Future = Future()
        payload = {"state": snapshot, "weights": weights}
        threading.Thread(target=_write_when_copied, args=(payload, copied, self.folder / f"{len(self.writes)}.pt",
                                                          done),
                         name="stall-writer", daemon=True).start()
        self.pool.hold(snapshot, done)
        if weights is not None:
            self.weights_pool.hold(weights, done)
        self.writes.append(done)
        return copied  # the next optimizer step waits for the copies

    def wait(self) -> None:
        for write in self.writes:
            write.result(timeout=600)


def measure_save_stall(training, batch, saves: int = 3) -> dict:
    """Seconds a save adds to the step that takes it: the first save (pool filled at the start, as
    in a run), warm saves (median and worst; the state's buffers reused, every other one carrying
    the best weights),
    the first save of a pool nobody prepared (what midikit did before), and the step time while a
    file is written. `training` comes from build_training and has taken a step (AdamW's state exists)."""
    folder = Path(tempfile.mkdtemp(prefix="save_stall_"))
    plain = statistics.median(_timed_step(training, batch) for _ in range(PLAIN_STEPS))
    saver = _Saver(training, folder)
    saver.fill.result(timeout=600)  # a run fills while it compiles and warms up: long done by its first save
    saver.weights_fill.result(timeout=600)
    first = _timed_step(training, batch, lambda: saver.save(with_weights=True)) - plain
    after = [_timed_step(training, batch) - plain for _ in range(AFTER_STEPS)]
    saver.wait()
    warm = []
    for i in range(saves):
        warm.append(_timed_step(training, batch, lambda: saver.save(with_weights=i % 2 == 0)) - plain)
        after += [_timed_step(training, batch) - plain for _ in range(AFTER_STEPS)]
        saver.wait()
    cold = _Saver(training, folder, prepare=False)
    unprepared = _timed_step(training, batch, lambda: cold.save(with_weights=True)) - plain
    cold.wait()
    filled = saver.pool.filled
    state_bytes = sum(b.numel() * b.element_size() for b in filled.buffers) if filled else 0
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    return {
        "plain_step_s": plain, "first_s": max(0.0, first), "warm_s": max(0.0, statistics.median(warm)),
        "worst_warm_s": max(0.0, max(warm)), "unprepared_s": max(0.0, unprepared),
        "while_written_s": max(0.0, statistics.mean(after)), "fill_s": filled.seconds if filled else None,
        "fill_thread": filled.thread if filled else None, "state_gib": state_bytes / 2**30,
        "pinned": bool(filled and any(pinned for _, _, pinned in filled.spec)),
    }
