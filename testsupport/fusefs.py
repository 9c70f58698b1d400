"""A passthrough FUSE filesystem with Drive's faults, switched at run time: the daemon process.

Colab's Drive is a FUSE mount served by a process of its own. This is one too (libfuse 3 through
mfusepy): every call on the mount point is answered from a backing folder, unless a fault says
otherwise. Faults are switched while it runs, through a control socket (`testsupport.fusedrive`
is the handle that starts, steers, kills and remounts it):

- `down(True)`: every call answers ENOTCONN ("Transport endpoint is not connected"), as Drive does
  while its connection is gone; killing the process (SIGKILL) makes the kernel itself answer it
  until the mount is unmounted and mounted again.
- `fail(ops, error, match, times, after_bytes)`: those calls fail with `error` (a write past
  `after_bytes` first writes what comes before, as a real short write does).
- `hang(ops, match)`: those calls wait until `release()` (or `down`, which fails them).
- `quota(limit, trash)`: a write past the limit writes what fits, then ENOSPC; with `trash`, deleted
  and replaced files keep counting (Drive's trash) until truncated or `empty_trash()`.
- `vanish(path, for_s)`: the folder is gone (ENOENT) for everything under it; a mkdir there is
  recorded as an event (a save must never make a dropped folder again) and refused.
- `trigger(op, match, count, action, for_s, at, path)`: the count-th matching call switches a fault
  on from inside the filesystem, exactly then: `down`, `vanish` (of `path`) or `hang` (the writes
  matching the glob `path`) for `for_s` seconds, `defer_uploads`, or `kill` (SIGKILL this process,
  mid-call when `at="before"`).
- `defer_uploads()`: Drive's background upload. Writes are acknowledged as usual, but every path
  changed from then on is "not uploaded" (its last uploaded state is kept aside); `lose_pending(keep)`
  puts those paths back as they were, as if the runtime died before uploading them (paths matching
  `keep` did upload); `upload_pending()` is `drive.flush_and_unmount()`: everything is uploaded.

Events (one JSON line each: t, wall, kind, path, detail) go to a file that outlives the process. The
faults' state and the control socket are in `testsupport.fusecontrol`.
Ops are named as in `testsupport.pyfaults`: stat, listdir, open, read, write, close, fsync,
rename, unlink, truncate, mkdir, rmdir, utime, chmod, statfs.

    python -m testsupport.fusefs --backing DIR --mount DIR --control NAME --events FILE --state DIR
"""

from __future__ import annotations

import argparse
import errno
import itertools
import os
import shutil
import signal

from .fusecontrol import Control, Faults, Rule, later, matches, release_rule, serve_control, set_down, set_vanished

MUTATING = frozenset({"write", "rename", "unlink", "truncate", "mkdir", "rmdir"})  # and opens for writing
WRITING = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_CREAT
STAT_KEYS = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime", "st_mtime", "st_ctime")


