"""Drive faults beneath the code under test: a FUSE-free file-system fault layer over one folder.

The kit promises that Colab and Drive may fail at any moment and nothing is lost. Testing that
honestly means failing the *file system* under real torch, real files and real threads, never
replacing the function under test. While a `FaultyFS` is active it patches the Python-level
file-system entry points, and every call on a path under its root (the "mount") goes through
its faults; every other path passes straight through to the real function::

    from testsupport.pyfaults import FaultyFS
    with FaultyFS(root) as fs:
        fs.fail_writes(errno.ENOTCONN, after_bytes=1_000_000, times=1, match="*step_*.pt*")
        fs.set_quota(50 * 2**20)
        fs.fail_fsync(errno.EIO, times=1); fs.fail_rename(errno.EIO, times=1)
        fs.unmount(); ...; fs.remount()
        fs.block_writes(match="*.pt*"); fs.wait_blocked(1); ...; fs.release()
        fs.slow_writes(bytes_per_s=1_000_000)
        fs.events  # [FaultEvent(t, kind, path, detail), ...]

In a subprocess (so a test can SIGKILL a real training run)::

    python -m testsupport.pyfaults --root DIR --spec '[{"fail_writes": {"error": "ENOTCONN",
        "after_bytes": 1000000, "times": 1}}, {"at_seconds": 3, "unmount": {}}]' -- train ...

What is patched, and why these: `builtins.open`/`io.open` (pathlib's read/write/open and
tempfile go through `io.open`), and in `os`: open, close, read, write, fsync, fdatasync, replace,
rename, unlink, remove, truncate, ftruncate, stat, lstat, fstat, scandir, listdir, mkdir, rmdir,
utime (Path.touch), chmod and sendfile (shutil.copyfile's fast path). Traced on CPython 3.11 and
3.12: Path.exists/is_file/is_dir/stat/lstat/samefile call os.stat; iterdir calls os.listdir;
glob/rglob/os.walk call os.scandir (+ stat/lstat); mkdir -> os.mkdir (+ os.stat with exist_ok);
os.makedirs is Python code over os.mkdir and os.stat, so it is covered without patching it;
NamedTemporaryFile/mkstemp/TemporaryFile -> os.open + io.open(fd or opener); mkdtemp -> os.mkdir;
shutil.rmtree/TemporaryDirectory -> os.open, os.scandir(fd), os.lstat/unlink/rmdir(dir_fd=).

Files opened under the root are real `io.FileIO` objects wrapped in a raw layer (`_FaultyFileIO`)
with Python's own BufferedWriter/BufferedReader/TextIOWrapper on top, exactly as `open()` builds
them, so faults hit at the system-call boundary, where FUSE sees them: a buffered `write()` fails
when the buffer reaches the raw layer (often at `flush()` or `close()`), a fault at byte N lets
bytes up to N land first (a short write, then the error on the next call), as a real disk does.

Semantics of the faults:
- every fault fires at the N-th matching call (`at_call`, 1-based), or for writes once the file
  position reaches `after_bytes`; `match` is a glob on the file name (or, when it holds a "/", on
  the path relative to the root); `times` limits how often it fires (None: every time).
  Note that midikit's temporary names are hidden: ".step_10.pt.tmp-…" needs "*step_*.pt*".
- `fail(op, error)` fails any op: open, read, write, fsync, close (after really closing, as
  Drive reports upload failures at close), rename (rename and replace), unlink, truncate, stat,
  listdir, mkdir, rmdir, utime, chmod. `drop_mount=True` also unmounts when it fires.
- `set_quota(bytes)`: usage is the real size of the files under the root (scanned then, then
  tracked per inode as writes, truncates, renames and unlinks happen through the layer); a write
  past the quota writes what fits and then raises ENOSPC. With `trash=True` deleted and replaced
  files keep counting (as in Drive's trash) until truncated or `empty_trash()`.
- `unmount()`: every operation under the root, on paths and on open descriptors, raises
  OSError(ENOTCONN, "Transport endpoint is not connected"), as a dropped FUSE mount does; with
  `vanish=True` they raise ENOENT instead (the folder is gone). `remount()` restores.
  On Python 3.11 and 3.12 (and 3.13.0) `Path.exists()`, `is_dir()` and `is_file()` re-raise
  ENOTCONN: pathlib swallows only ENOENT, ENOTDIR, EBADF and ELOOP. `os.path.exists()`/`isdir()`
  return False (they swallow every OSError), and `os.walk` yields nothing (it ignores scandir errors).
- `block_writes()`: matching writes block on a condition (no polling) until `release()`, an
  unmount (they then raise ENOTCONN) or the layer's exit; `blocked` counts them.
- `slow_writes(bytes_per_s)`: writes go in 64 KiB chunks, sleeping before each.

Limits (what a real FUSE mount does that this cannot):
- C and C++ code that opens files itself, or writes through a descriptor, is not seen:
  `torch.save(obj, "path")` (torch's C++ writer opens ASCII paths itself; midikit passes a file
  object), the tensor data torch reads from a memory-mapped checkpoint (`mmap=True`), numpy's `tofile`
  and the array body of `np.save` on a real file (numpy writes through the descriptor; midikit saves
  to BytesIO first), mmap, `os.pwrite`/`os.writev`, and other processes unless started through this
  module's command line. Such writes also escape the quota until `set_quota` rescans.
- Only the names above are patched, and only where callers look them up at call time: a module
  that did `from os import stat` before the layer started keeps the real function, and
  NamedTemporaryFile's delete-on-close (`unlink=_os.unlink` bound at definition) is not seen.
- Paths reaching the root through a symlink from outside it are not seen (the root's own
  realpath is). `os.scandir` iterators and DirEntry.stat() already in hand keep working, and
  Python 3.13's Path.glob does not go through os.scandir at all.
- No kernel page cache, no Drive sync lag, no mount-point shadowing (in Colab an unmounted
  /content/drive can be written to, onto the VM's disk); the mount state is process-local.
"""

