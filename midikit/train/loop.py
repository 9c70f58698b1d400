"""`train()`: the loop, readable top to bottom (nanoGPT's train.py is the model).

The training tokens live on the device as one tensor; each step draws random windows from it with
a seeded CPU generator whose state is checkpointed with everything else, so a resumed run continues
with exactly the batches, dropout masks and schedule it would have seen. What the loop delegates has
a name: `find_start` (new run or resume), `open_run` (the run's one writer), `build_training` (model,
optimizer, schedule), `TrainState` (the run and the checkpoint schema) and the `Recorder` (every file).
Under torchrun (`distributed.py`) rank 0 does the deciding and writing; the loop is the same.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import checkpoints
from ..artifacts import artifact_paths
from ..snapshots import after_copy
from ..configs import ModelConfig, TrainConfig
from ..data.sampler import evaluation_windows, sample_windows
from ..errors import ConfigError
from ..retry import mount_note, upload_note
from ..runs import DONE
from ..threads import threads_for
from .distributed import Cluster, RankLost, broadcast, gather, is_lost, join, leave, lost, mean, total
from .recorder import Bystander, Recorder, open_run
from .setup import (Training, build_training, capture_rng_state, resolve_precision, restore_rng_state, restore_training,
                    seed_everything)
from .start import find_start, open_dataset
from .state import TrainState

LOSS_FLUSH_EVERY = 20  # steps between GPU->CPU syncs of the per-step losses
SYNC_EVERY = 10  # under torchrun: steps between rank 0's decisions to stop or save (broadcast)


@dataclass
class TrainResult:
    run_id: str
    status: str  # finished | early_stopped | max_steps | interrupted | failed | taken_over
    resumed_from_step: int | None
    steps: int
    epochs: int
    best_val_loss: float | None
    history: dict  # plain lists: train_loss, train_step, val_loss, val_step, lr
    artifacts: dict[str, Path] = field(default_factory=dict)
    longest_save_stall_s: float = 0.0  # the longest any save held the training loop


def train(train_config: TrainConfig, model_config: ModelConfig | None = None, on_eval=None, log=print,
          model_overrides: dict | None = None) -> TrainResult:
    """Train a new run, or continue one (`train_config.resume`), and write its checkpoints and artifacts.

    model_config None: the preset's sizes for `train_config.model_type` (`train_config.preset`, else the
    one for this hardware), with the dataset's vocab_size; `model_overrides` (e.g. from explicit CLI
    flags) replace single fields. `on_eval(history)` runs after each evaluation. Every bad input
    raises ConfigError/StorageError before training starts."""
    tc = replace(train_config).validate()
    paths, dataset = open_dataset(tc)
    cluster, device = join(tc.device)  # one process, or one of torchrun's
    resolve_precision(tc.precision, device)  # a precision this device lacks fails before anything is written
    say = (tqdm.write if (log is print and tc.progress) else log) if cluster.writer else _silent

    # Set-up: where the run starts and its one writer (rank 0), then the model, optimizer and data on the device.
    start, files = agree_on_start(cluster, tc, model_config, dict(model_overrides or {}), paths, dataset, device, log, say)
    state, training, generator, (train_tokens, val_inputs, val_targets) = set_up(start, device, dataset, cluster, files, say)
    recorder = (Recorder(paths, state, files[0], files[1], training.raw_model, say, resumed_step=_resumed_step(start),
                         weights_step=files[2], pending_weights=files[3])
                if cluster.writer else Bystander(paths, _resumed_step(start), training.raw_model))
    del start  # the model and optimizer hold their own copies of the checkpoint now
    say(_describe(state, training, recorder))
    if state.train_config.max_minutes:
        say(f"This command trains for at most {state.train_config.max_minutes:g} min (max_minutes): the run then saves and "
            "stays resumable, and the same command continues it.")

    # The loop: step, evaluate on schedule, checkpoint on schedule.
    tc, batch, context = state.train_config, state.train_config.batch_size, state.model_config.context_length
    pending_losses, status, in_step, failure = [], None, 0, None  # in_step: the step being applied (0: none)
    progress = Progress(state, training, say, enabled=tc.progress and cluster.writer)
    try:
        with GracefulStop(say, minutes=tc.max_minutes) as stop, threads_for(training.raw_model):
            while status is None and state.step < state.total_steps:
                in_step = state.step + 1
                inputs, targets = sample_windows(train_tokens, batch, context, generator)
                state.history.add_lr(training.scheduler.get_last_lr()[0])
                pending_losses.append(train_step(training, inputs, targets, tc.grad_clip))
                state.step += 1
                state.tokens_seen += state.tokens_per_step
                if len(pending_losses) >= LOSS_FLUSH_EVERY:
                    flush_losses(state, pending_losses, cluster)
                    progress.show_loss(state)
                improved = evaluated = state.evaluation_due()
                if evaluated:
                    # Evaluations follow the step count alone, so patience and the best step never depend on time.
                    improved = state.record_evaluation(evaluate_loss(training, val_inputs, val_targets, batch, cluster))
                    if improved:
                        recorder.new_best(training.raw_model, state.step)
                    progress.show_evaluation(state)
                in_step = 0
                progress.update(state)
                if evaluated and on_eval is not None and cluster.writer:
                    flush_losses(state, pending_losses, cluster)
                    on_eval(state.history.as_lists())
                status, save_due = decide(cluster, state, stop, recorder, evaluated, improved)
                if save_due:
                    flush_losses(state, pending_losses, cluster)
                    recorder.save(state, training, gather(cluster, capture_rng_state(generator)), best=improved)
            status = status or state.end_status()
    except KeyboardInterrupt:
        status = "interrupted"
    except torch.cuda.OutOfMemoryError:  # the write in flight is on the CPU: it may still land
        recorder.close(timeout=tc.final_wait_minutes * 60)
        raise _out_of_memory(state, recorder.resumed_step is not None) from None
    except Exception as exc:  # an on_eval callback, a bug, a lost process: save what is consistent, then raise it
        status, failure = "failed", (lost(exc) if cluster.active and is_lost(exc) else exc)
    finally:
        progress.close()
    try:
        result = finish(state, status, in_step, recorder, training, generator, say, cluster, pending_losses, failure)
    except BaseException:  # e.g. a CUDA fault: every later device call fails; the run's record still lets go
        recorder.close(timeout=0)
        raise
    del training, progress  # DDP holds the process group: it goes first (gloo aborts the process otherwise)
    leave(cluster, together=failure is None)
    if failure is not None:
        raise failure
    return result


def _silent(*_):
    pass


def agree_on_start(cluster: Cluster, tc, model_config, overrides, paths, dataset, device, log, say):
    """Rank 0 finds where the run starts and becomes its one writer (`open_run`); every process gets
    the same Start (the others read its checkpoint themselves). Returns (start, rank 0's run files)."""
    if cluster.writer:
        try:
            start = find_start(tc, model_config, overrides, paths, dataset, device, log, cluster.world_size)
            paths.ensure()
            files = open_run(paths, start, say, takeover=tc.takeover)
            plan = ("ok", replace(start, checkpoint=None))
        except Exception as exc:
            if not cluster.active:
                raise
            plan, start, files = ("error", exc), None, None
    kind, value = broadcast(cluster, plan if cluster.writer else None)
    if kind == "error":
        raise value
    if cluster.writer:
        return start, files
    return replace(value, checkpoint=checkpoints.load_state(value.source) if value.source else None), None


def decide(cluster: Cluster, state: TrainState, stop, recorder, evaluated: bool, improved: bool) -> tuple[str | None, bool]:
    """(why the loop stops after this step or None, whether to checkpoint now). What depends on the
    clock or a signal is rank 0's to decide: it is broadcast every SYNC_EVERY steps and at every
    evaluation, so every process stops and saves at the same step."""
    if not cluster.active:
        status = stop_status(state, stop, recorder)
        return status, status is None and recorder.due(state, improved)
    if state.step % SYNC_EVERY == 0 or evaluated or state.step >= state.total_steps:
        mine = (stop_status(state, stop, recorder), recorder.due(state, improved)) if cluster.writer else None
        status, due = broadcast(cluster, mine)
        return status, status is None and due
    status = "early_stopped" if state.out_of_patience() else None
    return status, status is None and state.step_due()


# --------------------------------------------------------------------------- set-up, one step


def set_up(start, device: torch.device, dataset, cluster: Cluster, files, say):
    """The run's model, optimizer and schedule on the device (restored from its checkpoint when it
    resumes), its data-order generator and its tokens; rank 0 releases the run's record if this fails."""
    state = replace(start.state, world_size=cluster.world_size)
    try:
        # Each process its own streams (rank 0's is the one-process run's); a resume then restores them all.
        generator = seed_everything(state.train_config.seed + cluster.rank)
        training = build_training(state.model_config, state.train_config, device, state.total_steps, cluster,
                                  state.decay_from)
        if start.checkpoint is not None:
            restore_training(training, start.checkpoint)
            restore_streams(start.checkpoint, generator, cluster, say)
        state = replace(state, train_config=replace(state.train_config, device=str(device), precision=training.precision,
                                                    compile="on" if training.compiled else "off"))
        return state, training, generator, tokens_on_device(dataset, device, state)
    except BaseException as exc:
        if files is not None:
            files[1].close()
        raise _out_of_memory(state, start.kind == "resumed") if isinstance(exc, torch.cuda.OutOfMemoryError) else exc


def restore_streams(checkpoint: dict, generator, cluster: Cluster, say) -> None:
    """Put back this process's RNG states. A run saved by as many processes continues exactly; with
    another count each process that has no saved stream starts its own, and the data order changes."""
    saved = checkpoint.get("world_size", 1)
    if saved == cluster.world_size:
        ranks = checkpoint.get("rng_ranks")
        restore_rng_state(ranks[cluster.rank] if ranks else checkpoint["rng"], generator)
        return
    say(f"This run was saved by {saved} process(es) and continues with {cluster.world_size}: the model, optimizer and "
        "schedule continue exactly, the order of the training windows changes from here.")
    if cluster.rank == 0:
        restore_rng_state(checkpoint["rng"], generator)


def tokens_on_device(dataset, device: torch.device, state: TrainState):
    """The training tokens as one int32 tensor (uint16 has too few ops) and the fixed validation windows."""
    train_tokens = torch.from_numpy(np.asarray(dataset.train_tokens, dtype=np.int32)).to(device)
    val_tokens = torch.from_numpy(np.asarray(dataset.val_tokens, dtype=np.int32)).to(device)
    val_inputs, val_targets = evaluation_windows(val_tokens, state.model_config.context_length,
                                                 max_windows=state.train_config.eval_windows)
    return train_tokens, val_inputs, val_targets


def train_step(training: Training, inputs, targets, grad_clip: float) -> torch.Tensor:
    """One optimizer step on one batch; returns the loss, left on the device (no sync)."""
    with training.autocast:
        loss = training.loss_of(inputs, targets)
    training.scaler.scale(loss).backward()
    after_copy(training.copy_done)  # forward and backward ran beside a checkpoint's copies; the update may not
    training.copy_done = None
    if grad_clip > 0:
        training.scaler.unscale_(training.optimizer)  # clip the true gradients, not the fp16-scaled ones
        torch.nn.utils.clip_grad_norm_(training.raw_model.parameters(), grad_clip)
    training.scaler.step(training.optimizer)
    training.scaler.update()
    training.optimizer.zero_grad(set_to_none=True)
    training.scheduler.step()
    return loss.detach()


@torch.no_grad()
def evaluate_loss(training: Training, inputs, targets, batch_size: int, cluster: Cluster = Cluster()) -> float:
    """Mean cross-entropy per token over fixed windows (model in eval mode, dropout off); under
    torchrun each process takes its share of the windows and the sums are added up."""
    model = training.raw_model
    was_training = model.training
    model.eval()
    inputs, targets = inputs[cluster.rank :: cluster.world_size], targets[cluster.rank :: cluster.world_size]
    sums = torch.zeros(2, device=inputs.device, dtype=torch.float64)  # loss, tokens
    for start in range(0, len(inputs), batch_size):
        with training.autocast:
            logits = model(inputs[start : start + batch_size])
        sums[0] += F.cross_entropy(logits.flatten(0, 1).float(), targets[start : start + batch_size].flatten(), reduction="sum")
    sums[1] = targets.numel()
    model.train(was_training)
    loss, tokens = total(cluster, sums).tolist()
    return loss / tokens


def flush_losses(state: TrainState, pending: list, cluster: Cluster = Cluster()) -> None:
    """Move the per-step losses to the history: one device sync for many steps, averaged over the processes."""
    if pending:
        state.history.add_losses(mean(cluster, torch.stack(pending)))
        pending.clear()


def stop_status(state: TrainState, stop: "GracefulStop", recorder: Recorder) -> str | None:
    """Why the loop stops after this step, or None to go on. A stop asked for during the last step
    ends the run as finished: the run is complete, nothing is left to resume."""
    if recorder.taken_over:
        return "taken_over"
    if state.out_of_patience():
        return "early_stopped"
    if state.step >= state.total_steps:
        return None
    if stop.requested:
        return "interrupted"
    return "time_budget" if stop.out_of_time() else None


# --------------------------------------------------------------------------- the end


def finish(state: TrainState, status: str, in_step: int, recorder, training, generator, say, cluster: Cluster,
           pending_losses: list, failure) -> TrainResult:
    """The final checkpoint (unless the stop came inside a step, whose state is half-applied, the run
    was taken over, or a process of the run is gone), then the run is released and summed up."""
    wait_s = state.train_config.final_wait_minutes * 60
    if isinstance(failure, RankLost):
        recorder.close(timeout=wait_s)
        return _result(state, "failed", recorder)
    flush_losses(state, pending_losses, cluster)
    if status == "taken_over" or in_step:
        why = ("another runtime took this run over; this one did not save" if status == "taken_over" else
               f"stopped in the middle of step {in_step}; resume continues from the last checkpoint")
        say(f"{state.run_id}: {why}.")
        recorder.close(timeout=wait_s)
        return _result(state, "interrupted" if in_step else status, recorder)
    state.finished, state.stop_reason = status in DONE, status
    rngs = gather(cluster, capture_rng_state(generator))
    if not cluster.writer:
        return _result(state, status, recorder)
    with GracefulStop(say, "Saving the final checkpoint first (interrupt again to stop at once)."):
        best = state.best_val_loss is not None and state.best_step == state.step
        deadline = time.monotonic() + wait_s  # one wait for the write in flight, the final save and the release
        final_save = recorder.save(state, training, rngs, status=status, best=best, wait_s=wait_s)
        landed = recorder.close(timeout=max(0.0, deadline - time.monotonic())) and final_save is not None
    outcome = final_save.result() if landed and final_save.exception() is None else None
    if recorder.taken_over:
        say(f"{state.run_id}: another runtime took this run over; this one did not save its final checkpoint.")
        return _result(state, "taken_over", recorder)
    if not landed:
        say(f"The final checkpoint of {state.run_id} (step {state.step}) did not reach the disk within {wait_s:.0f} s "
            f"(Drive slow or hung). The run stays resumable from its last checkpoint that landed."
            f"{mount_note(recorder.run_dir)}")
    elif outcome is not None and not outcome.state_saved:
        say(f"The final checkpoint of {state.run_id} could not be written; the run stays resumable from its last good one.")
    if not landed or (outcome is not None and not outcome.state_saved):
        status = "interrupted"  # what is on disk: the same command continues the run
    best_text = "n/a" if state.best_val_loss is None else f"{state.best_val_loss:.4f} at step {state.best_step}"
    say(f"{state.run_id}: {status} at step {state.step} (epoch {state.epoch}); best validation loss {best_text}."
        f"{upload_note(recorder.run_dir) if landed else ''}")
    return _result(state, status, recorder)


def _result(state: TrainState, status: str, recorder: Recorder) -> TrainResult:
    return TrainResult(state.run_id, status, recorder.resumed_step, state.step, state.epoch, state.best_val_loss,
                       state.history.as_lists(), artifact_paths(recorder.paths, state.run_id), recorder.longest_stall)


def _resumed_step(start) -> int | None:
    return start.state.step if start.kind == "resumed" else None


def _describe(state: TrainState, training: Training, recorder: Recorder) -> str:
    from .setup import describe_precision  # an RNN's core precision too (its own hunk: setup.py owns precision)

    mc, tc = state.model_config, state.train_config
    verb = "Resuming" if recorder.resumed_step is not None else "Starting"
    processes = f" x {state.world_size} processes (effective batch {tc.batch_size * state.world_size})" if state.world_size > 1 else ""
    return (f"{verb} {state.run_id}: {mc.model_type}, {recorder.parameters / 1e6:.2f}M parameters, {training.device}, "
            f"{describe_precision(training)}{', compiled' if training.compiled else ''}; batch {tc.batch_size} x {mc.context_length} "
            f"tokens{processes}, {state.steps_per_epoch} steps/epoch, step {state.step} of {state.total_steps}; "
            f"checkpoints in {recorder.run_dir}")


def _out_of_memory(state: TrainState, resuming: bool) -> ConfigError:
    torch.cuda.empty_cache()
    batch_size, mc = state.train_config.batch_size, state.model_config
    smaller = max(1, batch_size // 2)
    if resuming:  # a resumed run keeps its batch size, so a smaller one means a new run
        return ConfigError(
            f"The GPU ran out of memory continuing a run with batch_size={batch_size} ({mc.model_type}); this GPU is "
            f"smaller than the one that started it. Use a larger GPU to continue it, or start a new run with "
            f"--resume never --batch_size {smaller} (resume='never', batch_size={smaller})."
        )
    return ConfigError(
        f"The GPU ran out of memory with batch_size={batch_size} ({mc.model_type}, context {mc.context_length}). "
        f"Try --batch_size {smaller} (batch_size={smaller}), a smaller --preset, or a shorter --context_length."
    )


# --------------------------------------------------------------------------- stop button, progress bar


class GracefulStop:
    """The first Ctrl-C (Colab's stop button) asks the loop to stop after the current step, so the
    saved state is a consistent one; a second one interrupts at once. With `minutes`, the loop also
    stops after the step that ends this command's time budget (--max_minutes), counted from here."""

    def __init__(self, log, message="Stop requested: saving a checkpoint after this step (interrupt again to stop at once).",
                 minutes: float | None = None):
        self.requested = False
        self.log = log
        self.message = message
        self._previous = None
        self._deadline = None if minutes is None else time.monotonic() + minutes * 60

    def out_of_time(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.log(self.message)

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class Progress:
    """The tqdm bar: steps, loss, tokens/s, latest and best validation loss; with torch.compile the
    first step's time (the compilation) is reported on its own and kept out of tokens/s."""

    def __init__(self, state: TrainState, training: Training, say, enabled: bool):
        self._clock, self.training, self.say = time.monotonic, training, say
        self.bar = tqdm(total=state.total_steps, initial=state.step, disable=not enabled, unit="step", dynamic_ncols=True)
        self.postfix = {}
        self.started, self.start_tokens = self._clock(), state.tokens_seen
        self.first_step = True

    def show_loss(self, state: TrainState) -> None:
        rate = (state.tokens_seen - self.start_tokens) / max(1e-9, self._clock() - self.started)
        self.postfix.update(loss=f"{state.final_train_loss():.3f}", tok_s=f"{rate:,.0f}")
        self.bar.set_postfix(self.postfix, refresh=False)

    def show_evaluation(self, state: TrainState) -> None:
        self.postfix.update(val=f"{state.history.val_loss[-1]:.3f}", best=f"{state.best_val_loss:.3f}")
        self.bar.set_postfix(self.postfix, refresh=False)

    def update(self, state: TrainState) -> None:
        self.bar.update(1)
        if self.first_step and self.training.compiled:
            if self.training.device.type == "cuda":
                torch.cuda.synchronize(self.training.device)
            seconds = self._clock() - self.started
            self.say(f"Compiled, and ran the first step, in {seconds:.1f} s; tokens/s counts from the next step.")
            self.postfix["compile_s"] = f"{seconds:.0f}"
            self.started, self.start_tokens = self._clock(), state.tokens_seen
        self.first_step = False

    def close(self) -> None:
        self.bar.close()
