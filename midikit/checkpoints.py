"""Full training state <-> file, safely, on a Drive that may drop at any moment.

A run's folder (`DatasetPaths.run_checkpoints(run_id)`) holds::

    step_00001200.pt  step_00001200.pt.sha256    newest `keep_last` step files
    best.pt           best.pt.sha256             state at the best validation loss
    run.json                                     the run's record (midikit.runs)

Every .pt is written to a temporary name in the same folder, flushed, fsynced and renamed;
its sha256 is written (atomically) after the rename. A checkpoint without a matching checksum
is not valid, so a write killed at any moment leaves either the previous valid file or nothing
that loading would trust. `BackgroundWriter` runs each save on a background thread, so training
waits for a memory copy, not for Drive; a write that hangs is abandoned, never waited for.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import os
import random
import re
import shutil
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError, StorageError
from .retry import TRANSIENT_ERRNOS, WriteAbandoned, retrying  # noqa: F401  (their home is midikit.retry)
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


# --------------------------------------------------------------------------- snapshot


# Exact types: subclasses (numpy scalars are float/int subclasses, defaultdict, namedtuple,
# enums) pickle fine but torch.load(weights_only=True) refuses them.
_PLAIN = (str, int, float, bool, type(None), bytes, torch.dtype, torch.device, torch.Size)
_DICTS = (dict, OrderedDict)


def to_cpu_snapshot(obj, reuse=None, _where: str = "state", non_blocking: bool = False, spares: "Spares | None" = None):
    """Deep copy of a state made of dicts/lists/tuples, tensors and plain values, every tensor
    detached and cloned to CPU, so the caller may keep training (and mutate its tensors) at once.

    `reuse`, a previous snapshot nobody reads any more, lends its tensors wherever shape and dtype
    match: copying into memory already touched is several times faster than into fresh memory,
    whose page faults dominate for a GB-sized state. `spares` (a `SnapshotPool`'s buffers, made on
    another thread) lend theirs where `reuse` has none. With `non_blocking`, GPU tensors go into
    pinned memory and the copies are only queued on the current CUDA stream: the caller records an
    event and makes sure it has completed before anything reads the snapshot. Anything else (numpy
    arrays and scalars, Generators, other objects) raises TypeError naming where it is: it would not
    load with `weights_only=True`.
    """
    kind = type(obj)
    if isinstance(obj, torch.Tensor):
        pinned = non_blocking and obj.is_cuda
        if not _fits(reuse, obj, pinned) and spares is not None:
            reuse = spares.pop(obj, pinned)
        if _fits(reuse, obj, pinned):
            return reuse.copy_(obj.detach(), non_blocking=pinned)
        if pinned:
            return torch.empty(obj.shape, dtype=obj.dtype, pin_memory=True).copy_(obj.detach(), non_blocking=True)
        return obj.detach().to("cpu", copy=True)
    if kind in _DICTS:
        previous = reuse if type(reuse) in _DICTS else {}
        copied = copy.copy(obj)  # keeps the dict type and, for state_dicts, their `_metadata`
        for key, value in obj.items():
            copied[key] = to_cpu_snapshot(value, previous.get(key), f"{_where}[{key!r}]", non_blocking, spares)
        return copied
    if kind in (list, tuple):
        previous = reuse if type(reuse) is kind and len(reuse) == len(obj) else [None] * len(obj)
        items = [to_cpu_snapshot(value, old, f"{_where}[{i}]", non_blocking, spares) for i, (value, old) in enumerate(zip(obj, previous))]
        return items if kind is list else tuple(items)
    if kind in _PLAIN:
        return obj
    raise TypeError(
        f"{_where} is a {kind.__module__}.{kind.__name__}; a checkpoint may hold only tensors and plain "
        "Python (dict, list, tuple, str, int, float, bool, None) so that torch.load(weights_only=True) "
        "reads it. Convert it, e.g. float(x), x.item(), x.tolist() or torch.from_numpy(x)."
    )


def _fits(buffer, obj: torch.Tensor, pinned: bool) -> bool:
    return (isinstance(buffer, torch.Tensor) and buffer.shape == obj.shape and buffer.dtype == obj.dtype
            and (not pinned or buffer.is_pinned()))


@dataclass(frozen=True)
class Filled:
    """What a pool's fill thread hands back: the buffers of a spec, and where and how fast they were made."""

    spec: tuple
    buffers: tuple
    thread: str
    seconds: float