from __future__ import annotations

import argparse
import builtins
import errno
import fnmatch
import inspect
import io
import itertools
import json
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

SLOW_CHUNK_BYTES = 64 * 1024
SENDFILE_CHUNK_BYTES = 8 * 2**20  # an emulated sendfile reads this much into memory at most
OPS = frozenset(
    {"open", "read", "write", "fsync", "close", "rename", "unlink", "truncate", "stat", "listdir", "mkdir", "rmdir",
     "utime", "chmod"}
)


class FaultEvent(NamedTuple):
    """One injected fault or state change: seconds since the layer started, what, where, details."""

    t: float
    kind: str
    path: str
    detail: str


def errno_value(error: int | str) -> int:
    """An errno from a number or a name such as "ENOTCONN" (the JSON spec spells names)."""
    if isinstance(error, int):
        return error
    value = getattr(errno, str(error).upper(), None)
    if not isinstance(value, int):
        raise ValueError(f"unknown errno name {error!r}")
    return value


def _os_error(code: int, path: str | None = None, path2: str | None = None) -> OSError:
    # Path operations name their file in the message, as the real ones do; writes on a descriptor do not.
    if path is None:
        return OSError(code, os.strerror(code))
    if path2 is None:
        return OSError(code, os.strerror(code), path)
    return OSError(code, os.strerror(code), path, None, path2)


# --------------------------------------------------------------------------- the global registry

# Originals of what is patched, refreshed when the first layer starts (so a layer chains to
# whatever was there) and put back when the last one stops. The layer's own work uses these.
_PATCHED_OS_NAMES = (
    "open", "close", "read", "write", "fsync", "fdatasync", "replace", "rename", "unlink", "remove",
    "truncate", "ftruncate", "stat", "lstat", "fstat", "scandir", "listdir", "mkdir", "rmdir",
    "utime", "chmod", "sendfile",
)  # fmt: skip
_real: dict[str, Callable] = {"io.open": io.open, "builtins.open": builtins.open}
_real.update({f"os.{name}": getattr(os, name) for name in _PATCHED_OS_NAMES if hasattr(os, name)})

_registry_lock = threading.RLock()
_layers: tuple["FaultyFS", ...] = ()  # replaced, never mutated, so readers need no lock


@dataclass(frozen=True)
class _Descriptor:
    """What the layer knows about a descriptor it opened under a root."""

    layer: "FaultyFS"
    path: str
    key: tuple[int, int]  # (st_dev, st_ino): the inode, which survives renames
    append: bool


_descriptors: dict[int, _Descriptor] = {}


def _register_descriptor(fd: int, layer: "FaultyFS", path: str, append: bool) -> _Descriptor:
    stat = _real["os.fstat"](fd)
    entry = _Descriptor(layer, path, (stat.st_dev, stat.st_ino), append)
    with _registry_lock:
        _descriptors[fd] = entry
    return entry


def _forget_descriptor(fd: int) -> _Descriptor | None:
    with _registry_lock:
        return _descriptors.pop(fd, None)


def _descriptor(fd) -> _Descriptor | None:
    """The entry of a descriptor opened under a root, if it is still that file: descriptor numbers
    are reused, and one closed behind the layer's back (by C code) must not carry faults along."""
    if not isinstance(fd, int) or not _descriptors:
        return None
    entry = _descriptors.get(fd)
    if entry is None:
        return None
    try:
        stat = _real["os.fstat"](fd)
    except OSError:
        stat = None
    if stat is None or (stat.st_dev, stat.st_ino) != entry.key:
        _forget_descriptor(fd)
        return None
    return entry


def _locate(path, dir_fd=None) -> tuple["FaultyFS | None", str | None]:
    """(layer whose root holds `path`, its absolute path), or (None, None) to pass through."""
    if not _layers:
        return None, None
    if isinstance(path, int):
        entry = _descriptor(path)
        return (entry.layer, entry.path) if entry is not None else (None, None)
    try:
        text = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(text):
            base = _descriptor(dir_fd)
            if base is None:
                return None, None
            text = os.path.join(base.path, text)
        absolute = os.path.abspath(text)
    except (TypeError, ValueError, OSError):
        return None, None  # the real function raises its own error for such an argument
    for layer in _layers:
        if layer._contains(absolute):
            return layer, absolute
    return None, None


def _argument(args: tuple, kwargs: dict, name: str, default=None, index: int = 0):
    return args[index] if len(args) > index else kwargs.get(name, default)


# --------------------------------------------------------------------------- rules


@dataclass
class _Rule:
    kind: str  # "fail" | "block" | "slow"
    ops: frozenset[str]
    match: str | None = None
    error: int = errno.EIO
    at_call: int | None = None
    after_bytes: int | None = None
    times: int | None = None  # how many more times it fires; None: always
    drop_mount: bool = False
    bytes_per_s: float | None = None
    calls: int = 0

    def matches(self, paths: tuple[str | None, ...], root: str) -> bool:
        if self.match is None:
            return True
        for path in paths:
            if path is None:
                continue
            name = os.path.relpath(path, root).replace(os.sep, "/") if "/" in self.match else os.path.basename(path)
            if fnmatch.fnmatchcase(name, self.match):
                return True
        return False


def _check_trigger(at_call: int | None, after_bytes: int | None, times: int | None) -> None:
    if at_call is not None and at_call < 1:
        raise ValueError("at_call counts from 1")
    if after_bytes is not None and after_bytes < 0:
        raise ValueError("after_bytes must be >= 0")
    if times is not None and times < 1:
        raise ValueError("times must be >= 1 (None: every time)")


# --------------------------------------------------------------------------- the layer


