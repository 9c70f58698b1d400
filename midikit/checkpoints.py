"""Full training state <-> file, safely, on a Drive that may drop at any moment.

A run's folder (`DatasetPaths.run_checkpoints(run_id)`) holds::

    step_00001200.pt  step_00001200.pt.sha256    newest `keep_last` step files
    best.pt           best.pt.sha256             state at the best validation loss
    run.json                                     run_id, model_type, status, dataset, updated

Every .pt is written to a temporary name in the same folder, flushed, fsynced and renamed;
its sha256 is written (atomically) after the rename. A checkpoint without a matching checksum
is not valid, so a write killed at any moment leaves either the previous valid file or nothing
that loading would trust. `CheckpointWriter` snapshots the state to CPU memory and writes it on
one background thread, so training waits for a memory copy, not for Drive.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import re
import shutil
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from .models import ConfigError
from .storage import RUN_ID_PATTERN, StorageError, atomic_write_text, explain_os_error

STATE_FORMAT = "midikit-train-state"  # the "format" key of every training-state dict
STEP_FILE = re.compile(r"^step_(\d{8,})\.pt$")
BEST_FILE = "best.pt"
RUN_INFO_FILE = "run.json"
CHECKSUM_SUFFIX = ".sha256"
_HASH_CHUNK = 8 * 2**20


class CheckpointError(StorageError):
    """A checkpoint is missing, truncated, corrupt or unverified; the message names it."""


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    size_bytes: int
    seconds: float
    sha256: str
    best: bool


def step_file_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


# --------------------------------------------------------------------------- snapshot


# Exact types: subclasses (numpy scalars are float/int subclasses, defaultdict, namedtuple,
# enums) pickle fine but torch.load(weights_only=True) refuses them.
_PLAIN = (str, int, float, bool, type(None), bytes, torch.dtype, torch.device, torch.Size)
_DICTS = (dict, OrderedDict)


def to_cpu_snapshot(obj, reuse=None, _where: str = "state"):
    """Deep copy of a state made of dicts/lists/tuples, tensors and plain values, every tensor
    detached and cloned to CPU, so the caller may keep training (and mutate its tensors) at once.

    `reuse`, a previous snapshot nobody reads any more, lends its tensors wherever shape and dtype
    match: copying into memory already touched is several times faster than into fresh memory,
    whose page faults dominate for a GB-sized state. Anything else (numpy arrays and scalars,
    Generators, other objects) raises TypeError naming where it is: it would not load with
    `weights_only=True`.
    """
    kind = type(obj)
    if isinstance(obj, torch.Tensor):
        if isinstance(reuse, torch.Tensor) and reuse.shape == obj.shape and reuse.dtype == obj.dtype:
            return reuse.copy_(obj.detach())
        return obj.detach().to("cpu", copy=True)
    if kind in _DICTS:
        previous = reuse if type(reuse) in _DICTS else {}
        copied = copy.copy(obj)  # keeps the dict type and, for state_dicts, their `_metadata`
        for key, value in obj.items():
            copied[key] = to_cpu_snapshot(value, previous.get(key), f"{_where}[{key!r}]")
        return copied
    if kind in (list, tuple):
        previous = reuse if type(reuse) is kind and len(reuse) == len(obj) else [None] * len(obj)
        items = [to_cpu_snapshot(value, old, f"{_where}[{i}]") for i, (value, old) in enumerate(zip(obj, previous))]
        return items if kind is list else tuple(items)
    if kind in _PLAIN:
        return obj
    raise TypeError(
        f"{_where} is a {kind.__module__}.{kind.__name__}; a checkpoint may hold only tensors and plain "
        "Python (dict, list, tuple, str, int, float, bool, None) so that torch.load(weights_only=True) "
        "reads it. Convert it, e.g. float(x), x.item(), x.tolist() or torch.from_numpy(x)."
    )


# --------------------------------------------------------------------------- RNG


def capture_rng_state(sampler_generator: torch.Generator | None) -> dict:
    """Every RNG a training step draws from, as tensors and plain Python only."""
    np_state = np.random.get_state(legacy=False)
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": np_state["state"]["key"].tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss},
        "sampler": sampler_generator.get_state() if sampler_generator is not None else None,
    }


def restore_rng_state(rng: dict, sampler_generator: torch.Generator | None) -> None:
    """Put back what `capture_rng_state` took, so the next random draws are bit-identical."""
    # Loading with map_location="cuda" would move these too; the setters want CPU byte tensors.
    torch.set_rng_state(rng["torch"].cpu())
    if rng.get("cuda") and torch.cuda.is_available():
        states = [state.cpu() for state in rng["cuda"]][: torch.cuda.device_count()]
        for device, state in enumerate(states):
            torch.cuda.set_rng_state(state, device)
    numpy_state = rng["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {"key": np.asarray(numpy_state["key"], dtype=np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    python_state = rng["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))
    if sampler_generator is not None and rng.get("sampler") is not None:
        sampler_generator.set_state(rng["sampler"].cpu())


# --------------------------------------------------------------------------- files


class _HashingFile:
    """File-like that hashes what torch.save streams through it, so the state is serialized
    once, straight to disk, without a second in-memory copy."""

    def __init__(self, handle, sha):
        self.handle = handle
        self.sha = sha

    def write(self, data) -> int:
        self.sha.update(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def _tmp_path(path: Path) -> Path:
    # Same pattern as storage.atomic_write_bytes: hidden, so listings never mistake it for a checkpoint.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _write_atomically(path: Path, fill) -> int:
    """`fill(handle)` writes to a temporary name in path's folder; flush, fsync, rename over
    `path`. Returns the size. Disk/Drive failures become StorageError with a fix."""
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        size = tmp.stat().st_size
        # An overwritten checkpoint counts as unverified, not corrupt, until its new checksum lands;
        # it is emptied first because Drive may keep a replaced file in its trash, like a deleted one.
        checksum_path(path).unlink(missing_ok=True)
        if path.exists():
            os.truncate(path, 0)
        os.replace(tmp, path)
    except BaseException as exc:
        _discard(tmp)
        if isinstance(exc, OSError):
            raise explain_os_error(exc, path) from exc
        raise
    return size


def _write_checksum(path: Path, digest: str) -> None:
    # sha256sum's format, so `sha256sum -c best.pt.sha256` works in the folder too.
    atomic_write_text(checksum_path(path), f"{digest}  {path.name}\n")


def save_state(path: str | os.PathLike, state: dict) -> CheckpointInfo:
    """Write `state` to `path` atomically (tmp in the same folder, fsync, rename), then its
    `<path>.sha256`. Raises StorageError (with a fix) when the disk or Drive fails."""
    path = Path(path)
    start = time.perf_counter()
    sha = hashlib.sha256()
    size = _write_atomically(path, lambda handle: torch.save(state, _HashingFile(handle, sha)))
    _write_checksum(path, sha.hexdigest())
    step = state.get("step") if isinstance(state.get("step"), int) else _step_of(path)
    return CheckpointInfo(path, step, size, time.perf_counter() - start, sha.hexdigest(), path.name == BEST_FILE)


def _copy_checkpoint(src: Path, dst: Path, digest: str) -> None:
    """Install a copy of a just-written checkpoint under another name, as atomically as save_state."""
    try:
        with open(src, "rb") as source:
            _write_atomically(dst, lambda handle: shutil.copyfileobj(source, handle, _HASH_CHUNK))
    except OSError as exc:  # opening the source
        raise explain_os_error(exc, src) from exc
    _write_checksum(dst, digest)


def _discard(path: Path) -> None:
    try:
        remove_file(path)
    except OSError:
        pass


def remove_file(path: str | os.PathLike) -> None:
    """Delete a file after truncating it to 0 bytes: Drive keeps deleted files in its trash,
    where a full-size checkpoint would keep eating the user's quota."""
    path = Path(path)
    try:
        os.truncate(path, 0)
    except FileNotFoundError:
        return
    path.unlink(missing_ok=True)