class Spares:
    """Empty snapshot buffers by (shape, dtype, pinned), lent out once each; the training thread's alone."""

    def __init__(self, filled: Filled):
        self._free: dict[tuple, list[torch.Tensor]] = {}
        for key, buffer in zip(filled.spec, filled.buffers):
            self._free.setdefault(key, []).append(buffer)

    def pop(self, like: torch.Tensor, pinned: bool) -> torch.Tensor | None:
        free = self._free.get((tuple(like.shape), like.dtype, pinned))
        return free.pop() if free else None


def buffer_spec(tensors) -> tuple:
    """(shape, dtype, pinned) of the CPU buffer a snapshot needs for each tensor: pinned for a GPU
    tensor (its copy is then asynchronous). Plain values, computed on the caller's thread."""
    return tuple((tuple(t.shape), t.dtype, t.is_cuda) for t in tensors)


def _fill(spec: tuple, device: torch.device, done: Future) -> None:
    """Make the buffers of `spec` (on the pool's own thread): pinning a GB takes the host a good part of
    a second, and fresh pageable memory is paid for in page faults; neither on the training thread."""
    started = time.perf_counter()
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)  # pinned memory through the training GPU's context, not GPU 0's
        buffers = tuple(torch.empty(shape, dtype=dtype, pin_memory=True) if pinned else torch.zeros(shape, dtype=dtype)
                        for shape, dtype, pinned in spec)
        done.set_result(Filled(spec, buffers, threading.current_thread().name, time.perf_counter() - started))
    except BaseException as exc:  # e.g. no pinned memory left: the snapshots allocate as they go instead
        done.set_exception(exc)


class SnapshotPool:
    """At most `size` CPU copies of a run's state, reused from save to save (pinned on a GPU, so the
    copies run asynchronously). A copy still held by a write in flight, or by one that was given up
    on, is never handed out again: a file's checksum must cover one consistent state. `take` gives
    None when every copy is held, and the save is then skipped.

    `prepare` makes the first copy's buffers on a thread of the pool's own, so that no save ever
    allocates on the training thread (a second copy is needed only while a write hangs)."""

    FILL_THREAD = "midikit-snapshot-pool"

    def __init__(self, size: int = 2):
        self.size = size
        self._slots: list[tuple[dict, object]] = []  # (snapshot, the Future of the write holding it)
        self._filling: Future | None = None
        self.filled: Filled | None = None  # once a take has used the prepared buffers
        self.fill_error: BaseException | None = None

    def prepare(self, spec: tuple, device: torch.device) -> Future:
        """Start making the buffers of `spec` (see `buffer_spec`) for a state on `device` on the pool's
        own thread; returns its Future. Only the spec (plain values) crosses to that thread."""
        done: Future = Future()
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())  # the caller's; the fill thread has its own
        threading.Thread(target=_fill, args=(spec, device, done), name=self.FILL_THREAD, daemon=True).start()
        self._filling = done
        return done

    def take(self, state: dict) -> tuple[dict, object] | None:
        """(a snapshot of `state`, a CUDA event that completes once its copies have, or None on the CPU),
        or None when no copy is free. The next optimizer step must wait for the event (`after_copy`)."""
        free = next((i for i, (_, holder) in enumerate(self._slots) if holder is None or holder.done()), None)
        if free is None and len(self._slots) >= self.size:
            return None
        reuse = self._slots.pop(free)[0] if free is not None else None
        spares = self._spares() if reuse is None else None
        if not _has_cuda_tensors(state):
            return to_cpu_snapshot(state, reuse=reuse, spares=spares), None
        side = _copy_stream()
        side.wait_stream(torch.cuda.current_stream())  # copy what the last step wrote
        with torch.cuda.stream(side):
            snapshot = to_cpu_snapshot(state, reuse=reuse, non_blocking=True, spares=spares)
            _keep_alive(state, side)
        return snapshot, side.record_event()

    def _spares(self) -> Spares | None:
        """The prepared buffers, once: waits for the fill if a save comes before it is done (that
        wait is all the first save costs beyond queueing its copies)."""
        filling, self._filling = self._filling, None
        if filling is None:
            return None
        try:
            self.filled = filling.result()
        except BaseException as exc:
            self.fill_error = exc
            return None
        return Spares(self.filled)

    def hold(self, snapshot: dict, holder) -> None:
        """`snapshot` belongs to the write whose Future is `holder` until that write is done."""
        self._slots.append((snapshot, holder))


