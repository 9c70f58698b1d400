"""The `Recorder`: everything a run leaves on disk, written off the training thread.

It owns the best weights (a device copy until they are on disk), `models/<run_id>.pth`, the original project's
artifacts, the run's record (through its `RecordKeeper`) and the background writer. The training
thread calls `new_best`, `due` and `save`; each save becomes one immutable `SaveJob` (CPU snapshots
of the state and, when they changed, the best weights) handed to the writer, and comes back as a
`SaveOutcome` through a Future. Nothing else is shared between the two threads.

Order within one save: the .pth (when the best changed), the state file (+ best.pt), the
artifacts, the record. A .pth that cannot be written is carried inside the state file instead
(`best_model`), so a disconnect right after never loses the best weights.
"""

from __future__ import annotations

import functools
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace

import torch

from .. import checkpoints, owners
from ..artifacts import RunReport, remove_temporaries, write_run_artifacts, write_weights
from ..models import count_parameters
from ..retry import Retry, WriteAbandoned
from ..snapshots import SnapshotPool, buffer_spec, to_cpu_snapshot
from ..storage import DatasetPaths
from ..writer import BackgroundWriter
from .state import TrainState

BEST_SAVE_COST_FACTOR = 20  # a new best is checkpointed when the last save cost < 1/20 of the time since
PLOT_EVERY_SECONDS = 60.0  # the loss plot is redrawn at most this often (and at the end)
RECORD_WAIT_SECONDS = 30.0  # how long a save waits for run.json to be written
GIVE_UP_AFTER_SECONDS = 600.0  # how long a save during training waits out Drive before it gives up
ANSWERED = "Drive answered"  # said once a read that waited for Drive works


@dataclass(frozen=True)
class SaveJob:
    step: int
    best: bool
    state: dict | None  # CPU snapshot; None when the state on disk is already this step's
    copied: object  # a CUDA event the snapshot's copies complete (None on the CPU)
    weights: dict | None  # CPU snapshot for the .pth, or None when it is unchanged
    weights_step: int | None
    previous_weights_step: int | None  # what the .pth holds if this job's weights do not land
    report: RunReport
    plot: bool


@dataclass(frozen=True)
class SaveOutcome:
    step: int
    state_saved: bool
    weights_step: int | None  # what the .pth holds after this save
    taken_over: bool = False


@dataclass(frozen=True)
class Saving:
    """A save handed to the writer: its Future (a SaveOutcome), and the CUDA event its copies complete
    (None on the CPU), which the next optimizer update waits for (`train_step(..., wait_for=...)`)."""

    future: Future | None  # None: the save was skipped
    copied: object = None


SKIPPED = Saving(None)  # what `save` gives when the previous write is still running


