"""A call of `train()` from its set-up to its teardown: `open_session` finds where the run starts,
makes this process its one writer (rank 0 under torchrun), builds the model, optimizer and data on
the device, and yields a `Session`; leaving it always lets go of the run, whatever happened."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .. import checkpoints, owners, storage
from ..data.sampler import Windows, evaluation_windows
from .distributed import Cluster, broadcast
from .ending import out_of_memory
from .recorder import Bystander, Recorder
from .setup import Training, build_training, describe_precision, restore_rng_state, restore_training, seed_everything
from .start import claim_run, find_start
from .state import TrainState


@dataclass(frozen=True)
class Tokens:
    """The data on the device: the training tokens as one int32 tensor (uint16 has too few ops), from
    which each step draws its windows, its songs' offsets when the model has a song clock (else None),
    and the fixed validation windows (`sampler.Windows`)."""

    train: torch.Tensor
    song_starts: torch.Tensor | None
    val: Windows


@dataclass
class Session:
    """One call of train(): the run (its state), what trains it on this device, its data-order
    generator, its data, and its recorder (rank 0's writer, a Bystander elsewhere)."""

    cluster: Cluster
    state: TrainState
    training: Training
    generator: torch.Generator
    tokens: Tokens
    recorder: Recorder | Bystander

    def describe(self) -> str:
        """The start line: which run, what model on what device, how far it is."""
        state, training, recorder = self.state, self.training, self.recorder
        mc, tc = state.model_config, state.train_config
        verb = "Resuming" if recorder.resumed_step is not None else "Starting"
        processes = (f" x {state.world_size} processes (effective batch {tc.batch_size * state.world_size})"
                     if state.world_size > 1 else "")
        return (f"{verb} {state.run_id}: {mc.model_type}, {recorder.parameters / 1e6:.2f}M parameters, "
                f"{training.device}, {describe_precision(training)}{', compiled' if training.compiled else ''}; "
                f"batch {tc.batch_size} x {mc.context_length} tokens{processes}, {state.steps_per_epoch} steps/epoch, "
                f"step {state.step} of "
                f"{state.total_steps}; checkpoints in {recorder.run_dir}"
                + (f"; this command trains for at most {tc.max_minutes:g} min (max_minutes), then saves and stops, "
                   "resumable" if tc.max_minutes else "") + _keep_last_note(tc.keep_last, recorder.run_dir))


def _keep_last_note(keep_last: int, run_dir) -> str:
    """Drive uploads in the background: with one step file, a runtime that ends before the newest one is
    uploaded leaves none (best.pt may be older). Said at the start, where it can still be changed."""
    if keep_last >= 2 or run_dir is None or not Path(run_dir).absolute().is_relative_to(storage.DRIVE_MOUNT_POINT):
        return ""
    return (". keep_last=1 on Google Drive: a runtime that ends before Drive uploaded the newest checkpoint leaves "
            "only best.pt to resume from; keep_last 2 (the default) keeps one more")


@contextmanager
def open_session(cluster: Cluster, tc, model_config, overrides: dict, paths, dataset, device, log, say):
    """The Session of this call (see the module); on leaving, its recorder is closed if the end did not
    close it (a CUDA fault, a second Ctrl-C) and the run is let go of by this process."""
    start, claimed = agree_on_start(cluster, tc, model_config, overrides, paths, dataset, device, log, say)
    resumed_step = start.state.step if start.kind == "resumed" else None
    recorder = None
    try:
        state, training, generator, tokens = set_up(start, device, dataset, cluster, say)
        del start  # the model and optimizer hold their own copies of the checkpoint now
        recorder = (Recorder(paths, state, claimed, training.raw_model, say, resumed_step=resumed_step)
                    if claimed is not None else Bystander(paths, resumed_step, training.raw_model))
        yield Session(cluster, state, training, generator, tokens, recorder)
    finally:
        if recorder is not None:
            recorder.close(timeout=0)  # no-op after the end's own close
        elif claimed is not None:
            claimed.keeper.close(timeout=0)
        if claimed is not None:
            owners.let_go(paths.run_checkpoints(claimed.run_id))


def agree_on_start(cluster: Cluster, tc, model_config, overrides, paths, dataset, device, log, say):
    """Rank 0 finds where the run starts and becomes its one writer (`claim_run`); every process gets
    the same Start (the others read its checkpoint themselves). Returns (start, rank 0's Claimed)."""
    if cluster.writer:
        try:
            start = find_start(tc, model_config, overrides, paths, dataset, device, log, cluster.world_size)
            paths.ensure()
            claimed = claim_run(paths, start, say, takeover=tc.takeover)
            plan = ("ok", replace(start, checkpoint=None))
        except Exception as exc:
            if not cluster.active:
                raise
            plan, start, claimed = ("error", exc), None, None
    kind, value = broadcast(cluster, plan if cluster.writer else None)
    if kind == "error":
        raise value
    if cluster.writer:
        return start, claimed
    return replace(value, checkpoint=checkpoints.load_state(value.source) if value.source else None), None


def set_up(start, device: torch.device, dataset, cluster: Cluster,
           say) -> tuple[TrainState, Training, torch.Generator, Tokens]:
    """The run's model, optimizer and schedule on the device (restored from its checkpoint when it
    resumes), its data-order generator and its tokens."""
    state = replace(start.state, world_size=cluster.world_size)
    try:
        # Each process its own streams (rank 0's is the one-process run's); a resume then restores them all.
        generator = seed_everything(state.train_config.seed + cluster.rank)
        training = build_training(state.model_config, state.train_config, device, state.total_steps, cluster,
                                  state.decay_from)
        if start.checkpoint is not None:
            restore_training(training, start.checkpoint)
            restore_streams(start.checkpoint, generator, cluster, say)
        state = replace(state, train_config=replace(state.train_config, device=str(device),
                                                    precision=training.precision,
                                                    compile="on" if training.compiled else "off"))
        return state, training, generator, tokens_on_device(dataset, device, state)
    except torch.cuda.OutOfMemoryError:
        raise out_of_memory(state, start.kind == "resumed") from None


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


def tokens_on_device(dataset, device: torch.device, state: TrainState) -> Tokens:
    train_tokens = torch.from_numpy(np.asarray(dataset.train_tokens, dtype=np.int32)).to(device)
    val_tokens = torch.from_numpy(np.asarray(dataset.val_tokens, dtype=np.int32)).to(device)
    clock = state.model_config.song_clock
    train_starts, val_starts = ((torch.from_numpy(np.array(offsets)).to(device) if clock else None)
                                for offsets in (dataset.train_offsets, dataset.val_offsets))
    val = evaluation_windows(val_tokens, state.model_config.context_length, max_windows=state.train_config.eval_windows,
                             song_starts=val_starts)
    return Tokens(train_tokens, train_starts, val)
