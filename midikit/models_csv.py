"""`logs/models.csv`: one row per run, derived from the run registry (each run's run.json) and never
edited on its own. Rewritten under a lock file by whichever process just changed a record, so two
runs finishing together cannot lose a row or put back older values. No torch here."""

from __future__ import annotations

import csv
import io
import os
import socket
import threading
import time
from pathlib import Path

from .configs import applies_to
from .errors import StorageError
from .runs import RunRecord, list_runs, process_gone
from .storage import DatasetPaths, atomic_write_text, explain_os_error

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
    row.update({name: train.get(name, "") for name in ("epochs", "batch_size", "lr", "weight_decay", "max_steps",
                                                        "seed", "device", "precision", "preset")})
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
        return text == self.mine or (host == socket.gethostname() and pid.isdigit() and process_gone(int(pid)))

    def __exit__(self, *exc_info):
        try:
            self.path.unlink(missing_ok=True)  # if Drive fails here, the next rebuild breaks our own lock
        except OSError:
            pass
        finally:
            self._LOCAL.release()
