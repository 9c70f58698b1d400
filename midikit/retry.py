"""Waiting out Google Drive: the one retry policy for everything a checkpoint save touches. No torch.

A Drive mount that drops, stalls or comes back answers with a few errnos (`TRANSIENT_ERRNOS`); a call
that gets one waits and is tried again with a growing pause (2 s, 4 s, ... up to a minute) until it
works, the save gives up (10 minutes by default; the final save: `--final_wait_minutes`), or the
write is abandoned. A wait ends early once the mount answers again after it was seen down. Anything
else fails the same way every time and is raised at once. The claim check and run.json (`midikit.runs`),
the state file, its rename and checksum, best.pt, rotation, the artifacts and the release of the run
at its end all go through `Retry`, so a save that starts while the mount is down waits for it.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import storage
from .errors import RunOwnedError, StorageError
from .storage import explain_os_error, os_error_in

# What a Drive mount does while it drops, stalls or comes back: worth waiting for. Anything else (a
# folder that cannot be written, a name that is a folder) fails the same way every time.
TRANSIENT_ERRNOS = {errno.ENOTCONN, errno.EIO, errno.ETIMEDOUT, errno.EAGAIN, errno.EBUSY, errno.ENOENT, errno.ESTALE,
                    errno.ECONNABORTED, errno.ECONNRESET, errno.EINTR}
PROBE_EVERY_S = 0.25  # while waiting, how often the mount is asked whether it answers again


class WriteAbandoned(Exception):
    """A background write finished after training stopped waiting for it; its result was discarded."""


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` (however wrapped) is a disk or Drive failure that passes."""
    if isinstance(exc, RunOwnedError):
        return False
    if isinstance(exc, TimeoutError):  # waiting for another thread's write (run.json) on a slow Drive
        return True
    cause = os_error_in(exc)
    if cause is not None and cause.errno is not None:
        return cause.errno in TRANSIENT_ERRNOS
    return isinstance(exc, StorageError) and (getattr(exc, "transient", False)
                                              or getattr(exc, "errno", None) in TRANSIENT_ERRNOS)


def explain(exc: BaseException, where: Path | None = None) -> str:
    """A failure in words, with its fix. Under Colab's Drive mount point the mount itself is asked
    first: dropped (remount with force_remount=True), not mounted, or a plain folder in its place."""
    problem = mount_problem(where, getattr(os_error_in(exc), "errno", None) or getattr(exc, "errno", None))
    if problem is not None:
        return problem
    if isinstance(exc, StorageError):
        return str(exc)
    if isinstance(exc, TimeoutError) and exc.errno is None:
        return f"{where or 'The write'} did not answer in time: Drive is slow."
    cause = os_error_in(exc)
    return str(explain_os_error(cause, Path(getattr(cause, "filename", None) or where or "the checkpoint folder")))


def mount_problem(where: Path | None, code: int | None = None) -> str | None:
    """What is wrong with Drive's mount when `where` is under it (None: not under it, or it answers).
    A failure that already says "not connected" about its own file keeps that more precise text."""
    if where is None or not Path(where).absolute().is_relative_to(storage.DRIVE_MOUNT_POINT):
        return None
    state = _drive_state_within(MOUNT_PROBE_SECONDS)
    if state is None:
        return None
    if state == HUNG:
        return (f"Google Drive's mount at {storage.DRIVE_MOUNT_POINT} does not answer (it hung). If it does not come "
                "back within minutes, remount with `midikit.storage.mount_drive(force_remount=True)`.")
    if state == storage.MOUNTED or (state == storage.DROPPED and code == errno.ENOTCONN):
        return None
    if state == storage.DROPPED:
        return (f"Google Drive's mount at {storage.DRIVE_MOUNT_POINT} dropped (Transport endpoint is not connected). "
                "If it does not come back by itself, remount with `midikit.storage.mount_drive(force_remount=True)`; "
                "nothing already on Drive is lost.")
    return str(storage.drive_problem(Path(where)))


MOUNT_PROBE_SECONDS = 2.0  # how long asking the mount for its state may take before it counts as hung
HUNG = "hung"


