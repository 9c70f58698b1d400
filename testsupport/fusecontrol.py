"""The faults of `testsupport.fusefs`, and the control socket that switches them while it runs.

`Faults` is the state every call of the filesystem consults (under its lock); `Control` is the set of
commands the handle (`testsupport.fusedrive`) sends, one JSON object per line, {"cmd": name, ...}.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import socketserver
import threading
import time
from dataclasses import dataclass, field

OPS = frozenset({"stat", "listdir", "open", "read", "write", "close", "fsync", "rename", "unlink", "truncate", "mkdir",
                 "rmdir", "utime", "chmod", "statfs"})
TRIGGER_ACTIONS = ("down", "vanish", "kill", "hang", "defer_uploads")


def errno_of(error) -> int:
    value = error if isinstance(error, int) else getattr(errno, str(error).upper(), None)
    if not isinstance(value, int):
        raise ValueError(f"unknown errno {error!r}")
    return value


def matches(pattern: str | None, rel: str) -> bool:
    """A glob on the file name, or on the path from the mount's top when it holds a "/"."""
    if pattern is None:
        return True
    return fnmatch.fnmatch(rel if "/" in pattern else os.path.basename(rel), pattern)


@dataclass
class Rule:
    kind: str  # "fail" | "hang"
    ops: frozenset
    match: str | None = None
    error: int = errno.EIO
    times: int | None = None  # None: every time
    after_bytes: int | None = None


@dataclass
class Trigger:
    op: str
    match: str | None
    count: int
    action: str  # one of TRIGGER_ACTIONS
    for_s: float | None = None
    at: str = "after"  # "before" the call is answered, or "after"
    path: str | None = None  # what vanishes; for "hang", a glob of the writes that hang
    seen: int = field(default=0)


class Faults:
    """Everything switched at run time, and the events; every field under `lock`."""

    def __init__(self, events_file: str):
        self.lock = threading.Condition()
        self.down = False
        self.rules: list[Rule] = []
        self.triggers: list[Trigger] = []
        self.vanished: set[str] = set()
        self.quota: int | None = None
        # inode (or a key of its own once closed) -> bytes still counted, when the trash counts
        self.trash: dict | None = None
        self.pending: dict[str, str | None] | None = None  # rel -> its last uploaded state, while deferring
        self.started = time.monotonic()
        self.events_file = events_file

    def event(self, kind: str, rel: str, detail: str = "") -> None:
        line = json.dumps({"t": round(time.monotonic() - self.started, 3), "wall": time.time(), "kind": kind,
                           "path": rel, "detail": detail})
        with open(self.events_file, "a") as handle:
            handle.write(line + "\n")


def set_down(faults: Faults, on: bool = True) -> dict:
    with faults.lock:
        faults.down = bool(on)
        faults.lock.notify_all()
    faults.event("down" if on else "up", "")
    return {}


def set_vanished(faults: Faults, path: str, on: bool = True) -> dict:
    with faults.lock:
        (faults.vanished.add if on else faults.vanished.discard)(path.strip("/"))
    faults.event("vanish" if on else "back", path)
    return {}


def release_rule(faults: Faults, rule: Rule) -> None:
    with faults.lock:
        if rule in faults.rules:
            faults.rules.remove(rule)
        faults.lock.notify_all()
    faults.event("release", rule.match or "")


def later(seconds: float | None, action, *args) -> None:
    if seconds is not None:
        timer = threading.Timer(seconds, action, args)
        timer.daemon = True
        timer.start()


class Control:
    """The commands the handle sends, one JSON object per line: {"cmd": name, ...keyword arguments}."""

    def __init__(self, fs):  # a testsupport.fusefs.FaultyPassthrough
        self.fs, self.faults = fs, fs.faults

    def ping(self) -> dict:
        return {"pid": os.getpid()}

    def down(self, on: bool = True) -> dict:
        return set_down(self.faults, on)

    def vanish(self, path: str, on: bool = True, for_s: float | None = None) -> dict:
        set_vanished(self.faults, path, on)
        later(for_s, set_vanished, self.faults, path, not on)
        return {}

    def fail(self, ops, error="EIO", match=None, times=None, after_bytes=None) -> dict:
        return self._add(Rule("fail", self._ops(ops), match, errno_of(error), times, after_bytes))

    def hang(self, ops=("write",), match=None) -> dict:
        return self._add(Rule("hang", self._ops(ops), match))

    def release(self) -> dict:
        with self.faults.lock:
            self.faults.rules = [rule for rule in self.faults.rules if rule.kind != "hang"]
            self.faults.lock.notify_all()
        return {}

    def trigger(self, op, action, match=None, count=1, for_s=None, at="after", path=None) -> dict:
        if op not in OPS or action not in TRIGGER_ACTIONS or at not in ("before", "after"):
            raise ValueError(f"bad trigger: op {op!r}, action {action!r}, at {at!r}")
        with self.faults.lock:
            self.faults.triggers.append(Trigger(op, match, int(count), action, for_s, at, path and path.strip("/")))
        return {}

    def quota(self, limit=None, trash=False) -> dict:
        with self.faults.lock:
            self.faults.quota = None if limit is None else int(limit)
            self.faults.trash = {} if trash else None
        return {"usage": self.fs._usage()}

    def empty_trash(self) -> dict:
        with self.faults.lock:
            self.faults.trash = {} if self.faults.trash is not None else None
        return {}

    def usage(self) -> dict:
        return {"usage": self.fs._usage()}

    def defer_uploads(self) -> dict:
        with self.faults.lock:
            self.faults.pending = self.faults.pending if self.faults.pending is not None else {}
        self.faults.event("defer_uploads", "")
        return {}

    def upload_pending(self) -> dict:
        with self.faults.lock:
            uploaded, self.faults.pending = list(self.faults.pending or {}), None
        self.faults.event("upload_pending", "", f"{len(uploaded)} path(s)")
        return {"uploaded": uploaded}

    def lose_pending(self, keep=None) -> dict:
        return {"lost": self.fs.lose_pending(keep)}

    def pending(self) -> dict:
        with self.faults.lock:
            return {"pending": list(self.faults.pending or {})}

    def clear(self) -> dict:
        with self.faults.lock:
            self.faults.rules, self.faults.triggers, self.faults.vanished = [], [], set()
            self.faults.down, self.faults.quota, self.faults.trash = False, None, None
            self.faults.lock.notify_all()
        return {}

    def _add(self, rule: Rule) -> dict:
        with self.faults.lock:
            self.faults.rules.append(rule)
        return {}

    @staticmethod
    def _ops(ops) -> frozenset:
        ops = frozenset([ops] if isinstance(ops, str) else ops)
        if not ops <= OPS:
            raise ValueError(f"unknown ops {sorted(ops - OPS)}; choose from {sorted(OPS)}")
        return ops


def serve_control(address: str, control: Control) -> socketserver.BaseServer:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                try:
                    request = json.loads(line)
                    name = request.pop("cmd")
                    if name.startswith("_") or not callable(getattr(control, name, None)):
                        raise ValueError(f"unknown command {name!r}")
                    reply = {"ok": True, **(getattr(control, name)(**request) or {})}
                except Exception as exc:  # the handle raises it on its side
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                self.wfile.write((json.dumps(reply) + "\n").encode())
                self.wfile.flush()

    server = socketserver.ThreadingUnixStreamServer(address, Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="fusefs-control", daemon=True).start()
    return server


