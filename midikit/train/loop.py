"""`train()`: the loop, readable top to bottom (nanoGPT's train.py is the model).

The training tokens live on the device as one tensor; each step draws random windows from it with
a seeded CPU generator whose state is checkpointed with everything else, so a resumed run continues
with exactly the batches, dropout masks and schedule it would have seen. What the loop delegates has
a name: `open_session` (set-up and teardown: where the run starts, its one writer, the model,
optimizer and data on the device), the `Recorder` (every file), `decide` (stop or save now) and
`finish` (the final checkpoint, how the run ended). Under torchrun (`distributed.py`) rank 0 does the
deciding and writing; the loop is the same.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..configs import ModelConfig, TrainConfig
from ..data.sampler import sample_windows
from ..snapshots import after_copy
from ..threads import threads_for
from .controls import GracefulStop, Progress
from .distributed import Cluster, broadcast, gather, is_lost, join, leave, lost, total
from .ending import Ending, TrainResult, finish, flush_losses, out_of_memory_in
from .session import open_session
from .setup import Training, capture_rng_state, resolve_precision
from .start import open_dataset
from .state import TrainState

LOSS_FLUSH_EVERY = 20  # steps between GPU->CPU syncs of the per-step losses
SYNC_EVERY = 10  # under torchrun: steps between rank 0's decisions to stop or save (broadcast)


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
    with open_session(cluster, tc, model_config, dict(model_overrides or {}), paths, dataset, device, log, say) as run:
        state, training, recorder, tokens = run.state, run.training, run.recorder, run.tokens
        say(run.describe())
        # The loop: step, evaluate on schedule, checkpoint on schedule.
        tc, pending_losses, status, in_step, copied = state.train_config, [], None, 0, None
        progress = Progress(state, training, say, enabled=tc.progress and cluster.writer)
        try:
            with GracefulStop(say, minutes=tc.max_minutes) as stop, threads_for(training.raw_model):
                while status is None and state.step < state.total_steps:
                    in_step = state.step + 1  # the step being applied: a stop inside it leaves a half-applied state
                    _take_step(training, tokens, run.generator, tc, state, pending_losses, wait_for=copied)
                    copied = None
                    if len(pending_losses) >= LOSS_FLUSH_EVERY:
                        flush_losses(state, pending_losses, cluster)
                        progress.show_loss(state)
                    improved = evaluated = state.evaluation_due()  # by the step count alone, never by the clock
                    if evaluated:
                        improved = state.record_evaluation(evaluate_loss(training, tokens, tc.batch_size, cluster))
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
                        rngs = gather(cluster, capture_rng_state(run.generator))
                        copied = recorder.save(state, training, rngs, best=improved).copied
            ending = Ending(status or state.end_status())
        except KeyboardInterrupt:
            ending = Ending("interrupted", in_step)
        except torch.cuda.OutOfMemoryError:
            raise out_of_memory_in(run) from None
        except Exception as exc:  # an on_eval callback, a bug, a lost process: save what is consistent, then raise it
            ending = Ending("failed", in_step, lost(exc) if cluster.active and is_lost(exc) else exc)
        finally:
            progress.close()
        result = finish(run, ending, pending_losses, say)
        del training, progress, run.training  # DDP holds the process group: it goes first (gloo aborts otherwise)
    leave(cluster, together=ending.failure is None)
    if ending.failure is not None:
        raise ending.failure
    return result


def _silent(*_):
    pass


def decide(cluster: Cluster, state: TrainState, stop, recorder, evaluated: bool,
           improved: bool) -> tuple[str | None, bool]:
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


def stop_status(state: TrainState, stop: GracefulStop, recorder) -> str | None:
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


# --------------------------------------------------------------------------- one step, one evaluation


def _take_step(training: Training, tokens, generator: torch.Generator, tc: TrainConfig, state: TrainState,
               pending_losses: list, wait_for=None) -> None:
    """Draw the next windows and apply one optimizer step (`train_step`); its loss joins `pending_losses`,
    left on the device. Counts the step and its tokens in `state`."""
    inputs, targets, positions = sample_windows(tokens.train, tc.batch_size, state.model_config.context_length,
                                                generator, tokens.song_starts)
    state.history.add_lr(training.scheduler.get_last_lr()[0])
    pending_losses.append(train_step(training, inputs, targets, tc.grad_clip, positions, wait_for=wait_for))
    state.step, state.tokens_seen = state.step + 1, state.tokens_seen + state.tokens_per_step


def train_step(training: Training, inputs, targets, grad_clip: float, positions=None, wait_for=None) -> torch.Tensor:
    """One optimizer step on one batch; returns the loss, left on the device (no sync). `positions`:
    where in its song each input token is (a song clock's); `wait_for`: the CUDA event of a
    checkpoint's copies (`Saving.copied`), which the update must not overtake."""
    with training.autocast:
        loss = training.loss_of(inputs, targets, positions)
    training.scaler.scale(loss).backward()
    after_copy(wait_for)  # forward and backward ran beside a checkpoint's copies; the update may not
    if grad_clip > 0:
        training.scaler.unscale_(training.optimizer)  # clip the true gradients, not the fp16-scaled ones
        torch.nn.utils.clip_grad_norm_(training.raw_model.parameters(), grad_clip)
    training.scaler.step(training.optimizer)
    training.scaler.update()
    training.optimizer.zero_grad(set_to_none=True)
    training.scheduler.step()
    return loss.detach()


@torch.no_grad()
def evaluate_loss(training: Training, tokens, batch_size: int, cluster: Cluster = Cluster()) -> float:
    """Mean cross-entropy per token over the fixed validation windows (`tokens`: a session's; model in
    eval mode, dropout off); under torchrun each process takes its share and the sums are added up."""
    model = training.raw_model
    was_training = model.training
    model.eval()
    inputs = tokens.val.inputs[cluster.rank :: cluster.world_size]
    targets = tokens.val.targets[cluster.rank :: cluster.world_size]
    positions = None if tokens.val.positions is None else tokens.val.positions[cluster.rank :: cluster.world_size]
    sums = torch.zeros(2, device=inputs.device, dtype=torch.float64)  # loss, tokens
    for start in range(0, len(inputs), batch_size):
        clock = {} if positions is None else {"song_positions": positions[start : start + batch_size]}
        with training.autocast:
            logits = model(inputs[start : start + batch_size], **clock)
        sums[0] += F.cross_entropy(logits.flatten(0, 1).float(), targets[start : start + batch_size].flatten(),
                                   reduction="sum")
    sums[1] = targets.numel()
    model.train(was_training)
    loss, tokens = total(cluster, sums).tolist()
    return loss / tokens
