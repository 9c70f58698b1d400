"""`TrainState`: what a run is and how far it got. It *is* the checkpoint schema: `to_state`
gives the dict a checkpoint holds, `from_state` reads one back.

A run is defined by its model, its resolved TrainConfig (every setting that fixes the batches and
the learning-rate curve: preset, batch size, lr, warm-up, evaluation cadence, seed, ...) and the
schedule's horizon `total_steps`. A resumed run keeps all of these; only an explicit `extend`
moves the horizon.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import torch

from ..checkpoints import STATE_FORMAT
from ..configs import ModelConfig, TrainConfig, kept_on_resume
from ..errors import CheckpointError

STATE_VERSION = 2


class LossHistory:
    """Per-step training loss and learning rate in preallocated CPU tensors (a save copies memory,
    not Python lists), plus the validation losses and the steps they were taken at."""

    def __init__(self, capacity: int):
        self.train_loss = torch.full((max(1, capacity),), math.nan, dtype=torch.float32)
        self.lr = torch.zeros(max(1, capacity), dtype=torch.float64)
        self.steps = 0  # how many entries of train_loss are filled
        self.lr_steps = 0
        self.val_loss: list[float] = []
        self.val_step: list[int] = []

    def _grow(self, needed: int) -> None:
        if needed > len(self.train_loss):
            size = max(needed, 2 * len(self.train_loss))
            self.train_loss = torch.cat([self.train_loss, torch.full((size - len(self.train_loss),), math.nan)])
            self.lr = torch.cat([self.lr, torch.zeros(size - len(self.lr), dtype=torch.float64)])

    def add_lr(self, lr: float) -> None:
        self._grow(self.lr_steps + 1)
        self.lr[self.lr_steps] = lr
        self.lr_steps += 1

    def add_losses(self, losses: torch.Tensor) -> None:
        """Losses of the next len(losses) steps (one device-to-host copy for many steps)."""
        self._grow(self.steps + len(losses))
        self.train_loss[self.steps : self.steps + len(losses)] = losses.float().cpu()
        self.steps += len(losses)

    def add_evaluation(self, step: int, loss: float) -> None:
        self.val_loss.append(float(loss))
        self.val_step.append(int(step))

    def to_state(self) -> dict:
        # Views: the checkpoint snapshot copies them, so the next steps cannot change a save.
        return {"train_loss": self.train_loss[: self.steps], "lr": self.lr[: self.lr_steps],
                "val_loss": list(self.val_loss), "val_step": list(self.val_step)}

    @classmethod
    def from_state(cls, history: dict, capacity: int) -> "LossHistory":
        loaded = cls(capacity)
        losses = torch.as_tensor(history["train_loss"], dtype=torch.float32)
        lrs = torch.as_tensor(history["lr"], dtype=torch.float64)
        loaded.add_losses(losses)
        loaded._grow(len(lrs))
        loaded.lr[: len(lrs)] = lrs
        loaded.lr_steps = len(lrs)
        loaded.val_loss, loaded.val_step = ([float(v) for v in history["val_loss"]],
                                            [int(s) for s in history["val_step"]])
        return loaded

    def as_lists(self) -> dict:
        """Plain lists, for plots, notebooks and the loss arrays (the original project's train_step/train_loss
        layout)."""
        return {"train_loss": self.train_loss[: self.steps].tolist(), "train_step": list(range(1, self.steps + 1)),
                "val_loss": list(self.val_loss), "val_step": list(self.val_step),
                "lr": self.lr[: self.lr_steps].tolist()}


@dataclass
class TrainState:
    """A run: its identity and definition (saved, fixed) and its progress (saved, growing)."""

    run_id: str
    model_config: ModelConfig
    train_config: TrainConfig  # resolved: the preset's batch size and lr, the warm-up and eval cadence filled in
    dataset: dict  # name, fingerprint, vocab_size
    steps_per_epoch: int
    total_steps: int  # the learning-rate schedule's horizon
    decay_from: tuple[int, float] | None = None  # (step, lr factor) where an extended run's new decay starts
    step: int = 0
    tokens_seen: int = 0
    elapsed_before: float = 0.0  # seconds trained before this process took over
    best_val_loss: float | None = None
    best_step: int = 0
    bad_evals: int = 0
    finished: bool = False
    stop_reason: str | None = None
    world_size: int = 1  # processes training it together now (torchrun); each draws its own batch
    history: LossHistory = field(default=None)
    started_at: float = field(default_factory=time.monotonic)  # this process's clock, never saved

    def __post_init__(self):
        if self.history is None:
            self.history = LossHistory(self.total_steps)

    # -- progress ------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    @property
    def tokens_per_step(self) -> int:
        return self.train_config.batch_size * self.model_config.context_length * self.world_size

    def step_due(self) -> bool:
        """A checkpoint by step count (the same decision in every process)."""
        every = self.train_config.checkpoint_every_steps
        return bool(every) and self.step % every == 0 and self.step < self.total_steps

    def elapsed_seconds(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started_at

    def evaluation_due(self) -> bool:
        step = self.step
        return step % self.train_config.eval_every == 0 or step % self.steps_per_epoch == 0 or step == self.total_steps

    def record_evaluation(self, val_loss: float) -> bool:
        """Note an evaluation of the current step; True when it is a new best."""
        self.history.add_evaluation(self.step, val_loss)
        improved = self.best_val_loss is None or val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_step, self.bad_evals = float(val_loss), self.step, 0
        else:
            self.bad_evals += 1
        return improved

    def out_of_patience(self) -> bool:
        return bool(self.train_config.patience) and self.bad_evals >= self.train_config.patience

    def end_status(self) -> str:
        """How a run that reached its horizon ended: "finished" (all its epochs) or "max_steps"."""
        return "max_steps" if self.total_steps < self.train_config.epochs * self.steps_per_epoch else "finished"

    def final_train_loss(self) -> float | None:
        steps = self.history.steps
        return float(self.history.train_loss[steps - 1]) if steps else None

    # -- the checkpoint schema ---------------------------------------------------------
    def to_state(self, model, optimizer, scheduler, scaler, rng: dict, rng_ranks: list | None = None) -> dict:
        """The checkpoint dict: this state plus the live objects' state dicts (not copied here: the
        writer snapshots the whole dict to CPU memory before training goes on). Under torchrun,
        `rng_ranks` holds every process's RNG states, so each continues its own stream."""
        ranks = {"world_size": self.world_size, "rng_ranks": rng_ranks} if rng_ranks is not None else {}
        return {**ranks,
            "format": STATE_FORMAT, "version": STATE_VERSION, "run_id": self.run_id,
            "model_config": self.model_config.to_dict(), "train_config": self.train_config.to_dict(),
            "dataset": dict(self.dataset), "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None, "rng": rng,
            "step": self.step, "epoch": self.epoch, "tokens_seen": self.tokens_seen,
            "elapsed_seconds": self.elapsed_seconds(), "history": self.history.to_state(),
            "best_val_loss": self.best_val_loss, "best_step": self.best_step, "bad_evals": self.bad_evals,
            "finished": self.finished, "stop_reason": self.stop_reason,
            "decay_from": list(self.decay_from) if self.decay_from is not None else None,
        }

    @classmethod
    def from_state(cls, state: dict, steps_per_epoch: int | None = None,
                   total_steps: int | None = None) -> "TrainState":
        """The run a checkpoint holds. Checkpoints of midikit 0.1 (version 1) did not record the
        horizon: the caller passes it, computed from the run's own settings and the dataset."""
        if state.get("format") != STATE_FORMAT:
            raise CheckpointError("This file is not a midikit training state; pass a step_*.pt or best.pt of a run.")
        saved = state["train_config"]
        known = {name for name in TrainConfig.__dataclass_fields__}
        train_config = TrainConfig(**{k: v for k, v in saved.items() if k in known})
        steps_per_epoch = state.get("steps_per_epoch", steps_per_epoch)
        total_steps = state.get("total_steps", total_steps)
        history = state["history"]
        if "train_step" in history:  # version 1: lists
            history = {**history, "lr": history.get("lr", [])}
        return cls(
            run_id=state["run_id"], model_config=ModelConfig.from_dict(state["model_config"]),
            train_config=train_config,
            dataset=dict(state["dataset"]), steps_per_epoch=steps_per_epoch, total_steps=total_steps,
            step=state["step"], tokens_seen=state["tokens_seen"], elapsed_before=state["elapsed_seconds"],
            best_val_loss=state["best_val_loss"], best_step=state["best_step"], bad_evals=state["bad_evals"],
            finished=bool(state.get("finished")), stop_reason=state.get("stop_reason"),
            decay_from=tuple(state["decay_from"]) if state.get("decay_from") is not None else None,
            history=LossHistory.from_state(history, total_steps),
        )

    def with_settings_of_now(self, asked: TrainConfig) -> "TrainState":
        """This run, continuing with what may change between sessions (stopping, checkpoints, hardware)
        taken from `asked`; what defines the run stays its own."""
        keep = {name: getattr(self.train_config, name) for name in kept_on_resume()}
        return replace(self, train_config=replace(asked, **keep))