def after_copy(event) -> None:
    """Make the GPU's next writes to the model and optimizer wait for a snapshot's copies (GPU-side:
    the host does not wait)."""
    if event is not None:
        torch.cuda.current_stream().wait_event(event)


_copy_streams: dict = {}


def _copy_stream():
    device = torch.cuda.current_device()
    if device not in _copy_streams:
        _copy_streams[device] = torch.cuda.Stream(device)
    return _copy_streams[device]


def _has_cuda_tensors(obj) -> bool:
    if isinstance(obj, torch.Tensor):
        return obj.is_cuda
    if isinstance(obj, dict):
        return any(_has_cuda_tensors(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_cuda_tensors(value) for value in obj)
    return False


def _keep_alive(obj, stream) -> None:
    """Tell the caching allocator that `stream` reads these GPU tensors, so their memory is not
    handed out again before the copies are done."""
    if isinstance(obj, torch.Tensor):
        if obj.is_cuda:
            obj.record_stream(stream)
    elif isinstance(obj, dict):
        for value in obj.values():
            _keep_alive(value, stream)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _keep_alive(value, stream)


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


def save_state(path: str | os.PathLike, state: dict, abandoned: threading.Event | None = None, retry=None) -> CheckpointInfo:
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
        strays = [stray for pattern in patterns for stray in Path(folder).glob(pattern)] if Path(folder).is_dir() else []
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
        gone = StorageError(f"The run folder {run_dir} is gone: Google Drive's mount dropped (or the folder was moved). "
                            "Remount with `midikit.storage.mount_drive(force_remount=True)`; the save lands once it is back.")
        gone.transient = True  # a remount brings it back: keep retrying
        raise gone


def rotate(run_dir: Path, step: int, keep_last: int) -> list[Path]:
    """Delete step files older than the newest `keep_last` up to `step`. Files of later steps are
    never touched here: they may belong to a write still landing."""
    older = [path for path in list_checkpoints(run_dir) if step_of(path) <= step]
    removed = older[keep_last:]
    for path in removed:
        # Checksum first: a kill in between leaves an unverified file, never a "valid" empty one.
        checksum_path(path).unlink(missing_ok=True)
        remove_file(path)
    return removed


def discard_newer_than(run_dir: Path, step: int) -> list[Path]:
    """Remove the step files after `step`: a run continued on purpose from an older checkpoint
    abandons them, and --resume auto must not take them for the newest state later."""
    newer = [path for path in list_checkpoints(run_dir) if step_of(path) > step]
    for path in newer:
        checksum_path(path).unlink(missing_ok=True)
        remove_file(path)
    return newer


def free_space_for(run_dir: Path, step: int) -> list[Path]:
    """On a full disk: keep only the newest verified step file (and best.pt), so the next write fits."""
    valid = [path for path in list_checkpoints(run_dir) if step_of(path) <= step and verify_checkpoint(path)[0] == "valid"]
    keep = valid[:1]
    removed = [path for path in list_checkpoints(run_dir) if step_of(path) <= step and path not in keep]
    for path in removed:
        checksum_path(path).unlink(missing_ok=True)
        remove_file(path)
    return removed


# --------------------------------------------------------------------------- background writer


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


def disk_full(exc: BaseException) -> bool:
    cause = os_error_in(exc)
    return cause is not None and cause.errno == errno.ENOSPC


def describe_full_disk(dataset_dir: Path, run_dir: Path, snapshot: dict) -> str:
    """What a checkpoint needs and what takes the space, for a save that does not fit."""
    needed = _tensor_bytes(snapshot)
    try:
        free = shutil.disk_usage(run_dir).free
    except OSError:
        free = None
    largest = _largest_files(dataset_dir)
    mib = lambda n: f"{n / 2**20:,.0f} MiB"  # noqa: E731
    return (f"The disk is full: a checkpoint of this run needs about {mib(needed)} (twice that while best.pt is "
            f"replaced){'' if free is None else f'; {mib(free)} are free'}. Largest files under {dataset_dir}: "
            f"{', '.join(f'{p.relative_to(dataset_dir)} ({mib(size)})' for p, size in largest) or 'none'}. Free space "
            "(on Drive: empty the trash, delete old runs' checkpoints/ folders) or lower --keep_last.")


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(value) for value in obj)
    return 0


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
