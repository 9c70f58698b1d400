"""Training: `train()` (the loop, `loop.py`) and what it delegates, each in its own file:
`start.py` (new run or resume), `state.py` (TrainState: the run and the checkpoint schema),
`setup.py` (model, optimizer, schedule, precision), `recorder.py` (every file a run writes)."""

from ..configs import TrainConfig, kept_on_resume
from .loop import GracefulStop, TrainResult, evaluate_loss, train, train_step
from .setup import (
    Training, build_training, configure_backends, lr_factor, make_optimizer, make_scheduler, resolve_compile,
    resolve_precision, restore_training, seed_everything,
)
from .start import check_context, describe_resumable
from .state import LossHistory, TrainState

__all__ = [
    "kept_on_resume", "TrainConfig", "TrainResult", "train", "train_step", "evaluate_loss", "GracefulStop", "Training",
    "build_training", "configure_backends", "lr_factor", "make_optimizer", "make_scheduler", "resolve_compile",
    "resolve_precision", "restore_training", "seed_everything", "check_context", "describe_resumable", "LossHistory",
    "TrainState",
]
