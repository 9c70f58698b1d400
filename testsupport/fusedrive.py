"""The handle of a Drive-like FUSE mount (`testsupport.fusefs`) for tests and bench scripts.

    from testsupport.fusedrive import FuseDrive, fuse_unavailable
    with FuseDrive(tmp_path) as drive:          # mounts drive.mount_point over drive.backing
        drive.down()                            # every call answers ENOTCONN ...
        drive.down(False)                       # ... until Drive answers again
        drive.trigger("rename", "down", match="logs/models.csv", for_s=12)
        drive.kill(); drive.remount()           # the kernel answers ENOTCONN in between
        drive.fail("write", "EIO", match="*step_*.pt*", times=1)
        drive.events()                          # what the filesystem did, as dicts

`backing` is what reached Drive; `mount_point` stands for `/content/drive`. Run midikit's CLI with
that mount point taken for Colab's (`storage.DRIVE_MOUNT_POINT`), so its Drive checks and messages
are the ones a Colab user gets::

    python -m testsupport.fusedrive MOUNT_POINT -- train --checkpoint_dir MOUNT_POINT/MyDrive/... ...
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_unavailable: list[str | None] = []


class FuseUnavailable(RuntimeError):
    """This machine cannot mount a FUSE filesystem (the reason is the message)."""


def mounted(mount_point: str | os.PathLike) -> bool:
    """Whether the kernel's mount table lists `mount_point` (dead FUSE mounts included)."""
    wanted = os.path.realpath(mount_point)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as table:
        points = [line.split()[4] for line in table if len(line.split()) > 4]
    return any(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point) == wanted for point in points)


def unmount(mount_point: str | os.PathLike) -> None:
    """Lazily unmount, also a mount whose process is dead (the kernel answers ENOTCONN there)."""
    if mounted(mount_point):
        subprocess.run(["fusermount3", "-u", "-z", str(mount_point)], capture_output=True, timeout=30)


def fuse_unavailable() -> str | None:
    """Why FUSE cannot be used here, in one line, or None when a trial mount worked (checked once)."""
    if not _unavailable:
        _unavailable.append(_why_unavailable())
    return _unavailable[0]


def _why_unavailable() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"FUSE tests need Linux, not {sys.platform}"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine (a container without the FUSE device)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian: apt-get install fuse3)"
    if importlib.util.find_spec("mfusepy") is None:
        return "the mfusepy package is not installed (pip install -r requirements-dev.txt)"
    base = tempfile.mkdtemp(prefix="midikit-fuse-probe-")
    try:
        with FuseDrive(base) as drive:
            (drive.mount_point / "probe").write_text("ok")
            if (drive.backing / "probe").read_text() != "ok":
                return "a trial FUSE mount did not write through to its folder"
    except (FuseUnavailable, OSError) as exc:
        return f"a trial FUSE mount failed: {exc}"
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return None


