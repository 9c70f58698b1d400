"""The run registry: one `run.json` per run, the single source of truth for what runs exist, what
state each is in and which process writes it.

`checkpoints/<run_id>/run.json` holds the run's status, step, best validation loss and step, both
configs, the dataset it trains on, where its best weights are, and its owner: the one process
allowed to write the run (host, process id, a heartbeat refreshed every `HEARTBEAT_SECONDS`).
`list_runs` answers every question about runs (which exist, which can be resumed, which are done);
`logs/models.csv` is derived from the registry, never edited on its own.

A run has one writer. Colab often keeps a disconnected runtime alive and training while the user
opens a new one: `claim` refuses a run whose owner's heartbeat is fresh, unless told to take it over,
and the old owner notices the newer claim before its next write and stops. No torch here.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import queue
import socket
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .configs import ModelConfig, applies_to
from .errors import RunOwnedError, StorageError
from .retry import Retry
from .storage import RUN_ID_PATTERN, DatasetPaths, atomic_write_text, explain_os_error

RUN_FILE = "run.json"
RUN_FORMAT = "midikit-run"
RUN_VERSION = 2
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 120.0
DONE = ("finished", "early_stopped", "max_steps")  # a finished run is never resumed by --resume auto
# "running" with a dead owner: a disconnect; "time_budget": the command's --max_minutes ran out.
RESUMABLE = ("starting", "running", "interrupted", "failed", "time_budget")
LOCK_STALE_SECONDS = 30.0

# models.csv columns, in order. New columns go at the end so old files keep lining up.
CSV_FIELDS = [
    "run_id", "model_type", "status", "dataset", "preset", "parameters",
    "vocab_size", "context_length", "embed_size", "hidden_size", "num_layers", "dropout",
    "d_model", "nhead", "dim_feedforward",
    "epochs", "batch_size", "lr", "weight_decay", "max_steps", "seed", "device", "precision",
    "steps", "epochs_done", "tokens_seen", "best_val_loss", "best_step", "final_train_loss",
    "elapsed_seconds", "weights", "updated", "positions",
]


# --------------------------------------------------------------------------- owners


def _process_start(pid: int) -> float | None:
    """When process `pid` started (clock ticks since boot), to tell a reused pid from the original;
    None when there is no such process, or only its zombie (killed, not yet reaped by its parent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    try:
        return None if fields[0] in (b"Z", b"X") else float(fields[19])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Owner:
    """The process that writes a run. `claim` counts up with every takeover: the highest claim wins."""

    host: str
    pid: int
    writer: str  # unique per claim
    claim: int
    claimed_at: float  # time.time()
    heartbeat: float
    pid_started: float | None = None
    released: bool = False  # the process ended and let go of the run

    @classmethod
    def new(cls, claim: int) -> "Owner":
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex, claim, now, now, _process_start(os.getpid()))

    @classmethod
    def from_dict(cls, data) -> "Owner | None":
        try:
            return cls(**data) if isinstance(data, dict) else None
        except TypeError:
            return None

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def state(self, now: float | None = None) -> str:
        """"released", "dead" (a process of this host that no longer exists), "stale" (no heartbeat for
        STALE_AFTER_SECONDS) or "live"."""
        if self.released:
            return "released"
        if self.host == socket.gethostname():
            started = _process_start(self.pid)  # None: no such process, a zombie, or no /proc to ask
            if started is None and _gone(self.pid):
                return "dead"
            if started is not None and self.pid_started is not None and started != self.pid_started:
                return "dead"  # the pid now belongs to another process
        age = (now or time.time()) - self.heartbeat
        return "stale" if age > STALE_AFTER_SECONDS else "live"

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.claimed_at).isoformat(sep=" ", timespec="seconds")
        return f"host {self.host}, process {self.pid}, since {since}"


