"""The run registry: one `run.json` per run, the single source of truth for what runs exist, what
state each is in and which process writes it (its `Owner`).

`checkpoints/<run_id>/run.json` holds the run's status, step, best validation loss and step, both
configs, the dataset it trains on, where its best weights are, and its owner: the one process
allowed to write the run (host, process id, a heartbeat refreshed every `HEARTBEAT_SECONDS`).
`list_runs` answers every question about runs (which exist, which can be resumed, which are done,
which can play). Making a process a run's one writer is `midikit.owners`; `logs/models.csv` is
derived from the registry (`midikit.models_csv`). No torch here.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .configs import ModelConfig
from .errors import StorageError
from .storage import RUN_ID_PATTERN, DatasetPaths, atomic_write_text, explain_os_error

RUN_FILE = "run.json"
RUN_FORMAT = "midikit-run"
RUN_VERSION = 2
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 120.0
DONE = ("finished", "early_stopped", "max_steps")  # a finished run is never resumed by --resume auto
# "running" with a dead owner: a disconnect; "time_budget": the command's --max_minutes ran out.
RESUMABLE = ("starting", "running", "interrupted", "failed", "time_budget")

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
            if started is None and process_gone(self.pid):
                return "dead"
            if started is not None and self.pid_started is not None and started != self.pid_started:
                return "dead"  # the pid now belongs to another process
        age = (now or time.time()) - self.heartbeat
        return "stale" if age > STALE_AFTER_SECONDS else "live"

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.claimed_at).isoformat(sep=" ", timespec="seconds")
        return f"host {self.host}, process {self.pid}, since {since}"


def process_gone(pid: int) -> bool:
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
    merged = {key: metrics.get(key)
              for key in ("best_val_loss", "best_step", "tokens_seen", "elapsed_seconds", "parameters")}
    merged.update(step=metrics.get("steps"), model_config=side.get("model_config"),
                  train_config=side.get("train_config"), dataset=side.get("dataset"))
    return {**merged, **data}


def write_record(run_dir: str | os.PathLike, data: dict, create: bool = True) -> None:
    """Write run.json atomically, `updated` set to now. Without `create` a missing run folder is an
    error, never made again: under a dropped Drive mount it would be a local folder hiding the real one."""
    run_dir = Path(run_dir)
    data = {**data, "format": RUN_FORMAT, "version": RUN_VERSION,
            "updated": datetime.now().isoformat(timespec="seconds")}
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
    return [record for record in list_runs(paths, model_type, status="done")
            if paths.best_weights(record.run_id).is_file()]


def playable_runs(paths: DatasetPaths, model_type: str | None = None) -> list[RunRecord]:
    """Runs whose best weights are on disk, newest first, whatever their status: a run stopped after
    20 minutes plays as well as a finished one (what generation, evaluation and the notebooks offer)."""
    return [record for record in list_runs(paths, model_type) if paths.best_weights(record.run_id).is_file()]


_ENDINGS = {"finished": "finished", "max_steps": "finished (max_steps)", "early_stopped": "stopped early",
            "interrupted": "stopped", "failed": "failed", "time_budget": "paused (time budget)",
            "taken_over": "stopped"}


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
        raise StorageError(f"Run {record.run_id} is {record.status}, not finished: "
                           "its numbers are added once it has ended.")
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
