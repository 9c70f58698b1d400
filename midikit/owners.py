"""One writer per run. Colab often keeps a disconnected runtime alive and training while the user
opens a new one: `claim` makes this process a run's writer and refuses a run whose owner's heartbeat
is fresh unless told to take it over; the old owner notices the newer claim (`newer_claim`) before its
next write and stops. The `RecordKeeper` is the writer's one thread for run.json: its updates and
its heartbeat. No torch here."""

from __future__ import annotations

import copy
import os
import queue
import socket
import threading
import time
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path

from .errors import RunOwnedError
from .models_csv import rebuild_models_csv
from .retry import Retry
from .runs import HEARTBEAT_SECONDS, STALE_AFTER_SECONDS, Owner, read_record, write_record
from .storage import DatasetPaths

_HELD_HERE: set[str] = set()  # run folders this process writes now: between `claim` and `let_go`
_HELD_HERE_LOCK = threading.Lock()


def claim(run_dir: Path, record: dict, takeover: bool = False, log=print) -> Owner:
    """Make this process the run's one writer, writing `record` (with the new owner) as its run.json.

    Refuses (RunOwnedError) a run whose owner is live: another process, perhaps another Colab
    runtime, is still training it; with `takeover` the newer claim wins and that owner stops writing."""
    current = read_record(run_dir)
    previous = current.owner if current is not None else None
    if (previous is not None and previous.writer and previous.state() == "live"
            and not _left_by_this_process(run_dir, previous)):
        if not takeover:
            raise RunOwnedError(_held_message(run_dir.name, previous))
        log(f"Taking over {run_dir.name} from {previous.describe()}: that runtime stops writing at its next "
            "checkpoint or heartbeat.")
    owner = Owner.new(claim=(previous.claim + 1) if previous is not None else 1)
    write_record(run_dir, {**record, "owner": owner.to_dict()})
    with _HELD_HERE_LOCK:
        _HELD_HERE.add(str(Path(run_dir).absolute()))
    return owner


def let_go(run_dir: Path) -> None:
    """This process no longer writes the run (called where the run was opened, in a `finally`, whatever
    became of its record's release): a later claim by this same process is not refused."""
    with _HELD_HERE_LOCK:
        _HELD_HERE.discard(str(Path(run_dir).absolute()))


def _left_by_this_process(run_dir: Path, owner: Owner) -> bool:
    """An owner that is this very process, which no longer writes the run: an earlier call whose end
    could not reach run.json (Drive failed then), e.g. the cell before in the same notebook."""
    if owner.host != socket.gethostname() or owner.pid != os.getpid():
        return False
    with _HELD_HERE_LOCK:
        return str(Path(run_dir).absolute()) not in _HELD_HERE


def _held_message(run_id: str, owner: Owner) -> str:
    age = time.time() - owner.heartbeat
    stale_at = datetime.fromtimestamp(owner.heartbeat + STALE_AFTER_SECONDS).isoformat(sep=" ", timespec="seconds")
    return (f"Run {run_id} is being trained by another runtime ({owner.describe()}; last heartbeat {age:.0f} s ago). "
            f"If that runtime is gone (a disconnected Colab tab), its heartbeat counts as stale at {stale_at} and "
            "--resume auto continues the run then. To take it over now, pass --takeover (takeover=True; in the "
            "training form: resume 'take over'); the other runtime then stops writing.")


def newer_claim(run_dir: Path, owner: Owner) -> Owner | None:
    """The owner that took the run over from `owner`, or None while `owner` still holds it."""
    current = read_record(run_dir)
    other = current.owner if current is not None else None
    if other is None or other.writer == owner.writer or other.claim < owner.claim:
        return None
    return other


class RecordKeeper:
    """The one writer of a run's run.json in this process, on its own thread.

    `update(**fields)` hands a copy of the fields over a queue and returns a Future; the thread merges
    them into its private record, refreshes the heartbeat and writes the file, and between updates it
    refreshes the heartbeat every `heartbeat_s`. Before each write it re-reads the owner: once another
    process has claimed the run, `lost` is set and nothing more is written. A hung Drive delays the
    heartbeat, never the training thread; a failing one fails an update (its caller retries), and the
    last write, which lets go of the run, waits it out (`close`'s timeout)."""

    def __init__(self, paths: DatasetPaths, run_dir: Path, record: dict, owner: Owner, log=print,
                 heartbeat_s: float = HEARTBEAT_SECONDS):
        self.paths, self.run_dir, self.log = paths, Path(run_dir), log
        self.owner = owner
        self.lost = threading.Event()
        self._record = copy.deepcopy({**record, "owner": owner.to_dict()})
        self._heartbeat_s = heartbeat_s
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="midikit-run-record", daemon=True)
        self._thread.start()

    def update(self, **fields) -> Future:
        done: Future = Future()
        self._queue.put((copy.deepcopy(fields), done))
        return done

    def close(self, release: bool = True, timeout: float = 10.0, retry_wait_s: float = 2.0) -> bool:
        """Write the last update (releasing the run when `release`) and stop the thread. Drive failures
        are waited out for up to `timeout`, so the run is let go of once Drive answers; True when it was."""
        done: Future = Future()
        self._queue.put((_STOP, (release, time.monotonic() + timeout, retry_wait_s), done))
        self._thread.join(timeout + 1.0)
        return done.done() and done.exception() is None and not self._thread.is_alive()

    # -- on the keeper's thread ------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                items = [self._queue.get(timeout=self._heartbeat_s)]
            except queue.Empty:
                items = [({}, None)]  # a heartbeat
            while not self._queue.empty():  # coalesce what piled up while Drive was slow
                items.append(self._queue.get_nowait())
            stop = next((item for item in items if item[0] is _STOP), None)
            updates = [fields for fields, _ in (item for item in items if item[0] is not _STOP)]
            waiting = [done for _, done in (item for item in items if item[0] is not _STOP) if done is not None]
            if stop is None:
                self._write(updates, waiting)
                continue
            self._write_last(updates, waiting + [stop[2]], *stop[1])
            return

    def _write(self, updates: list[dict], waiting: list[Future], release: bool = False, retry=None) -> None:
        try:
            (retry or _once)(self._apply, "The run's record (run.json)", updates, release)
        except Exception as exc:  # never into training: the caller learns from the Future
            for done in waiting:
                done.set_exception(exc)
            return
        for done in waiting:
            done.set_result(True)

    def _write_last(self, updates: list[dict], waiting: list[Future], release: bool, deadline: float,
                    retry_wait_s: float) -> None:
        """The last write (the release): retried while Drive fails, until `deadline`."""
        retry = Retry(self.log, retry_wait_s, give_up_after_s=max(0.0, deadline - time.monotonic()), probe=self.run_dir)
        self._write(updates, waiting, release, retry)

    def _apply(self, updates: list[dict], release: bool) -> None:
        if self.lost.is_set() or newer_claim(self.run_dir, self.owner) is not None:
            self.lost.set()
            raise RunOwnedError(f"Run {self.run_dir.name} was taken over by another runtime; this one stops writing.")
        for update in updates:
            self._record.update(update)
        self._record["owner"] = dict(self._record["owner"], heartbeat=time.time(), released=release)
        write_record(self.run_dir, self._record, create=False)
        if any(updates) or release:
            rebuild_models_csv(self.paths)


_STOP = object()  # the queue item that ends a RecordKeeper's thread


def _once(action, what, *args):
    return action(*args)