class FuseDrive:
    """A FUSE mount at `<base>/content/drive` over `<base>/backing`, its faults switched at run time."""

    def __init__(self, base: str | os.PathLike):
        self.base = Path(base)
        self.backing, self.mount_point, self.state = (self.base / "backing", self.base / "content" / "drive",
                                                      self.base / "state")
        self.events_file = self.state / "events.jsonl"
        self.address = f"@midikit-fusefs-{os.getpid()}-{uuid.uuid4().hex[:12]}"  # abstract: no path-length limit
        self.process: subprocess.Popen | None = None
        self._watchers: list[threading.Thread] = []

    def __enter__(self) -> "FuseDrive":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- the process ------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> "FuseDrive":
        """Mount (again, over a dead mount's leftovers) and wait until it answers."""
        for folder in (self.backing, self.state):
            folder.mkdir(parents=True, exist_ok=True)
        unmount(self.mount_point)
        self.mount_point.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        log = open(self.state / "daemon.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "testsupport.fusefs", "--backing", str(self.backing),
             "--mount", str(self.mount_point), "--control", self.address, "--events", str(self.events_file),
             "--state", str(self.state)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not (mounted(self.mount_point) and self._answers()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self._end_process()
                tail = (self.state / "daemon.log").read_text(errors="replace").strip().splitlines()[-3:]
                raise FuseUnavailable(f"the FUSE process did not mount {self.mount_point}: "
                                      f"{' '.join(tail) or 'no output'}")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        try:
            self.call("ping", timeout=2.0)
            os.stat(self.mount_point)
        except (OSError, RuntimeError):
            return False
        return True

    def kill(self) -> None:
        """SIGKILL the FUSE process: from now on the kernel answers ENOTCONN under the mount point."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait()

    def remount(self) -> "FuseDrive":
        """A fresh FUSE process on the same mount point and folder (after a kill, or a hang)."""
        self.kill()
        return self.start()

    def remount_when_dead(self, after_s: float) -> None:
        """Once the FUSE process dies (a `kill` trigger), remount `after_s` seconds later, on a thread."""
        process = self.process

        def watch() -> None:
            process.wait()
            time.sleep(after_s)
            if self.process is process:  # not stopped or remounted meanwhile
                self.start()

        thread = threading.Thread(target=watch, name="fusedrive-remount", daemon=True)
        thread.start()
        self._watchers.append(thread)

    def stop(self) -> None:
        """Release hung calls, end the process, unmount (a dead mount too)."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.call("clear", timeout=2.0)
            except (OSError, RuntimeError):
                pass
        self._end_process()
        unmount(self.mount_point)

    def _end_process(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # -- faults -----------------------------------------------------------------------
    def call(self, command: str, timeout: float = 10.0, **arguments) -> dict:
        """Send one control command; RuntimeError when the filesystem refused it."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect("\0" + self.address[1:])
            stream = sock.makefile("rwb")
            stream.write((json.dumps({"cmd": command, **arguments}) + "\n").encode())
            stream.flush()
            reply = json.loads(stream.readline() or b'{"ok": false, "error": "no answer"}')
        if not reply.pop("ok"):
            raise RuntimeError(f"fusefs {command}: {reply.get('error')}")
        return reply

    def down(self, on: bool = True) -> None:
        self.call("down", on=on)

    def fail(self, ops, error="EIO", match=None, times=None, after_bytes=None) -> None:
        self.call("fail", ops=[ops] if isinstance(ops, str) else list(ops), error=error, match=match, times=times,
                  after_bytes=after_bytes)

    def hang(self, ops=("write",), match=None) -> None:
        self.call("hang", ops=[ops] if isinstance(ops, str) else list(ops), match=match)

    def release(self) -> None:
        self.call("release")

    def vanish(self, path: str, on: bool = True, for_s: float | None = None) -> None:
        self.call("vanish", path=path, on=on, for_s=for_s)

    def trigger(self, op: str, action: str, match=None, count: int = 1, for_s=None, at="after", path=None) -> None:
        """The `count`-th matching call switches `action` on: down / vanish (`path`) / hang (writes
        matching the glob `path`) for `for_s` seconds, defer_uploads, or kill (remounted `for_s` later)."""
        self.call("trigger", op=op, action=action, match=match, count=count, for_s=for_s, at=at, path=path)
        if action == "kill" and for_s is not None:
            self.remount_when_dead(for_s)

    def quota(self, limit: int | None, trash: bool = False) -> int:
        """Limit what the backing folder may hold (None: no limit); returns its usage now."""
        return self.call("quota", limit=limit, trash=trash)["usage"]

    def defer_uploads(self) -> None:
        self.call("defer_uploads")

    def lose_pending(self, keep: str | None = None) -> list[str]:
        """The runtime dies before Drive uploaded what changed since `defer_uploads` (except `keep`)."""
        lost = self.call("lose_pending", keep=keep)["lost"]
        self.kill()
        return lost

    def events(self, kind: str | None = None) -> list[dict]:
        if not self.events_file.exists():
            return []
        events = [json.loads(line) for line in self.events_file.read_text().splitlines() if line.strip()]
        return [event for event in events if kind is None or event["kind"] == kind]


def main(argv=None) -> int:
    """python -m testsupport.fusedrive MOUNT_POINT -- <midikit args>: midikit's CLI with MOUNT_POINT as
    Colab's Drive."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[1] != "--":
        print(main.__doc__, file=sys.stderr)
        return 2
    from midikit import storage
    from midikit.cli import exit_past_hung_writes, line_buffered
    from midikit.cli import main as midikit_main

    line_buffered()  # as `python -m midikit` is: a kill must not take the lines already printed with it
    storage.DRIVE_MOUNT_POINT = Path(argv[0])  # where midikit looks for Drive: its checks and messages follow
    code = midikit_main(argv[2:])
    exit_past_hung_writes(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