def _drive_state_within(seconds: float) -> str | None:
    """storage.drive_state(), asked on a daemon thread: a hung mount can block a stat for good, and the
    thread asking must not hang with it (at the end of a run: the main thread). HUNG when no answer came,
    None when the state could not be read."""
    answer: Future = Future()

    def ask() -> None:
        try:
            answer.set_result(storage.drive_state())
        except StorageError:
            answer.set_result(None)
        except BaseException as exc:  # never lost: the caller reads the Future
            answer.set_exception(exc)

    threading.Thread(target=ask, name="midikit-mount-probe", daemon=True).start()
    try:
        return answer.result(timeout=seconds)
    except FutureTimeout:
        return HUNG


def mount_note(where: Path | None) -> str:
    """" <what is wrong with Drive's mount>" when `where` is under it and it does not answer, else ""."""
    problem = mount_problem(where)
    return "" if problem is None else f" {problem}"


def upload_note(where: Path | None) -> str:
    """" <how to make sure Drive has it>" for a folder under Colab's Drive mount point, else "": Drive
    uploads in the background, and a runtime that ends first loses what was not uploaded yet."""
    if where is None or not Path(where).absolute().is_relative_to(storage.DRIVE_MOUNT_POINT):
        return ""
    return (" Google Drive uploads in the background: before this runtime ends, run `midikit.storage.flush_drive()` "
            "(it returns once everything is on Drive, then unmounts it).")


@dataclass(frozen=True)
class Retry:
    """One save's patience: every call it runs shares its give-up clock (started when it is made).

    `probe`, a folder on the same mount, ends a wait early once it answers again after it did not;
    `abandoned` (set when training gives up on the write) ends it with WriteAbandoned."""

    log: Callable[[str], None]
    first_wait_s: float = 2.0
    max_wait_s: float = 60.0
    give_up_after_s: float = 600.0
    abandoned: threading.Event | None = None
    probe: Path | None = None
    started: float = field(default_factory=time.monotonic)

    def __call__(self, action, what: str, *args, done: str = "landed"):
        """`action(*args)`, retried while it fails in a way that passes; the first failure is said
        once, in words, and `done` after how many attempts once it works."""
        attempt, pause = 0, self.first_wait_s
        while True:
            attempt += 1
            try:
                result = action(*args)
            except BaseException as exc:
                if not is_transient(exc):
                    raise
                if self.abandoned is not None and self.abandoned.is_set():
                    raise WriteAbandoned(f"{what}: given up on while the disk failed") from exc
                if time.monotonic() - self.started + pause > self.give_up_after_s:
                    raise
                if attempt == 1:
                    self.log(f"{what}: {explain(exc, self.probe)} Retrying with a growing pause until it lands.")
                self._wait(pause)
                pause = min(pause * 2, self.max_wait_s)
                continue
            if attempt > 1:
                self.log(f"{what}: {done} after {attempt} attempts.")
            return result

    def _wait(self, pause: float) -> None:
        end, seen_down = time.monotonic() + pause, False
        while (left := end - time.monotonic()) > 0:
            if self.abandoned is not None and self.abandoned.wait(min(left, PROBE_EVERY_S)):
                raise WriteAbandoned("the write was given up on while it waited for the disk")
            if self.abandoned is None:
                time.sleep(min(left, PROBE_EVERY_S))
            if self.probe is not None:
                answers = _answers(self.probe)
                if answers and seen_down:
                    return  # Drive is back: try now rather than at the end of a long pause
                seen_down = seen_down or not answers


def _answers(folder: Path) -> bool:
    try:
        os.stat(folder)
    except OSError:
        return False
    return True


def retrying(action, what: str, log, retry_wait_s: float = 2.0, give_up_after_s: float = 600.0,
             abandoned: threading.Event | None = None, max_wait_s: float = 60.0):
    """`action()` under a `Retry` of its own (one call, one give-up clock)."""
    return Retry(log, retry_wait_s, max_wait_s, give_up_after_s, abandoned)(action, what)
