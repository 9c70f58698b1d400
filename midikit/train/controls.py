"""What a person sees and presses while a run trains: the progress bar, and the stop button (Colab's
stop, Ctrl-C) with this command's time budget."""

from __future__ import annotations

import signal
import threading
import time

import torch
from tqdm.auto import tqdm

from .setup import Training
from .state import TrainState


class GracefulStop:
    """The first Ctrl-C (Colab's stop button) asks the loop to stop after the current step, so the
    saved state is a consistent one; a second one interrupts at once. With `minutes`, the loop also
    stops after the step that ends this command's time budget (--max_minutes), counted from here."""

    def __init__(self, log,
                 message="Stop requested: saving a checkpoint after this step (interrupt again to stop at once).",
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
        self.bar = tqdm(total=state.total_steps, initial=state.step, disable=not enabled, unit="step",
                        dynamic_ncols=True)
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