class FaultyFS:
    """A fault layer over the folder tree `root`; a context manager (or start()/stop()).

    Thread-safe: faults fire on whichever thread does the I/O. One lock (a Condition, on which
    blocked and slow writers wait) guards the rules, the mount state, the quota and the events.
    """

    def __init__(self, root: str | os.PathLike, *, events_log: str | os.PathLike | None = None):
        self.root = Path(os.path.abspath(root))
        # The root as given and as resolved, so /tmp/x and its realpath both count as inside.
        self._roots = tuple(dict.fromkeys((str(self.root), os.path.realpath(self.root))))
        self.events: list[FaultEvent] = []
        self._events_log = os.path.abspath(events_log) if events_log is not None else None
        self._changed = threading.Condition()
        self._rules: list[_Rule] = []
        self._mount_error: int | None = None
        self._quota: int | None = None
        self._trash_enabled = False
        self._live: dict[tuple[int, int], int] = {}  # inode -> size, files under the root
        self._trash: dict[tuple, int] = {}  # inode -> size, deleted but still counted
        self._trash_numbers = itertools.count()
        self._used = 0
        self._blocked = 0
        self._releases = 0  # release() counts up; a blocked writer waits for it to move
        self._active = False
        self._started = time.monotonic()

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> "FaultyFS":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> "FaultyFS":
        global _layers
        with _registry_lock:
            if self._active:
                raise RuntimeError("this FaultyFS is already active")
            for other in _layers:
                if any(other._contains(r) or self._contains(o) for r in self._roots for o in other._roots):
                    raise RuntimeError(f"{self.root} overlaps the active fault layer on {other.root}")
            if self._events_log is not None:
                _real["io.open"](self._events_log, "a", encoding="utf-8").close()  # unwritable: fail now
            self._started = time.monotonic()
            with self._changed:
                self._active = True
            if not _layers:
                _install()
            _layers = _layers + (self,)
        return self

    def stop(self) -> None:
        """Deactivate: blocked and slow writers go on unfaulted, files opened under the root behave
        normally from now on, and the patched functions are restored when no layer is left."""
        global _layers
        with _registry_lock:
            if not self._active:
                return
            _layers = tuple(layer for layer in _layers if layer is not self)
            for fd in [fd for fd, entry in _descriptors.items() if entry.layer is self]:
                del _descriptors[fd]
            if not _layers:
                _uninstall()
            with self._changed:
                self._active = False
                self._changed.notify_all()

    @property
    def active(self) -> bool:
        return self._active

    # ----------------------------------------------------------------- faults

    def fail(
        self, op: str, error: int | str = errno.EIO, *, match: str | None = None, at_call: int | None = None,
        after_bytes: int | None = None, times: int | None = None, drop_mount: bool = False,
    ) -> None:  # fmt: skip
        """Make `op` (see OPS) raise OSError(error) under the root; `after_bytes` only for "write"."""
        ops = frozenset({op}) if isinstance(op, str) else frozenset(op)
        if not ops or ops - OPS:
            raise ValueError(f"unknown op {sorted(ops - OPS)}; choose from {sorted(OPS)}")
        if after_bytes is not None and ops != {"write"}:
            raise ValueError("after_bytes applies to writes only")
        _check_trigger(at_call, after_bytes, times)
        rule = _Rule("fail", ops, match, errno_value(error), at_call, after_bytes, times, drop_mount)
        self._add_rule(rule, f"{'/'.join(sorted(ops))} -> {errno.errorcode.get(rule.error, rule.error)}")

    def fail_writes(
        self, error: int | str = errno.EIO, *, after_bytes: int | None = None, match: str | None = None,
        at_call: int | None = None, times: int | None = None, drop_mount: bool = False,
    ) -> None:  # fmt: skip
        """Writes raise `error` (ENOTCONN or EIO: a Drive drop mid-save); with `after_bytes=N` the
        file's first N bytes land first, and the write that reaches byte N fails."""
        self.fail("write", error, match=match, at_call=at_call, after_bytes=after_bytes, times=times,
                  drop_mount=drop_mount)

    def fail_fsync(
        self, error: int | str = errno.EIO, *, match: str | None = None, at_call: int | None = None,
        times: int | None = None, drop_mount: bool = False,
    ) -> None:  # fmt: skip
        """os.fsync/os.fdatasync on a file under the root raise `error`."""
        self.fail("fsync", error, match=match, at_call=at_call, times=times, drop_mount=drop_mount)

    def fail_rename(
        self, error: int | str = errno.EIO, *, match: str | None = None, at_call: int | None = None,
        times: int | None = None, drop_mount: bool = False,
    ) -> None:  # fmt: skip
        """os.rename/os.replace (Path.rename/replace) raise `error` and change nothing; `match`
        may name either side."""
        self.fail("rename", error, match=match, at_call=at_call, times=times, drop_mount=drop_mount)

    def block_writes(
        self, *, match: str | None = None, at_call: int | None = None, after_bytes: int | None = None,
        times: int | None = None
    ) -> None:
        """Matching writes hang (a stuck Drive upload) until release(), unmount() or the layer's exit."""
        _check_trigger(at_call, after_bytes, times)
        self._add_rule(_Rule("block", frozenset({"write"}), match, at_call=at_call, after_bytes=after_bytes,
                             times=times), "writes")

    def release(self) -> int:
        """Wake every blocked writer (their writes then go through) and disarm block_writes.
        Returns how many writers were blocked."""
        with self._changed:
            released = self._blocked
            self._releases += 1
            self._rules = [rule for rule in self._rules if rule.kind != "block"]
            self._log("release", str(self.root), f"{released} blocked writer(s)")
            self._changed.notify_all()
        return released

    @property
    def blocked(self) -> int:
        """How many writers are blocked right now."""
        return self._blocked

    def wait_blocked(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait until at least `count` writers are blocked; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._blocked >= count, timeout)

    def slow_writes(self, bytes_per_s: float | None, *, match: str | None = None) -> None:
        """Throttle matching writes to `bytes_per_s` (Drive on a bad day); None stops throttling."""
        with self._changed:
            self._rules = [rule for rule in self._rules if rule.kind != "slow"]
        if bytes_per_s is not None:
            if bytes_per_s <= 0:
                raise ValueError("bytes_per_s must be > 0 (None: full speed)")
            self._add_rule(_Rule("slow", frozenset({"write"}), match, bytes_per_s=float(bytes_per_s)),
                           f"{bytes_per_s:g} B/s")

    def clear(self) -> None:
        """Remove every fail, block and slow rule (releasing blocked writers); quota and mount stay."""
        self.release()
        with self._changed:
            self._rules = []

    def _add_rule(self, rule: _Rule, detail: str) -> None:
        with self._changed:
            self._rules.append(rule)
            self._log(f"arm_{rule.kind}", str(self.root), detail + (f" match={rule.match}" if rule.match else ""))

    # ----------------------------------------------------------------- quota

    def set_quota(self, limit_bytes: int | None, *, trash: bool = False) -> None:
        """A byte budget for the whole root (None: unlimited). Usage is rescanned from the real
        files now; with `trash`, deleted and replaced files keep counting until truncated."""
        with self._changed:
            self._quota = None if limit_bytes is None else int(limit_bytes)
            self._trash_enabled = bool(trash) and limit_bytes is not None
            if not self._trash_enabled:
                self._trash.clear()
            self._rescan_locked()
            self._log("quota", str(self.root), f"limit={limit_bytes} used={self._used}")

    @property
    def usage(self) -> int:
        """Bytes counted against the quota (live files plus trash); a fresh scan without a quota."""
        with self._changed:
            if self._quota is None:
                self._rescan_locked()
            return self._used

    def empty_trash(self) -> None:
        with self._changed:
            self._used -= sum(self._trash.values())
            self._trash.clear()

    def _rescan_locked(self) -> None:
        self._live = _scan_sizes(self._roots[0])
        for key in [key for key in self._trash if key in self._live]:
            self._claim_live(key)
        self._used = sum(self._live.values()) + sum(self._trash.values())

    def _claim_live(self, key) -> None:
        """A path reached inode `key`, so a trash entry under that number is an older, freed file
        whose number the disk reused (ext4 does so at once): it keeps counting under a private key."""
        if key in self._trash:
            self._trash[("trash", next(self._trash_numbers))] = self._trash.pop(key)

    def _size_of(self, key) -> int:
        return self._live.get(key, self._trash.get(key, 0))

    def _set_size(self, key, size: int) -> None:
        table = self._trash if key in self._trash else self._live
        self._used += size - table.get(key, 0)
        table[key] = size

    def _reserve_quota(self, key, path: str, pos: int, count: int) -> int:
        """How many of `count` bytes at `pos` fit (counted as written); ENOSPC when none do."""
        if self._quota is None or count == 0:
            return count
        size = self._size_of(key)
        fits = self._quota - self._used + size - pos
        if fits <= 0:
            self._log("enospc", path, f"used={self._used} quota={self._quota} write={count}")
            raise _os_error(errno.ENOSPC)
        count = min(count, fits)
        self._set_size(key, max(size, pos + count))
        return count

    # Accounting hooks, called by the patched functions after the real call succeeded.

    def _opened(self, key, size: int) -> None:
        with self._changed:
            if self._quota is not None:
                self._claim_live(key)
                self._set_size(key, size)

    def _resized(self, key, size: int, *, by_path: bool = False) -> None:
        with self._changed:
            if self._quota is not None and key is not None:
                if by_path:
                    self._claim_live(key)
                self._set_size(key, size)

    def _inode_of(self, path: str | None) -> tuple[tuple[int, int], int] | None:
        """(inode key, link count) of a regular file, when the quota needs it."""
        if self._quota is None or path is None:
            return None
        try:
            stat = _real["os.lstat"](path)
        except OSError:
            return None
        return ((stat.st_dev, stat.st_ino), stat.st_nlink) if _is_regular(stat.st_mode) else None

    def _removed(self, inode) -> None:
        with self._changed:
            if self._quota is not None and inode is not None:
                self._drop_inode(inode)

    def _renamed(self, source_inside: bool, target: str | None, moved, replaced) -> None:
        with self._changed:
            if self._quota is None:
                return
            if replaced is not None and (moved is None or replaced[0] != moved[0]):
                self._drop_inode(replaced)
            if target is None or not source_inside:
                # Into or out of the root: whole folders may have moved, so count again.
                self._rescan_locked()

    def _drop_inode(self, inode) -> None:
        """A name of a file is gone: unless other links remain, it leaves the quota, or with
        trash it moves there and keeps counting."""
        key, links = inode
        if links > 1 or key not in self._live:
            return
        size = self._live.pop(key)
        if self._trash_enabled:
            self._trash[key] = size
        else:
            self._used -= size

    # ----------------------------------------------------------------- mount

    def unmount(self, *, vanish: bool = False) -> None:
        """Every operation under the root now raises ENOTCONN (or ENOENT with `vanish`)."""
        with self._changed:
            self._mount_error = errno.ENOENT if vanish else errno.ENOTCONN
            self._log("unmount", str(self.root), "vanished" if vanish else "transport endpoint not connected")
            self._changed.notify_all()

    def remount(self) -> None:
        with self._changed:
            self._mount_error = None
            self._log("remount", str(self.root), "")
            self._changed.notify_all()

    @property
    def mounted(self) -> bool:
        return self._mount_error is None

    # ----------------------------------------------------------------- internals

    def _contains(self, absolute: str) -> bool:
        for root in self._roots:
            if absolute == root or absolute.startswith(root if root.endswith(os.sep) else root + os.sep):
                return True
        return False

    def _log(self, kind: str, path: str, detail: str) -> None:
        event = FaultEvent(round(time.monotonic() - self._started, 6), kind, path, detail)
        self.events.append(event)
        if self._events_log is not None:
            # One flushed line per event, so a SIGKILLed run's log is complete up to the kill.
            try:
                with _real["io.open"](self._events_log, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(event._asdict()) + "\n")
            except OSError:
                pass  # start() proved the log writable; a later failure must not become the fault under test

    def _raise_if_unmounted(self, op: str, path: str, path2: str | None = None) -> None:
        if self._mount_error is not None:
            self._log("unmounted", path, f"{op}: {errno.errorcode[self._mount_error]}")
            raise _os_error(self._mount_error, path, path2)

    def _fire(self, rule: _Rule, op: str, path: str, path2: str | None = None, *, on_descriptor: bool = False) -> None:
        if rule.times is not None:
            rule.times -= 1
            if rule.times == 0:
                self._rules.remove(rule)
        self._log(rule.kind, path, f"{op}: {errno.errorcode.get(rule.error, rule.error)} (matching call {rule.calls})")
        if rule.drop_mount:
            self._mount_error = errno.ENOTCONN
            self._log("unmount", str(self.root), f"dropped by a failing {op}")
            self._changed.notify_all()
        raise _os_error(rule.error, None if on_descriptor else path, path2)

    def _before(self, op: str, path: str, path2: str | None = None, *, on_descriptor: bool = False) -> None:
        """Raise what an operation `op` on `path` meets: the mount state, then a firing fail rule."""
        with self._changed:
            if not self._active:
                return
            self._raise_if_unmounted(op, path, path2)
            for rule in list(self._rules):
                if rule.kind != "fail" or op not in rule.ops or not rule.matches((path, path2), self._roots[0]):
                    continue
                rule.calls += 1
                if rule.at_call is None or rule.calls >= rule.at_call:
                    self._fire(rule, op, path, path2, on_descriptor=on_descriptor)

    def _write(self, key, path: str, pos: int, data, write_real: Callable) -> int:
        """A write of `data` at file position `pos`, through the mount state, fail/block rules,
        quota and throttle; returns the count written, short when a fault sits inside `data`."""
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        with self._changed:
            if not self._active:
                return write_real(view)
            self._raise_if_unmounted("write", path)
            count = self._apply_write_rules(path, pos, len(view))
            count = self._reserve_quota(key, path, pos, count)
            rate = next((rule.bytes_per_s for rule in self._rules
                         if rule.kind == "slow" and rule.matches((path,), self._roots[0])), None)
        if rate is None or count == 0:
            return write_real(view[:count])
        return self._write_slowly(path, view[:count], rate, write_real)

    def _apply_write_rules(self, path: str, pos: int, count: int) -> int:
        """Fire or block on the first due rule; a rule due inside this write cuts it short instead
        (the bytes before its offset land, the next call meets it). Called with the lock held."""
        for rule in list(self._rules):
            if (rule.kind not in ("fail", "block") or "write" not in rule.ops
                    or not rule.matches((path,), self._roots[0])):
                continue
            if rule.after_bytes is not None:
                if pos + count <= rule.after_bytes:
                    continue
                if pos < rule.after_bytes:
                    count = min(count, rule.after_bytes - pos)
                    continue
            rule.calls += 1
            if rule.at_call is not None and rule.calls < rule.at_call:
                continue
            if rule.kind == "fail":
                self._fire(rule, "write", path, on_descriptor=True)
            self._block(rule, path, pos)
        return count

    def _block(self, rule: _Rule, path: str, pos: int) -> None:
        if rule.times is not None:
            rule.times -= 1
            if rule.times == 0:
                self._rules.remove(rule)
        self._blocked += 1
        releases = self._releases
        self._log("block", path, f"write at byte {pos}")
        self._changed.notify_all()  # for wait_blocked
        try:
            self._changed.wait_for(lambda: (self._releases != releases or self._mount_error is not None
                                            or not self._active))
        finally:
            self._blocked -= 1
        if self._active:
            self._raise_if_unmounted("write", path)

    def _write_slowly(self, path: str, view: memoryview, rate: float, write_real: Callable) -> int:
        self._log("slow", path, f"{len(view)} bytes at {rate:g} B/s")
        written = 0
        while written < len(view):
            chunk = view[written : written + SLOW_CHUNK_BYTES]
            deadline = time.monotonic() + len(chunk) / rate
            with self._changed:
                # Waiting on the condition, not sleeping, so an unmount interrupts the transfer.
                while self._active and self._mount_error is None and (left := deadline - time.monotonic()) > 0:
                    self._changed.wait(left)
                if self._active and self._mount_error is not None:
                    if written:
                        return written
                    self._raise_if_unmounted("write", path)
            written += write_real(chunk)
        return written