def _fuse_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class FaultyPassthrough:
    """The filesystem: mfusepy calls these methods (by name) from libfuse's threads."""

    use_ns = True
    flag_nopath = flag_nullpath_ok = True  # ops on an open, since deleted file get its handle, no path

    def __init__(self, backing: str, state: str, faults: Faults):
        self.backing, self.state, self.faults = os.path.realpath(backing), state, faults
        # file handle (a descriptor of the backing file) -> the path it was opened under
        self._names: dict[int, str] = {}
        self._dirs: dict[int, str] = {}  # folder handle -> its path
        self._dir_handles = itertools.count(1 << 32)
        self._gone = itertools.count()
        self._shadows = 0

    # -- the gate every call passes ------------------------------------------------
    def _rel(self, path: str | None, fh: int | None = None) -> str:
        if path is None:
            if fh not in self._names:  # a call on a handle it does not know: never the top folder by mistake
                raise _fuse_error(errno.EBADF)
            return self._names[fh]
        return path.lstrip("/")

    def _real(self, rel: str) -> str:
        return os.path.join(self.backing, rel)

    def _enter(self, op: str, rel: str, size: int | None = None, offset: int = 0, changes: bool = False) -> int | None:
        """Apply the faults to one call; returns how many bytes of a write may go through (None: all)."""
        f = self.faults
        with f.lock:
            self._fire_triggers(op, rel, "before")
            if f.down:
                raise _fuse_error(errno.ENOTCONN)
            if any(rel == gone or rel.startswith(gone + "/") for gone in f.vanished):
                if op == "mkdir":
                    f.event("mkdir", rel, "made again while vanished: refused")
                raise _fuse_error(errno.ENOENT)
            for rule in list(f.rules):
                if op not in rule.ops or not matches(rule.match, rel):
                    continue
                if rule.kind == "hang":
                    self._hang(rule, op, rel)
                    continue
                if rule.after_bytes is not None and (size is None or offset + size <= rule.after_bytes):
                    continue
                if rule.after_bytes is not None and offset < rule.after_bytes:
                    return rule.after_bytes - offset  # a short write; the next call fails
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        f.rules.remove(rule)
                f.event("fail", rel, f"{op}: {errno.errorcode.get(rule.error, rule.error)}")
                raise _fuse_error(rule.error)
            if f.pending is not None and (changes or op in MUTATING):
                self._remember(rel)
        return None

    def _hang(self, rule: Rule, op: str, rel: str) -> None:
        f = self.faults
        f.event("block", rel, op)
        while rule in f.rules and not f.down:
            f.lock.wait(0.5)
        if f.down:
            raise _fuse_error(errno.ENOTCONN)

    def _after(self, op: str, rel: str) -> None:
        with self.faults.lock:
            self._fire_triggers(op, rel, "after")

    def _fire_triggers(self, op: str, rel: str, at: str) -> None:
        f = self.faults
        for trigger in list(f.triggers):
            if trigger.at != at or trigger.op != op or not matches(trigger.match, rel):
                continue
            trigger.seen += 1
            if trigger.seen < trigger.count:
                continue
            f.triggers.remove(trigger)
            f.event("trigger", rel, f"{op} #{trigger.count}: {trigger.action} for {trigger.for_s} s")
            if trigger.action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif trigger.action == "down":
                f.down = True
                f.lock.notify_all()
                later(trigger.for_s, set_down, self.faults, False)
            elif trigger.action == "vanish":
                f.vanished.add(trigger.path)
                later(trigger.for_s, set_vanished, self.faults, trigger.path, False)
            elif trigger.action == "hang":
                rule = Rule("hang", frozenset({"write"}), trigger.path)
                f.rules.append(rule)
                later(trigger.for_s, release_rule, self.faults, rule)
            elif trigger.action == "defer_uploads":
                f.pending = {} if f.pending is None else f.pending

    # -- Drive's background upload --------------------------------------------------
    def _remember(self, rel: str) -> None:
        """Keep the last uploaded state of `rel` before its first change since uploads were deferred."""
        pending = self.faults.pending
        if rel in pending:
            return
        real = self._real(rel)
        if os.path.isfile(real):
            self._shadows += 1
            shadow = os.path.join(self.state, "shadow", str(self._shadows))
            os.makedirs(os.path.dirname(shadow), exist_ok=True)
            shutil.copyfile(real, shadow)
            pending[rel] = shadow
        else:
            pending[rel] = "dir" if os.path.isdir(real) else None

    def lose_pending(self, keep: str | None = None) -> list[str]:
        """Put every changed path back to its last uploaded state, except those matching `keep`."""
        with self.faults.lock:
            pending, self.faults.pending = self.faults.pending or {}, None
        lost = [rel for rel in pending if not (keep and matches(keep, rel))]
        for rel in lost:
            real, shadow = self._real(rel), pending[rel]
            if shadow not in (None, "dir"):
                os.makedirs(os.path.dirname(real), exist_ok=True)
                shutil.copyfile(shadow, real)
            elif shadow is None and (os.path.isfile(real) or os.path.islink(real)):
                os.unlink(real)
        for rel in sorted(lost, key=lambda rel: rel.count("/"), reverse=True):  # folders, deepest first
            real = self._real(rel)
            if pending[rel] is None and os.path.isdir(real) and not os.listdir(real):
                os.rmdir(real)
            elif pending[rel] == "dir":
                os.makedirs(real, exist_ok=True)
        self.faults.event("lose_pending", "", f"{len(lost)} path(s) put back, {len(pending) - len(lost)} kept")
        return lost

    # -- quota ------------------------------------------------------------------------
    def _usage(self) -> int:
        used = 0
        for parent, _, names in os.walk(self.backing):
            for name in names:
                try:
                    used += os.lstat(os.path.join(parent, name)).st_size
                except FileNotFoundError:
                    continue
        return used + sum((self.faults.trash or {}).values())

    def _fits(self, fh: int, rel: str, offset: int, count: int) -> int:
        """How many bytes of a write fit under the quota."""
        quota = self.faults.quota
        if quota is None:
            return count
        size = os.fstat(fh).st_size
        room = quota - self._usage()
        fits = max(0, min(count, size + room - offset)) if offset + count > size else count
        if fits < count:
            self.faults.event("enospc", rel, f"{count - fits} of {count} bytes refused")
        return fits

    def _to_trash(self, real: str) -> None:
        """A file deleted or replaced keeps counting at its size (Drive's trash), under its inode while a
        handle may still truncate it, then under a key of its own: inode numbers are reused."""
        trash = self.faults.trash
        if trash is None:
            return
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            return
        self._settle(st.st_ino)
        trash[st.st_ino] = st.st_size

    def _settle(self, ino: int) -> None:
        """File the trash entry of `ino` under a key of its own once no handle has it open."""
        trash = self.faults.trash
        if trash is not None and ino in trash and all(os.fstat(fh).st_ino != ino for fh in list(self._names)):
            trash[("gone", next(self._gone))] = trash.pop(ino)

    # -- the calls --------------------------------------------------------------------
    def getattr(self, path, fh=None):
        rel = self._rel(path, fh)
        self._enter("stat", rel)
        st = os.fstat(fh) if path is None and fh is not None else os.lstat(self._real(rel))
        return {key: getattr(st, key) if not key.endswith("time") else getattr(st, key + "_ns") for key in STAT_KEYS}

    def access(self, path, amode):
        rel = self._rel(path)
        self._enter("stat", rel)
        if not os.access(self._real(rel), amode):
            raise _fuse_error(errno.EACCES)
        return 0

    def opendir(self, path):
        rel = self._rel(path)
        self._enter("listdir", rel)
        handle = next(self._dir_handles)
        self._dirs[handle] = rel  # readdir gets no path (nullpath_ok), only this handle
        return handle

    def releasedir(self, path, fh):
        self._dirs.pop(fh, None)
        return 0

    def readdir(self, path, fh):
        rel = self._rel(path) if path is not None else self._dirs.get(fh, "")
        self._enter("listdir", rel)
        with self.faults.lock:
            gone = set(self.faults.vanished)
        names = [n for n in os.listdir(self._real(rel)) if (f"{rel}/{n}" if rel else n) not in gone]
        return [".", "..", *names]

    def statfs(self, path):
        self._enter("statfs", self._rel(path))
        st = os.statvfs(self.backing)
        info = {key: getattr(st, key) for key in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                                                  "f_ffree", "f_favail", "f_flag", "f_namemax")}
        if self.faults.quota is not None:
            info["f_blocks"] = self.faults.quota // st.f_frsize
            info["f_bfree"] = info["f_bavail"] = max(0, self.faults.quota - self._usage()) // st.f_frsize
        return info

    def mkdir(self, path, mode):
        rel = self._rel(path)
        self._enter("mkdir", rel)
        os.mkdir(self._real(rel), mode)
        self._after("mkdir", rel)

    def rmdir(self, path):
        rel = self._rel(path)
        self._enter("rmdir", rel)
        os.rmdir(self._real(rel))

    def unlink(self, path):
        rel = self._rel(path)
        self._enter("unlink", rel)
        with self.faults.lock:
            self._to_trash(self._real(rel))
            ino = os.lstat(self._real(rel)).st_ino
            os.unlink(self._real(rel))
            self._settle(ino)
        self._after("unlink", rel)

    def rename(self, old, new):
        source, target = self._rel(old), self._rel(new)
        self._enter("rename", source)
        self._enter("rename", target)
        with self.faults.lock:
            self._to_trash(self._real(target))
            os.rename(self._real(source), self._real(target))
        self._after("rename", target)

    def chmod(self, path, mode):
        rel = self._rel(path)
        self._enter("chmod", rel)
        os.chmod(self._real(rel), mode)

    def chown(self, path, uid, gid):
        rel = self._rel(path)
        self._enter("chmod", rel)
        os.chown(self._real(rel), uid, gid)

    def utimens(self, path, times=None):
        rel = self._rel(path)
        self._enter("utime", rel)
        os.utime(self._real(rel), ns=times) if times else os.utime(self._real(rel))

    def create(self, path, mode, flags):
        rel = self._rel(path)
        self._enter("open", rel, changes=True)
        fh = os.open(self._real(rel), flags | os.O_CREAT, mode)
        self._names[fh] = rel
        self._after("open", rel)
        return fh

    def open(self, path, flags):
        rel = self._rel(path)
        self._enter("open", rel, changes=bool(flags & WRITING))
        fh = os.open(self._real(rel), flags)
        self._names[fh] = rel
        return fh

    def read(self, path, size, offset, fh):
        self._enter("read", self._rel(path, fh))
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        rel = self._rel(path, fh)
        allowed = self._enter("write", rel, len(data), offset)
        view = data if allowed is None else data[:allowed]
        with self.faults.lock:
            fits = self._fits(fh, rel, offset, len(view))
            if fits == 0:
                raise _fuse_error(errno.ENOSPC)
            written = os.pwrite(fh, view[:fits], offset)
        self._after("write", rel)
        return written

    def truncate(self, path, length, fh=None):
        rel = self._rel(path, fh)
        self._enter("truncate", rel)
        if fh is not None:
            os.ftruncate(fh, length)
            ino = os.fstat(fh).st_ino
        else:
            os.truncate(self._real(rel), length)
            ino = os.lstat(self._real(rel)).st_ino
        with self.faults.lock:
            if self.faults.trash is not None and ino in self.faults.trash:
                self.faults.trash[ino] = length

    def flush(self, path, fh):
        self._enter("close", self._rel(path, fh))
        return 0

    def fsync(self, path, datasync, fh):
        self._enter("fsync", self._rel(path, fh))
        os.fdatasync(fh) if datasync else os.fsync(fh)
        return 0

    def release(self, path, fh):
        self._names.pop(fh, None)
        ino = os.fstat(fh).st_ino
        os.close(fh)
        with self.faults.lock:
            self._settle(ino)
        return 0

    def init_with_config(self, conn_info, config):
        # Every call reaches this process: a fault switched on shows at once, not after the kernel's caches expire.
        if config is not None:
            config.entry_timeout = config.attr_timeout = config.negative_timeout = 0.0
            config.hard_remove = 1  # no .fuse_hidden files for deleted open files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testsupport.fusefs", description=__doc__.split("\n")[0])
    parser.add_argument("--backing", required=True, help="the folder that holds what 'reached Drive'")
    parser.add_argument("--mount", required=True, help="the mount point")
    parser.add_argument("--control", required=True, help="the control socket's address (a leading @: abstract)")
    parser.add_argument("--events", required=True, help="events, one JSON line each")
    parser.add_argument("--state", required=True, help="a folder for the filesystem's own files")
    args = parser.parse_args(argv)
    import mfusepy  # imported here: `--help` and the handle need no libfuse

    class FaultyDrive(FaultyPassthrough, mfusepy.Operations):  # mfusepy registers the methods defined above
        pass

    class WithHandles(mfusepy.FUSE):
        def truncate_fuse_3(self, path, length, fip):
            # mfusepy drops the handle here; ftruncate on a file already renamed over (or deleted) needs it.
            fh = fip.contents.fh if fip else None
            return self.operations.truncate(None if path is None else path.decode(self.encoding, self.errors),
                                            length, fh)

    faults = Faults(args.events)
    fs = FaultyDrive(args.backing, args.state, faults)
    serve_control("\0" + args.control[1:] if args.control.startswith("@") else args.control, Control(fs))
    faults.event("mount", "", f"pid {os.getpid()}")
    WithHandles(fs, args.mount, foreground=True, fsname="midikit-fusefs", subtype="midikit")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
