"""Training: `train()` (the loop, `loop.py`) and what it delegates, each in its own file:
`session.py` (a call's set-up and teardown), `start.py` (new run or resume, and claiming the run),
`state.py` (TrainState: the run and the checkpoint schema), `setup.py` (model, optimizer, schedule,
precision, random streams), `recorder.py` (every file a run writes), `controls.py` (the progress bar,
the stop button and the time budget), `ending.py` (the final checkpoint, the result)."""

from ..configs import TrainConfig, kept_on_resume
from .controls import GracefulStop
from .ending import TrainResult
from .loop import evaluate_loss, train, train_step
from .setup import (
    Training,
    build_training,
    configure_backends,
    lr_factor,
    make_optimizer,
    make_scheduler,
    resolve_compile,
    resolve_precision,
    restore_training,
    seed_everything,
)
from .start import check_context, describe_resumable
from .state import LossHistory, TrainState

__all__ = [
    "kept_on_resume", "TrainConfig", "TrainResult", "train", "train_step", "evaluate_loss", "GracefulStop", "Training",
    "build_training", "configure_backends", "lr_factor", "make_optimizer", "make_scheduler", "resolve_compile",
    "resolve_precision", "restore_training", "seed_everything", "check_context", "describe_resumable", "LossHistory",
    "TrainState",
]