def _gone(pid: int) -> bool:
    """Whether process `pid` of this host has ended (a zombie counts as ended)."""
    return _process_start(pid) is None and (Path(f"/proc/{pid}").exists() or not _pid_exists(pid))


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RunRecord:
    """One run as the registry knows it (run.json's content, read once)."""

    run_id: str
    path: Path  # the run's checkpoint folder
    data: dict

    @property
    def status(self) -> str:
        return self.data.get("status", "unknown")

    @property
    def model_type(self) -> str:
        return self.data.get("model_type") or RUN_ID_PATTERN.match(self.run_id)["model_type"]

    @property
    def done(self) -> bool:
        return self.status in DONE

    @property
    def owner(self) -> Owner | None:
        return Owner.from_dict(self.data.get("owner"))

    @property
    def model_config(self) -> ModelConfig | None:
        values = self.data.get("model_config")
        return ModelConfig.from_dict(values) if isinstance(values, dict) else None

    def get(self, key, default=None):
        return self.data.get(key, default)

    def owner_state(self, now: float | None = None) -> str:
        owner = self.owner
        return "none" if owner is None else owner.state(now)


def read_record(run_dir: str | os.PathLike) -> RunRecord | None:
    """The run.json of a run folder (None when missing or unreadable JSON). Records of midikit 0.1
    held only the status: their configs and metrics come from the run's sidecar."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    except OSError as exc:
        raise explain_os_error(exc, path) from exc
    if not isinstance(data, dict):
        return None
    if data.get("version") != RUN_VERSION:
        data = _upgrade_legacy(run_dir, data)
    return RunRecord(run_dir.name, run_dir, data)


def _upgrade_legacy(run_dir: Path, data: dict) -> dict:
    sidecar = run_dir.parent.parent / "models" / f"{run_dir.name}.json"
    try:
        side = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return data
    metrics = side.get("metrics") or {}
    merged = {key: metrics.get(key) for key in ("best_val_loss", "best_step", "tokens_seen", "elapsed_seconds", "parameters")}
    merged.update(step=metrics.get("steps"), model_config=side.get("model_config"), train_config=side.get("train_config"),
                  dataset=side.get("dataset"))
    return {**merged, **data}


def write_record(run_dir: str | os.PathLike, data: dict, create: bool = True) -> None:
    """Write run.json atomically, `updated` set to now. Without `create` a missing run folder is an
    error, never made again: under a dropped Drive mount it would be a local folder hiding the real one."""
    run_dir = Path(run_dir)
    data = {**data, "format": RUN_FORMAT, "version": RUN_VERSION, "updated": datetime.now().isoformat(timespec="seconds")}
    if create:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise explain_os_error(exc, run_dir) from exc
    atomic_write_text(run_dir / RUN_FILE, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def list_runs(paths: DatasetPaths, model_type: str | None = None, status=None) -> list[RunRecord]:
    """The dataset's runs, newest first (run ids carry their start time).

    status: None (all), one status, a tuple of them, or "done" / "resumable" for the groups DONE and
    RESUMABLE. Folders without a readable run.json are listed with status "unknown"."""
    wanted = {"done": DONE, "resumable": RESUMABLE}.get(status, (status,) if isinstance(status, str) else status)
    records = []
    for run_dir in _run_dirs(paths.checkpoints):
        record = read_record(run_dir) or RunRecord(run_dir.name, run_dir, {"status": "unknown"})
        if model_type is not None and record.model_type != model_type:
            continue
        if wanted is not None and record.status not in wanted:
            continue
        records.append(record)
    return records


def finished_runs(paths: DatasetPaths, model_type: str | None = None) -> list[RunRecord]:
    """Done runs whose best weights are on disk, newest first."""
    return [record for record in list_runs(paths, model_type, status="done") if paths.best_weights(record.run_id).is_file()]


def playable_runs(paths: DatasetPaths, model_type: str | None = None) -> list[RunRecord]:
    """Runs whose best weights are on disk, newest first, whatever their status: a run stopped after
    20 minutes plays as well as a finished one (what generation, evaluation and the notebooks offer)."""
    return [record for record in list_runs(paths, model_type) if paths.best_weights(record.run_id).is_file()]


_ENDINGS = {"finished": "finished", "max_steps": "finished (max_steps)", "early_stopped": "stopped early",
            "interrupted": "stopped", "failed": "failed", "time_budget": "paused (time budget)", "taken_over": "stopped"}


def describe_progress(record: RunRecord) -> str:
    """How far a run got, for a person: "stopped at step 4,200, best at 4,000"."""
    step = record.get("step") or 0
    if record.status in ("running", "starting"):
        owner = record.owner_state()
        ended = "training now, step" if owner == "live" else "disconnected at step"
    else:
        ended = f"{_ENDINGS.get(record.status, record.status)} at step"
    best = record.get("best_step")
    weights = record.get("weights") or {}
    if best is not None and record.get("best_val_loss") is not None:
        tail = f"best at {best:,}"
    elif weights.get("step") is not None:
        tail = f"no evaluation yet (weights of step {weights['step']:,})"
    else:
        tail = "no evaluation yet"
    return f"{ended} {step:,}, {tail}"


# Fields of run.json that only the registry and the run's writer set.
_REGISTRY_FIELDS = ("owner", "run_id", "model_type", "status", "format", "version", "updated")


def annotate(run_dir: str | os.PathLike, **fields) -> RunRecord:
    """Add `fields` to a finished run's run.json: what is learnt about a run after it ended (its
    quality report's headline numbers). run.json is re-read and written back atomically with the new
    fields; its owner and the registry's own fields stay as they are. A run that is not done is
    refused: until it ends, its writer owns the record."""
    run_dir = Path(run_dir)
    reserved = sorted(set(fields) & set(_REGISTRY_FIELDS))
    if reserved:
        raise ValueError(f"annotate() does not change the registry's own fields {reserved}.")
    record = read_record(run_dir)
    if record is None:
        raise StorageError(f"{run_dir} has no readable {RUN_FILE}: it is not a midikit run folder.")
    if not record.done:
        raise StorageError(f"Run {record.run_id} is {record.status}, not finished: its numbers are added once it has ended.")
    write_record(run_dir, {**record.data, **fields})
    return read_record(run_dir)


def _run_dirs(checkpoints_dir: Path) -> list[Path]:
    runs = []
    try:
        if not checkpoints_dir.is_dir():
            return []
        for child in checkpoints_dir.iterdir():
            match = RUN_ID_PATTERN.match(child.name)
            if match and child.is_dir():
                runs.append((match["timestamp"], child.name, child))
    except OSError as exc:
        raise explain_os_error(exc, checkpoints_dir) from exc
    return [path for _, _, path in sorted(runs, reverse=True)]


# --------------------------------------------------------------------------- one writer


_HELD_HERE: set[str] = set()  # run folders this process claimed and whose RecordKeeper has not ended
_HELD_HERE_LOCK = threading.Lock()


def claim(run_dir: Path, record: dict, takeover: bool = False, log=print) -> Owner:
    """Make this process the run's one writer, writing `record` (with the new owner) as its run.json.

    Refuses (RunOwnedError) a run whose owner is live: another process, perhaps another Colab
    runtime, is still training it; with `takeover` the newer claim wins and that owner stops writing."""
    current = read_record(run_dir)
    previous = current.owner if current is not None else None
    if previous is not None and previous.writer and previous.state() == "live" and not _left_by_this_process(run_dir, previous):
        if not takeover:
            raise RunOwnedError(_held_message(run_dir.name, previous))
        log(f"Taking over {run_dir.name} from {previous.describe()}: that runtime stops writing at its next "
            "checkpoint or heartbeat.")
    owner = Owner.new(claim=(previous.claim + 1) if previous is not None else 1)
    write_record(run_dir, {**record, "owner": owner.to_dict()})
    with _HELD_HERE_LOCK:
        _HELD_HERE.add(str(Path(run_dir).absolute()))
    return owner


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
        self._key = str(self.run_dir.absolute())  # claimed by `claim`; let go when this thread ends
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
        try:
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
        finally:
            with _HELD_HERE_LOCK:
                _HELD_HERE.discard(self._key)

    def _write(self, updates: list[dict], waiting: list[Future], release: bool = False, retry=None) -> None:
        try:
            (retry or _once)(self._apply, "The run's record (run.json)", updates, release)
        except Exception as exc:  # never into training: the caller learns from the Future
            for done in waiting:
                done.set_exception(exc)
            return
        for done in waiting:
            done.set_result(True)

    def _write_last(self, updates: list[dict], waiting: list[Future], release: bool, deadline: float, retry_wait_s: float) -> None:
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


# --------------------------------------------------------------------------- models.csv


def read_models_csv(paths: DatasetPaths) -> list[dict]:
    """Rows of logs/models.csv as dicts of strings (empty list when there is none yet)."""
    if not paths.models_csv.is_file():
        return []
    with open(paths.models_csv, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def csv_row(record: RunRecord, weights_path: Path) -> dict:
    data = record.data
    model, train = data.get("model_config") or {}, data.get("train_config") or {}
    row = {name: model.get(name, "") for name in CSV_FIELDS if name in model and name != "model_type"}
    row.update({name: "" for name in row if not applies_to(name, record.model_type)})  # unused columns stay empty
    row.update({name: train.get(name, "") for name in ("epochs", "batch_size", "lr", "weight_decay", "max_steps", "seed",
                                                        "device", "precision", "preset")})
    row.update(run_id=record.run_id, model_type=record.model_type, status=record.status,
               dataset=(data.get("dataset") or {}).get("name", ""), parameters=data.get("parameters"),
               steps=data.get("step"), epochs_done=data.get("epoch"), tokens_seen=data.get("tokens_seen"),
               best_val_loss=_fmt(data.get("best_val_loss")), best_step=data.get("best_step"),
               final_train_loss=_fmt(data.get("final_train_loss")),
               elapsed_seconds=_fmt(data.get("elapsed_seconds"), ".1f"),
               weights=str(weights_path) if data.get("weights") else "", updated=data.get("updated", ""))
    return {name: ("" if row.get(name) is None else row.get(name, "")) for name in CSV_FIELDS}


def _fmt(value, spec: str = ".6f") -> str:
    return "" if value is None else format(value, spec)


def rebuild_models_csv(paths: DatasetPaths, attempts: int = 50, wait_s: float = 0.1) -> None:
    """Rewrite logs/models.csv from every run.json, under a lock file: re-read, then write, so two
    runs finishing together cannot lose a row or put back older values. Rows of runs that have no
    run.json any more (a deleted checkpoint folder) are kept as they were."""
    if paths.base.is_dir() and not paths.logs.is_dir():  # only inside a dataset folder that is really there
        paths.logs.mkdir(exist_ok=True)
    with _Lock(paths.logs / ".models.csv.lock", attempts, wait_s):
        records = {record.run_id: record for record in list_runs(paths) if record.status != "unknown"}
        rows = [row for row in read_models_csv(paths) if row.get("run_id") not in records]
        rows += [csv_row(record, paths.best_weights(record.run_id)) for record in records.values()]
        rows.sort(key=lambda row: row.get("run_id", ""))  # run ids carry their start time
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(paths.models_csv, buffer.getvalue())


class _Lock:
    """An exclusive lock file (O_CREAT | O_EXCL); one left by a process of another host is broken after
    LOCK_STALE_SECONDS; one left by an ended process of this host (killed), or by this process (Drive
    failed as it let go), at once: within the process, threads take turns on `_LOCAL`."""

    _LOCAL = threading.Lock()

    def __init__(self, path: Path, attempts: int, wait_s: float):
        self.path, self.attempts, self.wait_s = path, attempts, wait_s
        self.mine = f"{socket.gethostname()} {os.getpid()}\n"

    def __enter__(self):
        self._LOCAL.acquire()
        try:
            self._acquire()
        except BaseException:
            self._LOCAL.release()
            raise
        return self

    def _acquire(self) -> None:
        for _ in range(self.attempts):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._break_if_stale()
                time.sleep(self.wait_s)
                continue
            except OSError as exc:
                raise explain_os_error(exc, self.path) from exc
            os.write(fd, self.mine.encode())
            os.close(fd)
            return
        held = StorageError(f"{self.path} has been held for {self.attempts * self.wait_s:.0f} s by another process; "
                            "models.csv was not rewritten this time (the next checkpoint tries again).")
        held.transient = True  # its holder lets go, or it turns stale
        raise held

    def _break_if_stale(self) -> None:
        try:
            if time.time() - self.path.stat().st_mtime > LOCK_STALE_SECONDS or self._left_by_ended_process():
                self.path.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise explain_os_error(exc, self.path) from exc

    def _left_by_ended_process(self) -> bool:
        """This process (whose threads take turns), or one of this host that has ended (killed)."""
        text = self.path.read_text()
        host, _, pid = text.strip().partition(" ")
        return text == self.mine or (host == socket.gethostname() and pid.isdigit() and _gone(int(pid)))

    def __exit__(self, *exc_info):
        try:
            self.path.unlink(missing_ok=True)  # if Drive fails here, the next rebuild breaks our own lock
        except OSError:
            pass
        finally:
            self._LOCAL.release()