def _sha256_of(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def verify_checkpoint(path: str | os.PathLike) -> tuple[str, str]:
    """("valid" | "corrupt" | "unverified" | "missing", why) by the file's recorded sha256.

    A failing read (Drive dropped) raises StorageError instead: it says nothing about the file,
    and calling a good checkpoint corrupt would make a resume start over.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        try:
            recorded = checksum_path(path).read_text().split()
        except FileNotFoundError:
            return "unverified", f"no {checksum_path(path).name} (the write did not finish)"
        if not recorded:
            return "unverified", f"{checksum_path(path).name} is empty"
        actual = _sha256_of(path)
    except FileNotFoundError:  # never written, or rotated away while we looked
        return "missing", "no such file"
    except OSError as exc:
        raise explain_os_error(exc, path) from exc
    if actual != recorded[0].lower():
        return "corrupt", f"checksum mismatch ({size} bytes; truncated or damaged)"
    return "valid", "checksum matches"


def load_state(path: str | os.PathLike, map_location="cpu") -> dict:
    """Verify the sha256, then `torch.load(weights_only=True)`. CheckpointError if the file is
    missing, unverified, corrupt or not a state dict; StorageError if it cannot be read."""
    path = Path(path)
    status, why = verify_checkpoint(path)
    if status != "valid":
        raise CheckpointError(f"Checkpoint {path} is {status}: {why}.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise explain_os_error(exc, path) from exc
    except Exception as exc:  # a matching checksum over a file torch cannot read: still unusable
        raise CheckpointError(f"Checkpoint {path} cannot be loaded: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"Checkpoint {path} holds a {type(state).__name__}, not a training state dict.")
    return state


def _step_of(path: Path) -> int | None:
    match = STEP_FILE.match(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The run's step files, newest (highest step) first; temporary files are never listed."""
    run_dir = Path(run_dir)
    try:
        if not run_dir.is_dir():
            return []
        found = [child for child in run_dir.iterdir() if STEP_FILE.match(child.name) and child.is_file()]
    except OSError as exc:
        raise explain_os_error(exc, run_dir) from exc
    return sorted(found, key=_step_of, reverse=True)


def _candidates(run_dir: Path) -> list[Path]:
    # best.pt is never newer than the newest step file (a best save writes both), so it comes last.
    best = run_dir / BEST_FILE
    return list_checkpoints(run_dir) + ([best] if best.is_file() else [])


def load_latest(run_dir: str | os.PathLike, map_location="cpu", log=print) -> tuple[Path, dict] | None:
    """The newest valid checkpoint of a run as (path, state), or None if it has none.

    Truncated, corrupt or unverified files are skipped, and `log` says which and what was used.
    A folder that cannot be read (Drive dropped) raises StorageError rather than look empty.
    """
    skipped = []
    for path in _candidates(Path(run_dir)):
        try:
            state = load_state(path, map_location)
        except CheckpointError as exc:
            skipped.append(str(exc))
            continue
        if skipped:
            log(f"Skipped {len(skipped)} unusable checkpoint(s): {' '.join(skipped)} Using {path} instead.")
        return path, state
    if skipped:
        log(f"No valid checkpoint in {run_dir}: {' '.join(skipped)}")
    return None


# --------------------------------------------------------------------------- background writer


class CheckpointWriter:
    """Saves training states of one run folder without making training wait on the disk.

    `save()` copies the state to CPU memory and returns; one background thread writes it
    (one write in flight: a new save first waits for the previous), retries failed writes
    with a short backoff, rotates old files and logs one line per save. Nothing it does
    raises into training: failures end up in `log` and `last_error`.
    """

    def __init__(self, run_dir, keep_last: int = 2, retries: int = 3, retry_wait_s: float = 2.0, log=print,
                 busy_timeout_s: float = 60.0):
        if not isinstance(keep_last, int) or keep_last < 1:
            raise ConfigError(f"keep_last must be an integer >= 1, got {keep_last!r}.")
        self.run_dir = Path(run_dir)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise explain_os_error(exc, self.run_dir) from exc
        self.keep_last = keep_last
        self.retries = retries
        self.retry_wait_s = retry_wait_s
        self.log = log
        self.last_error: BaseException | None = None
        self.last_saved: CheckpointInfo | None = None
        self.write_seconds_total = 0.0  # background time spent writing
        self.saves_completed = 0
        self.saves_failed = 0
        self.saves_skipped = 0
        # How long a save waits for the previous write before giving up on this one: a hung
        # Drive write must not stall training (the final save, with wait=True, always waits).
        self.busy_timeout_s = busy_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="midikit-checkpoint")
        self._pending: Future | None = None
        self._snapshot: dict | None = None  # the last state written; its memory is reused

    def save(self, state: dict, step: int, best: bool = False, wait: bool = False, before=None) -> bool:
        """Copy `state` to CPU memory now and write it as step_<step>.pt (and best.pt) in the
        background; with `wait`, return only once it is written (or has failed).

        `before`, if given, is called on the writer thread just before the state is written: the
        trainer refreshes its other artifacts there, off the training thread. Returns False when
        the save was skipped because the previous write is still running after `busy_timeout_s`."""
        if not wait and not self._wait_for_previous(self.busy_timeout_s):
            self.saves_skipped += 1
            self.log(
                f"Checkpoint step {step} skipped: the previous write is still running after "
                f"{self.busy_timeout_s:.0f} s (Drive slow or hung). Training continues; the next checkpoint tries again."
            )
            return False
        self.wait()
        # The previous write has finished, so its snapshot is free to be overwritten.
        self._snapshot = to_cpu_snapshot(state, reuse=self._snapshot)
        self._pending = self._executor.submit(self._run_then_write, before, self._snapshot, step, best)
        if wait:
            self.wait()
        return True

    def _wait_for_previous(self, timeout_s: float) -> bool:
        """True once no write is in flight; False if one still is after `timeout_s`."""
        if self._pending is None:
            return True
        try:
            self._pending.result(timeout=timeout_s)
        except FuturesTimeout:
            return False
        self._pending = None
        return True

    def wait(self) -> None:
        """Block until no write is in flight."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def close(self) -> None:
        """Finish the pending write and stop the thread."""
        self.wait()
        self._executor.shutdown(wait=True)
        self._snapshot = None

    def __enter__(self) -> "CheckpointWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- on the writer thread ------------------------------------------------
    def _run_then_write(self, before, snapshot: dict, step: int, best: bool) -> None:
        if before is not None:
            try:
                before()
            except Exception as exc:  # never into training, and never instead of the checkpoint
                self.log(f"Before checkpoint step {step}: {exc}")
        self._write(snapshot, step, best)

    def _write(self, snapshot: dict, step: int, best: bool) -> None:
        start = time.perf_counter()
        for attempt in range(self.retries + 1):
            try:
                info = self._write_files(snapshot, step, best)
                break
            except (OSError, StorageError) as exc:
                if attempt == self.retries:
                    return self._failed(step, exc, attempt + 1)
                pause = self.retry_wait_s * 2**attempt
                self.log(f"Checkpoint step {step}: write failed ({exc}); retrying in {pause:.1f} s.")
                time.sleep(pause)
            except Exception as exc:  # not a disk problem: retrying would fail the same way
                return self._failed(step, exc, attempt + 1)
        seconds = time.perf_counter() - start
        self.last_saved = replace(info, seconds=seconds)
        self.last_error = None
        self.write_seconds_total += seconds
        self.saves_completed += 1
        names = info.path.name + (f" + {BEST_FILE}" if best else "")
        self.log(f"Checkpoint saved: {self.run_dir.name}/{names}, {info.size_bytes / 2**20:.1f} MiB, {seconds:.1f} s.")

    def _failed(self, step: int, exc: BaseException, attempts: int) -> None:
        self.last_error = exc
        self.saves_failed += 1
        self.log(
            f"Checkpoint step {step} NOT saved after {attempts} attempt(s): {exc} "
            "Training continues; the next checkpoint will try again."
        )

    def _write_files(self, snapshot: dict, step: int, best: bool) -> CheckpointInfo:
        self._remove_temporaries()
        info = save_state(self.run_dir / step_file_name(step), snapshot)
        if best:
            # A file copy, not a second torch.save: same bytes, same checksum.
            _copy_checkpoint(info.path, self.run_dir / BEST_FILE, info.sha256)
        self._rotate(step)
        return replace(info, step=step, best=best)

    def _remove_temporaries(self) -> None:
        # Left by a killed write of ours (one write in flight: none is live). Only our own names:
        # the trainer may be writing run.json's temporary file right now.
        for pattern in (".step_*.tmp-*", f".{BEST_FILE}*.tmp-*"):
            for stray in self.run_dir.glob(pattern):
                remove_file(stray)

    def _rotate(self, step: int) -> None:
        """Keep the newest `keep_last` step files up to `step`. Files of later steps belong to a
        timeline this run abandoned (it resumed from an earlier checkpoint), so they go too."""
        files = list_checkpoints(self.run_dir)
        kept = [path for path in files if _step_of(path) <= step][: self.keep_last]
        for path in files:
            if path not in kept:
                # Checksum first: a kill in between leaves an unverified file, never a "valid" empty one.
                checksum_path(path).unlink(missing_ok=True)
                remove_file(path)
        for orphan in self.run_dir.glob("*" + CHECKSUM_SUFFIX):
            if not orphan.with_name(orphan.name[: -len(CHECKSUM_SUFFIX)]).exists():
                orphan.unlink(missing_ok=True)


# --------------------------------------------------------------------------- runs


def write_run_info(run_dir: str | os.PathLike, info: dict) -> None:
    """Write run.json atomically, with `updated` set to now."""
    run_dir = Path(run_dir)
    info = {**info, "updated": datetime.now().isoformat(timespec="seconds")}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise explain_os_error(exc, run_dir) from exc
    atomic_write_text(run_dir / RUN_INFO_FILE, json.dumps(info, indent=2, sort_keys=True) + "\n")


def read_run_info(run_dir: str | os.PathLike) -> dict | None:
    """run.json as a dict, or None when it is missing or not valid JSON."""
    path = Path(run_dir) / RUN_INFO_FILE
    try:
        info = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    except OSError as exc:
        raise explain_os_error(exc, path) from exc
    return info if isinstance(info, dict) else None




def _run_dirs(checkpoints_dir: Path, model_type: str | None = None) -> list[Path]:
    """Run folders, newest first (the timestamp in the name sorts chronologically)."""
    runs = []
    try:
        if not checkpoints_dir.is_dir():
            return []
        for child in checkpoints_dir.iterdir():
            match = RUN_ID_PATTERN.match(child.name)
            if match and child.is_dir() and model_type in (None, match["model_type"]):
                runs.append((match["timestamp"], child))
    except OSError as exc:
        raise explain_os_error(exc, checkpoints_dir) from exc
    return [path for _, path in sorted(runs, reverse=True)]


def find_resumable_run(checkpoints_dir: str | os.PathLike, model_type: str) -> Path | None:
    """The newest run folder of `model_type` that is not finished and holds a valid checkpoint."""
    for run_dir in _run_dirs(Path(checkpoints_dir), model_type):
        info = read_run_info(run_dir) or {}
        if info.get("status") == "finished":
            continue
        if any(verify_checkpoint(path)[0] == "valid" for path in _candidates(run_dir)):
            return run_dir
    return None


def load_resumable(checkpoints_dir: str | os.PathLike, model_type: str, log=print) -> tuple[Path, dict] | None:
    """(path, state) of the newest valid checkpoint of the newest unfinished run of `model_type`,
    or None. Each candidate is verified and read once (a resume from Drive reads GBs)."""
    for run_dir in _run_dirs(Path(checkpoints_dir), model_type):
        if (read_run_info(run_dir) or {}).get("status") == "finished":
            continue
        found = load_latest(run_dir, log=log)
        if found is not None:
            return found
    return None


def inspect_run(run_dir: str | os.PathLike) -> list[dict]:
    """One dict per checkpoint file (step files newest first, then best.pt), checksums verified:
    name, path, step, size_bytes, modified (datetime), age_s, status (valid|corrupt|unverified), detail."""
    now = time.time()
    report = []
    for path in _candidates(Path(run_dir)):
        status, detail = verify_checkpoint(path)
        try:
            stat = path.stat()
        except FileNotFoundError:  # rotated away while we looked
            continue
        step = _step_of(path)
        if step is None and status == "valid":
            step = _peek_step(path)
        report.append(
            {
                "name": path.name,
                "path": path,
                "step": step,
                "size_bytes": stat.st_size,
                "modified": datetime.fromtimestamp(stat.st_mtime),
                "age_s": now - stat.st_mtime,
                "status": status,
                "detail": detail,
            }
        )
    return report


def _peek_step(path: Path) -> int | None:
    # mmap reads only the pickle, not the tensors: cheap even for a GB-sized best.pt.
    try:
        step = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("step")
    except Exception:
        return None
    return step if isinstance(step, int) else None


def list_runs(checkpoints_dir: str | os.PathLike) -> list[dict]:
    """One dict per run folder, newest first: run_id, model_type, status (run.json's, or
    "unknown"), dataset, updated, newest_step (of its newest valid checkpoint), path, files."""
    runs = []
    for run_dir in _run_dirs(Path(checkpoints_dir)):
        info = read_run_info(run_dir) or {}
        files = inspect_run(run_dir)
        valid_steps = [f["step"] for f in files if f["status"] == "valid" and f["step"] is not None]
        runs.append(
            {
                "run_id": run_dir.name,
                "model_type": info.get("model_type", RUN_ID_PATTERN.match(run_dir.name)["model_type"]),
                "status": info.get("status", "unknown"),
                "dataset": info.get("dataset"),
                "updated": info.get("updated"),
                "newest_step": max(valid_steps, default=None),
                "path": run_dir,
                "files": files,
            }
        )
    return runs
