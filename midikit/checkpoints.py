"""Full training state <-> file, safely, on a Drive that may drop at any moment.

A run's folder (`DatasetPaths.run_checkpoints(run_id)`) holds::

    step_00001200.pt  step_00001200.pt.sha256    newest `keep_last` step files
    best.pt           best.pt.sha256             state at the best validation loss
    run.json                                     the run's record (midikit.runs)

Every .pt is written to a temporary name in the same folder, flushed, fsynced and renamed;
its sha256 is written (atomically) after the rename. A checkpoint without a matching checksum
is not valid, so a write killed at any moment leaves either the previous valid file or nothing
that loading would trust. What a save writes is a CPU copy of the state (`midikit.snapshots`), on a
thread of its own (`midikit.writer`), under the one retry policy for Drive (`midikit.retry`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from .errors import CheckpointError, StorageError
from .retry import WriteAbandoned
from .snapshots import tensors_in
from .storage import atomic_write_text, explain_os_error, os_error_in, replace_file, temporary_path

STATE_FORMAT = "midikit-train-state"  # the "format" key of every training-state dict
STEP_FILE = re.compile(r"^step_(\d{8,})\.pt$")
BEST_FILE = "best.pt"
CHECKSUM_SUFFIX = ".sha256"
_HASH_CHUNK = 8 * 2**20


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


def write_atomically(path: Path, fill, abandoned: threading.Event | None = None) -> int:
    """`fill(handle)` writes to a temporary name in path's folder; flush, fsync, rename over `path`.
    Returns the size. A write whose caller gave up on it (`abandoned`) discards its file instead of
    installing it. Disk/Drive failures, however torch wrapped them, become StorageError with a fix."""
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        size = os.stat(tmp).st_size
        if abandoned is not None and abandoned.is_set():
            raise WriteAbandoned(f"{path.name}: written after it was given up on; discarded")
        # An overwritten checkpoint counts as unverified, not corrupt, until its new checksum lands.
        checksum_path(path).unlink(missing_ok=True)
        replace_file(tmp, path)
    except BaseException as exc:
        _discard(tmp)
        cause = os_error_in(exc)
        if cause is not None and not isinstance(exc, StorageError):
            raise explain_os_error(cause, path) from exc
        raise
    return size


def _write_checksum(path: Path, digest: str) -> None:
    # sha256sum's format, so `sha256sum -c best.pt.sha256` works in the folder too.
    atomic_write_text(checksum_path(path), f"{digest}  {path.name}\n")


def save_state(path: str | os.PathLike, state: dict, abandoned: threading.Event | None = None,
               retry=None) -> CheckpointInfo:
    """Write `state` to `path` atomically (tmp in the same folder, fsync, rename), then its
    `<path>.sha256`. Raises StorageError (with a fix) when the disk or Drive fails. `retry(action)`
    runs each of the two steps (a `midikit.retry.Retry`): a checksum that fails is written again
    without writing the state again."""
    path, retry = Path(path), retry or _once
    start = time.perf_counter()
    size, digest = retry(_write_data, path, state, abandoned)
    retry(_write_checksum, path, digest)
    step = state.get("step") if isinstance(state.get("step"), int) else step_of(path)
    return CheckpointInfo(path, step, size, time.perf_counter() - start, digest, path.name == BEST_FILE)


def _write_data(path: Path, state: dict, abandoned: threading.Event | None) -> tuple[int, str]:
    sha = hashlib.sha256()
    size = write_atomically(path, lambda handle: torch.save(state, _HashingFile(handle, sha)), abandoned)
    return size, sha.hexdigest()


def _once(action, *args):
    return action(*args)


def _copy_checkpoint(src: Path, dst: Path, digest: str, abandoned: threading.Event | None = None) -> None:
    """Install a copy of a just-written checkpoint under another name, as atomically as save_state."""
    try:
        with open(src, "rb") as source:
            write_atomically(dst, lambda handle: shutil.copyfileobj(source, handle, _HASH_CHUNK), abandoned)
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


def remove_temporaries(folder: Path, patterns=(".step_*.tmp-*", f".{BEST_FILE}.tmp-*")) -> int:
    """Delete the temporary files that killed or abandoned checkpoint writes left in `folder`. Only
    the run's one writer calls this, at its start: no write of its own is live then."""
    try:
        strays = ([stray for pattern in patterns for stray in Path(folder).glob(pattern)]
                  if Path(folder).is_dir() else [])
    except OSError as exc:
        raise explain_os_error(exc, Path(folder)) from exc
    for stray in strays:
        _discard(stray)
    return len(strays)


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


def step_of(path: Path) -> int | None:
    """The step in a step file's name (None for best.pt and anything else)."""
    match = STEP_FILE.match(Path(path).name)
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
    return sorted(found, key=step_of, reverse=True)


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
        step = step_of(path)
        if step is None and status == "valid":
            step = _peek_step(path)
        report.append({"name": path.name, "path": path, "step": step, "size_bytes": stat.st_size,
                       "modified": datetime.fromtimestamp(stat.st_mtime), "age_s": now - stat.st_mtime,
                       "status": status, "detail": detail})
    return report


