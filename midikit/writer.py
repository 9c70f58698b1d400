"""The background writer: each save of a run on a daemon thread of its own, one at a time, so
training waits for a hand-over, never for Drive. A save that finds the previous write still running
waits briefly, then is skipped; a write hung for long is abandoned (it discards its file if it ever
returns) and the next one starts beside it; a hung Drive never keeps the process from exiting."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass


@dataclass
class _Write:
    label: str
    future: Future
    abandoned: threading.Event
    started: float


class BackgroundWriter:
    """Runs save jobs one at a time, each on a daemon thread, so training waits for nothing but the
    hand-over. `submit(job, label)` gives the job an Event that is set if training gives up on it.

    A save that finds the previous write still running waits `busy_wait_s` for it, then skips (the
    next save tries again). A write running longer than `abandon_after_s` is abandoned instead: the
    new save starts beside it, and the old one discards its file when it finally returns. At most
    `max_abandoned` abandoned writes are kept waiting (each holds a state in memory). Daemon threads:
    a hung Drive never keeps the process from exiting."""

    def __init__(self, log=print, busy_wait_s: float = 0.5, abandon_after_s: float = 120.0, max_abandoned: int = 1):
        self.log = log
        self.busy_wait_s, self.abandon_after_s, self.max_abandoned = busy_wait_s, abandon_after_s, max_abandoned
        self._active: _Write | None = None
        self._abandoned: list[_Write] = []
        self.skipped = 0

    def submit(self, job, label: str) -> Future | None:
        """Start `job(abandoned_event)` on its own thread; None when the save was skipped."""
        if not self.make_room(label):
            return None
        return self.start(job, label)

    def make_room(self, label: str) -> bool:
        """Whether a new write may start now (waiting briefly, or abandoning a hung write); a False
        is logged and counted as a skipped save."""
        if self._make_room(label):
            return True
        self.skipped += 1
        return False

    def start(self, job, label: str) -> Future:
        """Start `job(abandoned_event)` on its own thread (after `make_room` said yes)."""
        write = _Write(label, Future(), threading.Event(), time.monotonic())
        thread = threading.Thread(target=self._run, args=(job, write), name=f"midikit-writer-{label}", daemon=True)
        self._active = write
        thread.start()
        return write.future

    def _make_room(self, label: str) -> bool:
        active = self._active
        if active is None or _wait(active.future, self.busy_wait_s):
            return True
        self._abandoned = [w for w in self._abandoned if not w.future.done()]
        running = time.monotonic() - active.started
        if running < self.abandon_after_s or len(self._abandoned) >= self.max_abandoned:
            self.log(f"{label}: skipped, the previous write ({active.label}) is still running after {running:.0f} s "
                     "(Drive slow or hung). Training continues; the next checkpoint tries again.")
            return False
        active.abandoned.set()
        self._abandoned.append(active)
        self.log(f"{active.label}: abandoned after {running:.0f} s without an answer from the disk (Drive hung?); "
                 f"{label} is written instead. The abandoned write discards its file if it ever returns.")
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the active write; False if it is still running after `timeout`."""
        return self._active is None or _wait(self._active.future, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Wait (at most `timeout`) for the active write; abandoned ones are left to their daemon threads."""
        done = self.wait(timeout)
        if not done:
            self._active.abandoned.set()
        return done

    @staticmethod
    def _run(job, write: _Write) -> None:
        try:
            write.future.set_result(job(write.abandoned))
        except BaseException as exc:  # the job's owner reads it from the future
            write.future.set_exception(exc)


def _wait(future: Future, timeout: float | None) -> bool:
    try:
        future.exception(timeout=timeout)
    except TimeoutError:
        return False
    return True
