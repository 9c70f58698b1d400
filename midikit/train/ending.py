"""How a call of `train()` ends: why the loop stopped (`Ending`), the final checkpoint and what the
run's record says afterwards (`finish`), and the result the caller gets (`TrainResult`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..artifacts import artifact_paths
from ..errors import ConfigError
from ..retry import mount_note, upload_note
from ..runs import DONE
from .controls import GracefulStop
from .distributed import RankLost, gather, mean
from .setup import capture_rng_state
from .state import TrainState


@dataclass
class TrainResult:
    run_id: str
    status: str  # finished | early_stopped | max_steps | time_budget | interrupted | failed | taken_over
    resumed_from_step: int | None
    steps: int
    epochs: int
    best_val_loss: float | None
    history: dict  # plain lists: train_loss, train_step, val_loss, val_step, lr
    artifacts: dict[str, Path] = field(default_factory=dict)
    longest_save_stall_s: float = 0.0  # the longest any save held the training loop


@dataclass(frozen=True)
class Ending:
    """Why the loop stopped: a status, the step being applied when it stopped (0: between steps, so the
    state is whole and can be saved), and the exception to raise once the run is saved, if any."""

    status: str
    in_step: int = 0
    failure: BaseException | None = None


def finish(run, ending: Ending, pending_losses: list, say) -> TrainResult:
    """The final checkpoint (unless the stop came inside a step, whose state is half-applied, the run
    was taken over, or a process of the run is gone), then the run is released and summed up."""
    state, recorder, cluster = run.state, run.recorder, run.cluster
    wait_s = state.train_config.final_wait_minutes * 60
    if isinstance(ending.failure, RankLost):
        recorder.close(timeout=wait_s)
        return result_of(state, "failed", recorder)
    flush_losses(state, pending_losses, cluster)
    if ending.status == "taken_over" or ending.in_step:
        why = ("another runtime took this run over; this one did not save" if ending.status == "taken_over" else
               f"stopped in the middle of step {ending.in_step}; resume continues from the last checkpoint")
        say(f"{state.run_id}: {why}.")
        recorder.close(timeout=wait_s)
        return result_of(state, "interrupted" if ending.in_step else ending.status, recorder)
    state.finished, state.stop_reason = ending.status in DONE, ending.status
    rngs = gather(cluster, capture_rng_state(run.generator))
    if not cluster.writer:
        return result_of(state, ending.status, recorder)
    return _final_save(run, ending.status, rngs, wait_s, say)


def _final_save(run, status: str, rngs: list, wait_s: float, say) -> TrainResult:
    state, recorder = run.state, run.recorder
    with GracefulStop(say, "Saving the final checkpoint first (interrupt again to stop at once)."):
        best = state.best_val_loss is not None and state.best_step == state.step
        deadline = time.monotonic() + wait_s  # one wait for the write in flight, the final save and the release
        final_save = recorder.save(state, run.training, rngs, status=status, best=best, wait_s=wait_s).future
        landed = recorder.close(timeout=max(0.0, deadline - time.monotonic())) and final_save is not None
    outcome = final_save.result() if landed and final_save.exception() is None else None
    if recorder.taken_over:
        say(f"{state.run_id}: another runtime took this run over; this one did not save its final checkpoint.")
        return result_of(state, "taken_over", recorder)
    if not landed:
        say(f"The final checkpoint of {state.run_id} (step {state.step}) did not reach the disk within {wait_s:.0f} s "
            f"(Drive slow or hung). The run stays resumable from its last checkpoint that landed."
            f"{mount_note(recorder.run_dir)}")
    elif outcome is not None and not outcome.state_saved:
        say(f"The final checkpoint of {state.run_id} could not be written; "
            "the run stays resumable from its last good one.")
    if not landed or (outcome is not None and not outcome.state_saved):
        status = "interrupted"  # what is on disk: the same command continues the run
    best_text = "n/a" if state.best_val_loss is None else f"{state.best_val_loss:.4f} at step {state.best_step}"
    say(f"{state.run_id}: {status} at step {state.step} (epoch {state.epoch}); best validation loss {best_text}."
        f"{upload_note(recorder.run_dir) if landed else ''}")
    return result_of(state, status, recorder)


def flush_losses(state: TrainState, pending: list, cluster) -> None:
    """Move the per-step losses to the history: one device sync for many steps, averaged over the processes."""
    if pending:
        state.history.add_losses(mean(cluster, torch.stack(pending)))
        pending.clear()


def result_of(state: TrainState, status: str, recorder) -> TrainResult:
    return TrainResult(state.run_id, status, recorder.resumed_step, state.step, state.epoch, state.best_val_loss,
                       state.history.as_lists(), artifact_paths(recorder.paths, state.run_id), recorder.longest_stall)


def out_of_memory_in(run) -> ConfigError:
    """The error for a GPU out of memory during the loop, once the write in flight (on the CPU, so it
    may still land) has had its wait and the run has been let go of."""
    run.recorder.close(timeout=run.state.train_config.final_wait_minutes * 60)
    return out_of_memory(run.state, run.recorder.resumed_step is not None)


def out_of_memory(state: TrainState, resuming: bool) -> ConfigError:
    """What to do when the GPU ran out of memory: a smaller batch (for a new run: a resumed one keeps its own)."""
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