def _peek_step(path: Path) -> int | None:
    # mmap reads only the pickle, not the tensors: cheap even for a GB-sized best.pt.
    try:
        step = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("step")
    except Exception:
        return None
    return step if isinstance(step, int) else None


# --------------------------------------------------------------------------- one save


def write_checkpoint(run_dir: Path, snapshot: dict, step: int, best: bool, keep_last: int | None,
                     abandoned: threading.Event | None = None, retry=None) -> CheckpointInfo:
    """Write one save of a run: step_<step>.pt, a copy as best.pt when `best`, then rotate the older
    step files (keep_last None: the caller rotates, once it knows the folder is still its own).
    `retry(action, *args)` runs each step (state, checksum, best.pt, rotation), so a failure repeats
    only its own step. The run folder is never created here: a folder that vanished (Drive's mount
    dropped) must not come back as an empty local folder that hides the real one."""
    retry = retry or _once
    retry(_require_folder, run_dir)
    info = save_state(run_dir / step_file_name(step), snapshot, abandoned, retry)
    if best:
        retry(_copy_checkpoint, info.path, run_dir / BEST_FILE, info.sha256, abandoned)  # same bytes, same checksum
    if keep_last is not None and (abandoned is None or not abandoned.is_set()):
        retry(rotate, run_dir, step, keep_last)
    return CheckpointInfo(info.path, step, info.size_bytes, info.seconds, info.sha256, best)


def _require_folder(run_dir: Path) -> None:
    if not run_dir.is_dir():
        gone = StorageError(f"The run folder {run_dir} is gone: Google Drive's mount dropped (or the folder was "
                            "moved). Remount with `midikit.storage.mount_drive(force_remount=True)`; the save lands "
                            "once it is back.")
        gone.transient = True  # a remount brings it back: keep retrying
        raise gone


def rotate(run_dir: Path, step: int, keep_last: int) -> list[Path]:
    """Delete step files older than the newest `keep_last` up to `step`. Files of later steps are
    never touched here: they may belong to a write still landing."""
    return delete_checkpoints([path for path in list_checkpoints(run_dir) if step_of(path) <= step][keep_last:])


def discard_newer_than(run_dir: Path, step: int) -> list[Path]:
    """Remove the step files after `step`: a run continued on purpose from an older checkpoint
    abandons them, and --resume auto must not take them for the newest state later."""
    return delete_checkpoints([path for path in list_checkpoints(run_dir) if step_of(path) > step])


def free_space_for(run_dir: Path, step: int) -> list[Path]:
    """On a full disk: keep only the newest verified step file (and best.pt), so the next write fits."""
    older = [path for path in list_checkpoints(run_dir) if step_of(path) <= step]
    keep = next((path for path in older if verify_checkpoint(path)[0] == "valid"), None)
    return delete_checkpoints([path for path in older if path != keep])


def delete_checkpoints(paths: list[Path]) -> list[Path]:
    """Delete checkpoint files, each checksum first: a kill in between leaves an unverified file, never
    a "valid" empty one. Returns `paths`."""
    for path in paths:
        checksum_path(path).unlink(missing_ok=True)
        remove_file(path)
    return paths


def disk_full(exc: BaseException) -> bool:
    cause = os_error_in(exc)
    return cause is not None and cause.errno == errno.ENOSPC


def describe_full_disk(dataset_dir: Path, run_dir: Path, snapshot: dict) -> str:
    """What a checkpoint needs and what takes the space, for a save that does not fit."""
    needed = sum(tensor.numel() * tensor.element_size() for tensor in tensors_in(snapshot))
    try:
        free = shutil.disk_usage(run_dir).free
    except OSError:
        free = None
    largest = _largest_files(dataset_dir)
    mib = lambda n: f"{n / 2**20:,.0f} MiB"  # noqa: E731
    return (f"The disk is full: a checkpoint of this run needs about {mib(needed)} (twice that while best.pt is "
            f"replaced){'' if free is None else f'; {mib(free)} are free'}. Largest files under {dataset_dir}: "
            f"{', '.join(f'{p.relative_to(dataset_dir)} ({mib(size)})' for p, size in largest) or 'none'}. Free space "
            "(on Drive: empty the trash, delete old runs' checkpoints/ folders) or lower --keep_last (on Drive not "
            "below 2: docs/checkpoints.md).")


def _largest_files(folder: Path, count: int = 5) -> list[tuple[Path, int]]:
    sizes = []
    try:
        for parent, _, names in os.walk(folder):
            for name in names:
                path = Path(parent, name)
                try:
                    sizes.append((path, path.stat().st_size))
                except OSError:
                    continue
    except OSError:
        return []
    return sorted(sizes, key=lambda item: item[1], reverse=True)[:count]