def _is_regular(mode: int) -> bool:
    return (mode & 0o170000) == 0o100000


def _scan_sizes(root: str) -> dict[tuple[int, int], int]:
    """inode -> size of every regular file under `root`, with the real functions."""
    sizes: dict[tuple[int, int], int] = {}
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            entries = list(_real["os.scandir"](folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    stat = entry.stat(follow_symlinks=False)
                    sizes[(stat.st_dev, stat.st_ino)] = stat.st_size
            except OSError:
                continue
    return sizes


# --------------------------------------------------------------------------- files


class _FaultyFileIO(io.RawIOBase):
    """A real io.FileIO whose reads, writes, truncation and close go through the layer. open()
    puts Python's own BufferedWriter/Reader/TextIOWrapper on top, so buffering is the real one
    and faults strike where FUSE would see them: at the system call."""

    def __init__(self, layer: FaultyFS, raw: io.FileIO, entry: _Descriptor):
        super().__init__()
        self._layer = layer
        self._raw = raw
        self._entry = entry
        self.name = raw.name  # an attribute, not a property: tempfile renames it

    path = property(lambda self: self._entry.path)
    mode = property(lambda self: self._raw.mode)

    def __repr__(self) -> str:
        return f"<_FaultyFileIO name={self.name!r} mode={self.mode!r} closed={self.closed}>"

    def readable(self) -> bool:
        return self._raw.readable()

    def writable(self) -> bool:
        return self._raw.writable()

    def seekable(self) -> bool:
        return self._raw.seekable()

    def isatty(self) -> bool:
        return self._raw.isatty()

    def fileno(self) -> int:
        return self._raw.fileno()

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(pos, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def readinto(self, buffer) -> int | None:
        self._layer._before("read", self.path, on_descriptor=True)
        return self._raw.readinto(buffer)

    def write(self, data) -> int:
        pos = _real["os.fstat"](self._raw.fileno()).st_size if self._entry.append else self._raw.tell()
        return self._layer._write(self._entry.key, self.path, pos, data, self._raw.write)

    def truncate(self, size: int | None = None) -> int:
        self._layer._before("truncate", self.path, on_descriptor=True)
        size = self._raw.truncate(size)
        self._layer._resized(self._entry.key, size)
        return size

    def close(self) -> None:
        if self.closed:
            return
        fd = self._raw.fileno()
        try:
            self._raw.close()
        finally:
            if self._raw.closefd and _descriptors.get(fd) is self._entry:
                _forget_descriptor(fd)
            super().close()
        # After the real close, as Drive reports a failed upload only when the file is closed.
        self._layer._before("close", self.path, on_descriptor=True)


@dataclass(frozen=True)
class _OpenMode:
    raw: str  # FileIO's mode: r, w, a, x, plus "+"
    text: bool
    reading: bool
    updating: bool


def _parse_mode(mode, buffering: int, encoding, errors, newline) -> _OpenMode:
    """open()'s mode checks, in the order and with the messages of CPython's io.open."""
    if not isinstance(mode, str):
        raise TypeError(f"open() argument 'mode' must be str, not {type(mode).__name__}")
    chars = set(mode)
    if chars - set("axrwb+t") or len(mode) > len(chars):
        raise ValueError(f"invalid mode: '{mode}'")
    kinds = [kind for kind in "xrwa" if kind in chars]
    text = "b" not in chars
    if "t" in chars and "b" in chars:
        raise ValueError("can't have text and binary mode at once")
    if len(kinds) != 1:
        raise ValueError("must have exactly one of create/read/write/append mode")
    if not text and (encoding is not None or errors is not None or newline is not None):
        argument = "an encoding" if encoding is not None else "an errors" if errors is not None else "a newline"
        raise ValueError(f"binary mode doesn't take {argument} argument")
    if not text and buffering == 1:
        warnings.warn(
            "line buffering (buffering=1) isn't supported in binary mode, the default buffer size will be used",
            RuntimeWarning,
            3,
        )
    if text and buffering == 0:
        raise ValueError("can't have unbuffered text I/O")
    return _OpenMode(kinds[0] + ("+" if "+" in chars else ""), text, "r" in chars, "+" in chars)


def _faulty_open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True, opener=None):
    """builtins.open / io.open: files under a root get the layer; all others the real open()."""
    layer, path = _locate(file)
    if layer is None:
        return _real["io.open"](file, mode, buffering, encoding, errors, newline, closefd, opener)
    modes = _parse_mode(mode, buffering, encoding, errors, newline)
    layer._before("open", path)
    raw = io.FileIO(file, modes.raw, closefd, opener=opener)
    try:
        fd = raw.fileno()
        # An opener (tempfile's) or a bare descriptor: the path it was opened with is the file's.
        known = _descriptor(fd)
        entry = _register_descriptor(fd, layer, known.path if known is not None else path, "a" in modes.raw)
        layer._opened(entry.key, _real["os.fstat"](fd).st_size)
        return _buffered(_FaultyFileIO(layer, raw, entry), modes, buffering, encoding, errors, newline, mode)
    except BaseException:
        raw.close()
        raise


def _buffered(raw: _FaultyFileIO, modes: _OpenMode, buffering: int, encoding, errors, newline, mode: str):
    line_buffering = buffering == 1 or (buffering < 0 and raw.isatty())
    if buffering == 1 or buffering < 0:
        block_size = _real["os.fstat"](raw.fileno()).st_blksize
        buffering = block_size if block_size > 1 else io.DEFAULT_BUFFER_SIZE
    if buffering == 0:
        return raw  # binary only: _parse_mode refused unbuffered text
    if modes.updating:
        buffer = io.BufferedRandom(raw, buffering)
    elif modes.reading:
        buffer = io.BufferedReader(raw, buffering)
    else:
        buffer = io.BufferedWriter(raw, buffering)
    if not modes.text:
        return buffer
    text = io.TextIOWrapper(buffer, encoding, errors, newline, line_buffering)
    text.mode = mode
    return text


# --------------------------------------------------------------------------- os functions


def _simple_path_op(name: str, op: str, default=None):
    """os.<name>(path, ...): refused under the root by the mount state or a fail rule."""
    real_name = f"os.{name}"

    def patched(*args, **kwargs):
        target = _argument(args, kwargs, "path", default)
        layer, path = _locate(target, kwargs.get("dir_fd"))
        if layer is not None:
            layer._before(op, path, on_descriptor=isinstance(target, int))
        return _real[real_name](*args, **kwargs)

    patched.__name__ = patched.__qualname__ = name
    return patched


def _os_open(path, flags, mode=0o777, *, dir_fd=None):
    layer, where = _locate(path, dir_fd)
    if layer is None:
        return _real["os.open"](path, flags, mode, dir_fd=dir_fd)
    layer._before("open", where)
    fd = _real["os.open"](path, flags, mode, dir_fd=dir_fd)
    entry = _register_descriptor(fd, layer, where, bool(flags & os.O_APPEND))
    layer._opened(entry.key, _real["os.fstat"](fd).st_size)
    return fd


def _os_close(fd):
    entry = _descriptor(fd)
    if entry is not None:
        _forget_descriptor(fd)
    _real["os.close"](fd)
    if entry is not None:
        entry.layer._before("close", entry.path, on_descriptor=True)


def _position(entry: _Descriptor, fd: int) -> int:
    if entry.append:
        return _real["os.fstat"](fd).st_size
    try:
        return os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return 0


def _os_write(fd, data):
    entry = _descriptor(fd)
    if entry is None:
        return _real["os.write"](fd, data)
    return entry.layer._write(entry.key, entry.path, _position(entry, fd), data,
                              lambda view: _real["os.write"](fd, view))


def _descriptor_op(name: str, op: str):
    """os.<name>(fd, ...) on a descriptor opened under the root: mount state and fail rules."""
    real_name = f"os.{name}"

    def patched(fd, *args, **kwargs):
        number = fd if isinstance(fd, int) else fd.fileno() if hasattr(fd, "fileno") else fd
        entry = _descriptor(number)
        if entry is not None:
            entry.layer._before(op, entry.path, on_descriptor=True)
        return _real[real_name](fd, *args, **kwargs)

    patched.__name__ = patched.__qualname__ = name
    return patched


def _os_ftruncate(fd, length):
    entry = _descriptor(fd)
    if entry is not None:
        entry.layer._before("truncate", entry.path, on_descriptor=True)
    result = _real["os.ftruncate"](fd, length)
    if entry is not None:
        entry.layer._resized(entry.key, length)
    return result


def _os_truncate(path, length):
    layer, where = _locate(path)
    if layer is None:
        return _real["os.truncate"](path, length)
    layer._before("truncate", where, on_descriptor=isinstance(path, int))
    _real["os.truncate"](path, length)
    stat = _real["os.stat"](path)
    layer._resized((stat.st_dev, stat.st_ino), length, by_path=not isinstance(path, int))


def _unlink_op(name: str):
    real_name = f"os.{name}"

    def patched(path, *, dir_fd=None):
        layer, where = _locate(path, dir_fd)
        if layer is None:
            return _real[real_name](path, dir_fd=dir_fd)
        layer._before("unlink", where)
        inode = layer._inode_of(where)
        _real[real_name](path, dir_fd=dir_fd)
        layer._removed(inode)

    patched.__name__ = patched.__qualname__ = name
    return patched


def _rename_op(name: str):
    real_name = f"os.{name}"

    def patched(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
        source_layer, source = _locate(src, src_dir_fd)
        target_layer, target = _locate(dst, dst_dir_fd)
        layer = source_layer or target_layer
        if layer is None:
            return _real[real_name](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        if source_layer is not None and target_layer is not None and source_layer is not target_layer:
            source_layer._before("rename", source, target)
        layer._before("rename", source or os.path.abspath(os.fsdecode(src)), target)
        moved, replaced = layer._inode_of(source), layer._inode_of(target)
        _real[real_name](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        layer._renamed(source_layer is layer, target if target_layer is layer else None, moved, replaced)

    patched.__name__ = patched.__qualname__ = name
    return patched


def _os_sendfile(out_fd, in_fd, offset, count, *args, **kwargs):
    """shutil.copyfile's fast path. Into a root it is emulated with pread + the layer's write, so
    write faults and the quota apply to copies too."""
    source, target = _descriptor(in_fd), _descriptor(out_fd)
    if source is not None:
        source.layer._before("read", source.path, on_descriptor=True)
    if target is None or args or kwargs:
        return _real["os.sendfile"](out_fd, in_fd, offset, count, *args, **kwargs)
    start = offset if offset is not None else os.lseek(in_fd, 0, os.SEEK_CUR)
    data = os.pread(in_fd, min(count, SENDFILE_CHUNK_BYTES), start)
    if not data:
        return 0
    written = _os_write(out_fd, data)
    if offset is None:
        os.lseek(in_fd, start + written, os.SEEK_SET)
    return written


def _patches() -> dict[str, Callable]:
    """'module.name' -> the patched function."""
    patches = {"io.open": _faulty_open, "builtins.open": _faulty_open}
    for name, op in (
        ("stat", "stat"), ("lstat", "stat"), ("fstat", "stat"), ("scandir", "listdir"), ("listdir", "listdir"),
        ("mkdir", "mkdir"), ("rmdir", "rmdir"), ("utime", "utime"), ("chmod", "chmod"),
    ):  # fmt: skip
        default = "." if op == "listdir" else None
        patches[f"os.{name}"] = _simple_path_op(name, op, default)
    patches.update(
        {
            "os.open": _os_open, "os.close": _os_close, "os.write": _os_write,
            "os.read": _descriptor_op("read", "read"), "os.fsync": _descriptor_op("fsync", "fsync"),
            "os.fdatasync": _descriptor_op("fdatasync", "fsync"), "os.ftruncate": _os_ftruncate,
            "os.truncate": _os_truncate, "os.unlink": _unlink_op("unlink"), "os.remove": _unlink_op("remove"),
            "os.rename": _rename_op("rename"), "os.replace": _rename_op("replace"), "os.sendfile": _os_sendfile,
        }
    )  # fmt: skip
    return {name: function for name, function in patches.items() if name in _real}


_PATCHES = _patches()
_SUPPORTS_SETS = ("supports_fd", "supports_dir_fd", "supports_follow_symlinks", "supports_effective_ids")


def _target(name: str):
    module, attribute = name.split(".", 1)
    return (builtins if module == "builtins" else io if module == "io" else os), attribute


def _install() -> None:
    for name, patched in _PATCHES.items():
        module, attribute = _target(name)
        _real[name] = getattr(module, attribute)
        setattr(module, attribute, patched)
        # shutil and friends ask `os.stat in os.supports_follow_symlinks`; keep the answers.
        for set_name in _SUPPORTS_SETS:
            supports = getattr(os, set_name, None)
            if module is os and supports is not None and _real[name] in supports:
                supports.add(patched)


def _uninstall() -> None:
    for name, patched in _PATCHES.items():
        module, attribute = _target(name)
        setattr(module, attribute, _real[name])
        for set_name in _SUPPORTS_SETS:
            supports = getattr(os, set_name, None)
            if supports is not None:
                supports.discard(patched)


# --------------------------------------------------------------------------- spec and command line

SPEC_METHODS = frozenset(
    {"fail", "fail_writes", "fail_fsync", "fail_rename", "block_writes", "release", "slow_writes", "set_quota",
     "empty_trash", "unmount", "remount", "clear"}
)  # fmt: skip


def parse_spec(spec) -> list[tuple[float | None, str, dict]]:
    """A JSON spec (a string or the decoded list) as (at_seconds or None, method, kwargs), each
    checked against the method's signature so a typo fails before anything runs."""
    items = json.loads(spec) if isinstance(spec, str) else spec
    if isinstance(items, dict):
        items = [items]
    actions = []
    for item in items:
        item = dict(item)
        at_seconds = item.pop("at_seconds", None)
        if len(item) != 1:
            raise ValueError(f"each spec item names one FaultyFS method (plus at_seconds): {item}")
        ((method, kwargs),) = item.items()
        if method not in SPEC_METHODS:
            raise ValueError(f"unknown spec method {method!r}; choose from {sorted(SPEC_METHODS)}")
        kwargs = dict(kwargs or {})
        if "errno" in kwargs:  # the natural JSON spelling of `error`
            kwargs["error"] = kwargs.pop("errno")
        try:
            inspect.signature(getattr(FaultyFS, method)).bind(None, **kwargs)
        except TypeError as exc:
            raise ValueError(f"{method}: {exc}") from None
        actions.append((None if at_seconds is None else float(at_seconds), method, kwargs))
    return actions


def _is_parsed(spec) -> bool:
    return isinstance(spec, list) and all(isinstance(action, tuple) and len(action) == 3 for action in spec)


class TimedActions:
    """Runs the spec actions that have `at_seconds` on a daemon thread, timed from entering the
    context: `with TimedActions(fs, apply_spec(fs, spec)): ...`."""

    def __init__(self, fs: FaultyFS, actions: list[tuple[float | None, str, dict]]):
        self.fs = fs
        self.actions = sorted((action for action in actions if action[0] is not None), key=lambda action: action[0])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-timed-actions", daemon=True)

    def __enter__(self) -> "TimedActions":
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        for at_seconds, method, kwargs in self.actions:
            if self._stop.wait(max(0.0, self._start + at_seconds - time.monotonic())):
                return
            try:
                getattr(self.fs, method)(**kwargs)
            except Exception as exc:  # a bad action must not kill the run under test silently
                print(f"faults: {method}({kwargs}) at {at_seconds}s failed: {exc!r}", file=sys.stderr)


def apply_spec(fs: FaultyFS, spec) -> list[tuple[float | None, str, dict]]:
    """Apply the untimed actions of `spec` (JSON text, a list, or parse_spec's result) now and
    return all of them: TimedActions(fs, actions) runs the timed ones."""
    actions = spec if _is_parsed(spec) else parse_spec(spec)
    for at_seconds, method, kwargs in actions:
        if at_seconds is None:
            getattr(fs, method)(**kwargs)
    return actions


def _checkpoint_dir(midikit_args: list[str]) -> str | None:
    for index, arg in enumerate(midikit_args):
        if arg == "--checkpoint_dir" and index + 1 < len(midikit_args):
            return midikit_args[index + 1]
        if arg.startswith("--checkpoint_dir="):
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    """python -m testsupport.pyfaults [--root DIR] --spec JSON [--events-log FILE] -- <midikit args>"""
    argv = list(sys.argv[1:] if argv is None else argv)
    separator = argv.index("--") if "--" in argv else len(argv)
    own, midikit_args = argv[:separator], argv[separator + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m testsupport.pyfaults",
        description="Run a midikit command with Drive faults injected under one folder.",
        epilog="Everything after -- goes to `python -m midikit`.",
    )
    parser.add_argument("--root", help="the faulty folder (default: the command's --checkpoint_dir, "
                        "else $MIDIKIT_ROOT)")
    parser.add_argument("--spec", default="[]", help="JSON list of {method: kwargs}, optionally with at_seconds; "
                        "@FILE reads it")
    parser.add_argument("--events-log", help="append each injected fault to this file as a JSON line")
    args = parser.parse_args(own)
    root = args.root or _checkpoint_dir(midikit_args) or os.environ.get("MIDIKIT_ROOT")
    if not root:
        parser.error("--root is required when the command has no --checkpoint_dir and $MIDIKIT_ROOT is unset")
    spec = Path(args.spec[1:]).read_text() if args.spec.startswith("@") else args.spec
    try:
        actions = parse_spec(spec)
    except (ValueError, TypeError) as exc:
        parser.error(f"bad --spec: {exc}")
    from midikit.cli import exit_past_hung_writes, line_buffered
    from midikit.cli import main as midikit_main  # imported before the layer, so imports are not faulted

    line_buffered()  # as `python -m midikit` is: a kill must not take the lines already printed with it

    with FaultyFS(root, events_log=args.events_log) as fs:
        apply_spec(fs, actions)
        with TimedActions(fs, actions):
            code = midikit_main(midikit_args)
            exit_past_hung_writes(code)  # as `python -m midikit` does: a write still hung ends with the process
            return code


if __name__ == "__main__":
    # Through the package's module, so code under test that imports testsupport.pyfaults
    # shares this registry instead of a second copy of it under __main__.
    from testsupport.pyfaults import main as _main

    raise SystemExit(_main())