class Recorder:
    def __init__(self, paths: DatasetPaths, state: TrainState, claimed, model, log=print,
                 resumed_step: int | None = None, writer: BackgroundWriter | None = None, retry_wait_s: float = 2.0):
        """`claimed`: what made this process the run's writer (`start.claim_run`)."""
        self.paths, self.run_dir, self.log = paths, paths.run_checkpoints(state.run_id), log
        self.owner, self.keeper = claimed.owner, claimed.keeper
        weights_step, pending_weights = claimed.weights_step, claimed.pending_weights
        self.writer = writer or BackgroundWriter(log=log)
        # Double-buffered CPU copies of the state and of the best weights, their first buffers made now on the
        # pools' own thread (pinned on a GPU: about 12 bytes per parameter), so no save allocates on this thread.
        self.pool = SnapshotPool(size=2)
        self.weights_pool = SnapshotPool(size=2)
        device = next(model.parameters()).device
        self.pool.prepare(buffer_spec(model.state_dict().values()) + adamw_buffer_spec(model), device)
        self.weights_pool.prepare(buffer_spec(model.state_dict().values()), device)
        self.retry_wait_s = retry_wait_s
        self.parameters = count_parameters(model)
        self.resumed_step = resumed_step  # the step already on disk when this process started
        self.weights_step = weights_step  # the step whose weights the .pth holds (None: no .pth yet)
        self._best, self._best_step = pending_weights, (state.best_step if pending_weights is not None else None)
        self._pending: list[Future] = []
        self._last_save_end, self._last_save_cost, self._last_plot = time.monotonic(), 0.0, -float("inf")
        self.longest_stall = 0.0  # the longest a save held the training thread, in seconds
        self._taken_over = False
        self._closed: bool | None = None
        self.last_outcome: SaveOutcome | None = None

    # -- on the training thread ------------------------------------------------
    def new_best(self, model, step: int) -> None:
        """Keep a device copy of the best weights until they are on disk."""
        self._best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._best_step = step

    def due(self, state: TrainState, improved: bool) -> bool:
        """Checkpoint on schedule, and at a new best unless saving has been costly lately."""
        tc, now = state.train_config, time.monotonic()
        time_due = tc.checkpoint_every_minutes > 0 and now - self._last_save_end >= tc.checkpoint_every_minutes * 60
        step_due = bool(tc.checkpoint_every_steps) and state.step % tc.checkpoint_every_steps == 0
        best_due = improved and now - self._last_save_end >= BEST_SAVE_COST_FACTOR * self._last_save_cost
        return state.step < state.total_steps and (time_due or step_due or best_due)

    def save(self, state: TrainState, training, rngs: list, status: str = "running", best: bool = False,
             wait_s: float = 0.0) -> Saving:
        """Hand one save to the writer; its `future` is None when it was skipped (the previous write still
        runs after `wait_s`, or the writer's short wait; the final save passes the time it may wait).
        `rngs`: every process's RNG states (one entry without torchrun)."""
        started = time.monotonic()
        if wait_s:
            self.writer.wait(wait_s)
        if self.taken_over or not self.writer.make_room(f"checkpoint step {state.step}"):
            return SKIPPED
        on_disk = status != "running" and state.step == self.resumed_step  # resumed at the end: nothing new to save
        snapshot, copied = None, None
        if not on_disk:
            taken = self.pool.take(state.to_state(training.raw_model, training.optimizer, training.scheduler,
                                                  training.scaler, rngs[0], rngs if len(rngs) > 1 else None))
            if taken is None:
                self.log(f"checkpoint step {state.step}: skipped, every copy of the state is still held by a write.")
                return SKIPPED
            snapshot, copied = taken
        weights, weights_step, weights_copied = self._weights_to_send(state, training.raw_model)
        copied = weights_copied or copied  # queued after the state's on the same stream: its event covers both
        plot = status != "running" or started - self._last_plot >= PLOT_EVERY_SECONDS
        job = SaveJob(state.step, best, snapshot, copied, weights, weights_step, self.weights_step,
                      self.report(state, status, snapshot), plot)
        future = self.writer.start(functools.partial(self._write, job), f"checkpoint step {state.step}")
        if snapshot is not None:
            self.pool.hold(snapshot, future)
        if weights is not None:
            self.weights_pool.hold(weights, future)
        self._pending.append(future)
        self._last_plot = started if plot else self._last_plot
        self._last_save_end = time.monotonic()
        self._last_save_cost = self._last_save_end - started
        if status == "running":  # the final save may wait (bounded): training is over by then
            self.longest_stall = max(self.longest_stall, self._last_save_cost)
        return Saving(future, copied)

    def _weights_to_send(self, state: TrainState, model) -> tuple[dict | None, int | None, object]:
        """(CPU copy of the weights the .pth should hold, their step, the CUDA event of its copies), or Nones:
        copied like the state (pinned buffers, the side stream), never synchronously on this thread."""
        if self._best is not None and self._best_step != self.weights_step:
            weights, step = self._best, self._best_step
        elif state.best_val_loss is None and self.weights_step is None:  # before the first evaluation: the current ones
            weights, step = model.state_dict(), state.step
        else:
            return None, None, None
        taken = self.weights_pool.take(weights)
        if taken is None:  # both copies held by writes (one hung): the device copy waits for the next save
            return None, None, None
        return taken[0], step, taken[1]

    def collect(self) -> None:
        """Take in the outcomes of finished saves: what the .pth holds now, whether the run was taken over."""
        for future in [f for f in self._pending if f.done()]:
            self._pending.remove(future)
            outcome = future.result() if future.exception() is None else None
            if outcome is None:
                continue
            self.last_outcome = outcome
            self._taken_over = self._taken_over or outcome.taken_over
            if outcome.weights_step is not None:
                self.weights_step = outcome.weights_step
            if self._best is not None and self.weights_step == self._best_step:
                self._best = None  # on disk now: free the device copy
        if self.keeper.lost.is_set():
            self._taken_over = True

    @property
    def taken_over(self) -> bool:
        """Whether another process claimed the run (learnt from the last save or the heartbeat)."""
        self.collect()
        return self._taken_over

    def report(self, state: TrainState, status: str, snapshot: dict | None = None) -> RunReport:
        # The history is CPU tensors, copied at once even where the snapshot's GPU copies are still queued.
        history = snapshot["history"] if snapshot is not None else to_cpu_snapshot(state.history.to_state())
        metrics = {
            "steps": state.step, "epochs": state.epoch, "total_steps": state.total_steps,
            "tokens_seen": state.tokens_seen, "elapsed_seconds": state.elapsed_seconds(), "parameters": self.parameters,
            "best_val_loss": state.best_val_loss,
            "best_step": state.best_step if state.best_val_loss is not None else None,
            "final_train_loss": state.final_train_loss(), "longest_save_stall_s": round(self.longest_stall, 3),
        }
        return RunReport(state.run_id, status, state.model_config.to_dict(), state.train_config.to_dict(),
                         dict(state.dataset), metrics, history, self.weights_step)

    def close(self, timeout: float | None) -> bool:
        """Wait (at most `timeout`) for the last save, then release the run, waiting out Drive for the
        rest of `timeout` (at least RECORD_WAIT_SECONDS, or `timeout` when shorter); True when it landed.
        Closing again does nothing and says what the first close found."""
        if self._closed is not None:
            return self._closed
        self._closed = self._close(timeout)
        return self._closed

    def _close(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        landed = self.writer.close(timeout)
        self.collect()
        record_wait = (RECORD_WAIT_SECONDS if timeout is None
                       else max(deadline - time.monotonic(), min(timeout, RECORD_WAIT_SECONDS)))
        self.keeper.close(release=not self._taken_over, timeout=record_wait, retry_wait_s=self.retry_wait_s)
        return landed

    # -- on the writer's thread -------------------------------------------------
    def _write(self, job: SaveJob, abandoned) -> SaveOutcome:
        """One save; whatever it raises (Drive failing under run.json past the retries, a GPU copy that
        failed) is said and reported as not saved, so the training thread and the final message never miss it."""
        try:
            return self._write_job(job, self._retry(job, abandoned))
        except WriteAbandoned:  # the writer said so when it gave up on this save
            return SaveOutcome(job.step, False, job.previous_weights_step)
        except Exception as exc:
            self.log(f"Checkpoint step {job.step} NOT saved: {exc} "
                     "Training continues; the next checkpoint tries again.")
            return SaveOutcome(job.step, False, job.previous_weights_step)

    def _retry(self, job: SaveJob, abandoned) -> Retry:
        """The patience of one save, shared by everything it touches: 10 minutes, or the final wait."""
        final_wait_s = (60 * job.report.train_config.get("final_wait_minutes", 0)
                        if job.report.status != "running" else 0)
        return Retry(self.log, self.retry_wait_s, give_up_after_s=max(GIVE_UP_AFTER_SECONDS, final_wait_s),
                     abandoned=abandoned, probe=self.run_dir)

    def _write_job(self, job: SaveJob, retry: Retry) -> SaveOutcome:
        if job.copied is not None:
            job.copied.synchronize()  # the snapshot's GPU-to-pinned copies are done before anything reads it
        what = f"Checkpoint step {job.step}"
        # Who owns the run: a run.json that cannot be read now is waited for, never taken for "no other owner".
        if (self.keeper.lost.is_set()
                or retry(owners.newer_claim, what, self.run_dir, self.owner, done=ANSWERED) is not None):
            self.log(f"{job.report.run_id} was taken over by another runtime: this one stops writing it.")
            return SaveOutcome(job.step, False, None, taken_over=True)
        weights_step = job.previous_weights_step
        if job.weights is not None and self._try(retry, f"Best weights (step {job.weights_step})", write_weights,
                                                 self.paths, job.report.run_id, job.weights, retry.abandoned):
            weights_step = job.weights_step
        elif job.weights is not None and job.state is not None:
            job.state["best_model"], job.state["best_model_step"] = job.weights, job.weights_step  # carried instead
        state_saved = job.state is None or self._save_state(job, retry)
        if retry.abandoned.is_set():
            return SaveOutcome(job.step, False, weights_step)
        if job.state is not None and state_saved:
            self.log(f"Checkpoint saved: {self.run_dir.name}/step {job.step}{' + best' if job.best else ''}.")
        report = replace(job.report, weights_step=weights_step,
                         status=job.report.status if state_saved or job.report.status == "running" else "interrupted")
        self._try(retry, "The run's artifacts", write_run_artifacts, self.paths, report, job.plot)
        fields = (report.record_fields() if state_saved
                  else {"weights": report.record_fields()["weights"], "status": report.status})
        self._try(retry, "The run's record (run.json)",
                  lambda: self.keeper.update(**fields).result(RECORD_WAIT_SECONDS))
        if job.report.status != "running":  # the last write of this process: sweep what failed writes left
            try:
                retry(lambda: (checkpoints.remove_temporaries(self.run_dir),
                               remove_temporaries(self.paths, job.report.run_id)),
                      "Removing the temporary files of failed writes")
            except Exception:
                pass  # the run's next start sweeps them
        return SaveOutcome(job.step, state_saved, weights_step)

    def _save_state(self, job: SaveJob, retry: Retry) -> bool:
        """The state file (+ best.pt), then the older step files go. On a full disk, older step files make
        room first (never below the newest verified one and best.pt); if it still does not fit, say what a
        checkpoint needs."""
        what = f"Checkpoint step {job.step}"
        write = functools.partial(checkpoints.write_checkpoint, self.run_dir, job.state, job.step, job.best, None,
                                  retry.abandoned, functools.partial(_each, retry, what))
        for attempt in ("first", "after making room"):
            try:
                write()
                self._rotate(job, retry)
                return True
            except WriteAbandoned:
                return False
            except Exception as exc:
                if not checkpoints.disk_full(exc):
                    self.log(f"{what} NOT saved: {exc} Training continues; the next checkpoint tries again.")
                    return False
            if attempt == "first":
                removed = retry(checkpoints.free_space_for, what, self.run_dir, job.step)
                if removed:
                    self.log(f"{what}: the disk is full; removed {', '.join(p.name for p in removed)} to make room "
                             "(the newest verified checkpoint and best.pt stay).")
        self.log(f"{what} NOT saved: {checkpoints.describe_full_disk(self.paths.base, self.run_dir, job.state)} "
                 "Training continues; the next checkpoint tries again.")
        return False

    def _rotate(self, job: SaveJob, retry: Retry) -> None:
        """Older step files go once the new one is in place. A takeover during a long write leaves them:
        the folder's step files are the new owner's now. A failure here is said; the save has landed."""
        what = f"Checkpoint step {job.step}"
        try:
            if (not retry.abandoned.is_set()
                    and retry(owners.newer_claim, what, self.run_dir, self.owner, done=ANSWERED) is None):
                retry(checkpoints.rotate, f"{what} (removing older step files)", self.run_dir, job.step,
                      job.report.train_config["keep_last"])
        except WriteAbandoned:
            pass
        except Exception as exc:
            self.log(f"{what}: older step files not removed: {exc} The next checkpoint tries again.")

    def _try(self, retry: Retry, what: str, action, *args) -> bool:
        """Run one write with retries; a failure is logged (with its fix), never raised into training."""
        try:
            retry(functools.partial(action, *args), what)
            return True
        except WriteAbandoned:
            return False
        except Exception as exc:
            self.log(f"{what} NOT saved: {exc} Training continues; the next checkpoint tries again.")
            return False


def adamw_buffer_spec(model) -> tuple:
    """The buffers AdamW's state needs beside the weights: two moments shaped like each trainable
    parameter and its step count (a float32 scalar, on the GPU with the fused kernel)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return buffer_spec(params) * 2 + tuple(((), torch.float32, p.is_cuda) for p in params)


def _each(retry: Retry, what: str, action, *args):
    """One step of a checkpoint write under the save's retry policy."""
    return retry(action, what, *args)


class Bystander:
    """What a process other than rank 0 has instead of a Recorder under torchrun: it writes nothing
    and decides nothing (rank 0's decisions reach it by broadcast)."""

    taken_over, longest_stall, last_outcome, run_dir = False, 0.0, None, None

    def __init__(self, paths: DatasetPaths, resumed_step: int | None, model):
        self.paths, self.resumed_step, self.parameters = paths, resumed_step, count_parameters(model)

    def new_best(self, model, step: int) -> None:
        pass

    def due(self, state: TrainState, improved: bool) -> bool:
        return False

    def save(self, *args, **kwargs) -> Saving:
        return SKIPPED

    def close(self, timeout: float | None) -> bool:
        return True
