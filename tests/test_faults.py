"""FaultyFS: Drive faults injected beneath real torch, real files and real threads.

Each test works in its own tmp_path: `drive/` is the faulty mount, `local/` a sibling outside it
that must stay unaffected. What torch raises is asserted as it is (torch 2.13), so a torch upgrade
that changes it fails here first, before midikit's error handling silently stops matching.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from testsupport import pyfaults as faults
from testsupport.pyfaults import FaultyFS, TimedActions, apply_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
NOT_CONNECTED = "Transport endpoint is not connected"


@pytest.fixture
def root(tmp_path) -> Path:
    (tmp_path / "drive").mkdir()
    (tmp_path / "local").mkdir()
    return tmp_path / "drive"


@pytest.fixture
def outside(root) -> Path:
    return root.parent / "local"


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine's two cores are shared
    yield torch
    torch.set_num_threads(threads)


def chain_of(exc: BaseException) -> list[tuple[BaseException, str]]:
    """[(exception, how the next one hangs on it: "cause" | "context" | "end"), ...] from the top."""
    links = []
    while exc is not None:
        nxt, how = (exc.__cause__, "cause") if exc.__cause__ is not None else (exc.__context__, "context")
        links.append((exc, how if nxt is not None else "end"))
        exc = nxt
    return links


def assert_errno(exc: BaseException, code: int) -> None:
    assert isinstance(exc, OSError) and exc.errno == code, repr(exc)


def one_megabyte_state(torch) -> dict:
    return {"weights": torch.randn(256, 1024), "step": 7}


# --------------------------------------------------------------------------- torch under faults


def test_torch_save_mid_stream_drop_raises_runtime_error_with_the_oserror_as_context(root, outside, torch):
    state = one_megabyte_state(torch)
    with FaultyFS(root) as fs:
        fs.fail_writes(errno.ENOTCONN, after_bytes=200_000, times=1, match="*step_*.pt*")
        with pytest.raises(RuntimeError) as caught:
            with open(root / ".step_7.pt.tmp", "wb") as handle:
                torch.save(state, handle)
        with open(outside / "step_7.pt", "wb") as handle:
            torch.save(state, handle)

    # torch's zip writer fails again in its __exit__ (write_end_of_file) while the OSError is being
    # handled, so the OSError is the RuntimeError's implicit __context__, never its __cause__.
    (runtime, how), (original, end) = chain_of(caught.value)
    assert type(runtime) is RuntimeError and runtime.__cause__ is None and how == "context"
    assert "inline_container.cc" in str(runtime) and "unexpected pos" in str(runtime)
    assert_errno(original, errno.ENOTCONN)
    assert original.strerror == NOT_CONNECTED and end == "end"
    assert (root / ".step_7.pt.tmp").stat().st_size == 200_000  # the bytes before the drop landed
    assert torch.load(outside / "step_7.pt", weights_only=True)["step"] == 7
    assert [(event.kind, Path(event.path).name) for event in fs.events
            if event.kind == "fail"] == [("fail", ".step_7.pt.tmp")]


def test_torch_save_when_the_mount_drops_for_good_fails_once_more_at_close(root, torch):
    with FaultyFS(root) as fs:
        fs.fail_writes(errno.ENOTCONN, after_bytes=200_000, times=1, drop_mount=True)
        with pytest.raises(OSError) as caught:
            with open(root / "step_7.pt", "wb") as handle:
                torch.save(one_megabyte_state(torch), handle)
        assert not fs.mounted
    # close() meets the dropped mount too; each error hangs on the previous one as __context__.
    links = chain_of(caught.value)
    assert [(type(exc), how) for exc, how in links] == [(OSError, "context"), (RuntimeError, "context"),
                                                        (OSError, "end")]
    assert_errno(links[0][0], errno.ENOTCONN)
    assert links[0][0].filename == str(root / "step_7.pt")  # the close names its file, the write does not
    assert_errno(links[2][0], errno.ENOTCONN)


def test_torch_load_loses_a_read_error_from_a_real_buffered_file(root, torch):
    torch.save(one_megabyte_state(torch), root / "step_7.pt")
    with FaultyFS(root) as fs:
        fs.fail("read", errno.EIO, at_call=2, times=1)
        with pytest.raises(ValueError) as caught:
            torch.load(root / "step_7.pt", weights_only=True)
    # torch 2.13's C++ reader ignores the failed read's exception; the BufferedReader then reports
    # "read of closed file" and the EIO is nowhere in the chain: a Drive read error during
    # torch.load looks like a bad file, unless the caller checks the mount separately.
    assert str(caught.value) == "read of closed file"
    assert [type(exc) for exc, _ in chain_of(caught.value)] == [ValueError]
    assert [event.kind for event in fs.events].count("fail") == 1


def test_torch_save_to_a_path_string_bypasses_the_layer(root, torch):
    """A limit, pinned: torch's C++ writer opens ASCII paths itself, so only file objects are seen."""
    with FaultyFS(root) as fs:
        fs.unmount()
        torch.save({"step": 1}, str(root / "by_path.pt"))
    assert torch.load(root / "by_path.pt", weights_only=True) == {"step": 1}


# --------------------------------------------------------------------------- quota


def test_quota_fills_then_enospc_and_deleting_frees_budget(root, outside):
    (root / "old.bin").write_bytes(b"o" * 30_000)
    with FaultyFS(root) as fs:
        fs.set_quota(100_000)
        assert fs.usage == 30_000  # the real files already there count
        (root / "a.bin").write_bytes(b"a" * 40_000)
        (root / "b.bin").write_bytes(b"b" * 30_000)  # exactly up to the quota
        with pytest.raises(OSError) as full:
            (root / "c.bin").write_bytes(b"c")
        assert_errno(full.value, errno.ENOSPC)
        (outside / "big.bin").write_bytes(b"x" * 200_000)  # outside the root: no quota

        (root / "a.bin").unlink()
        with open(root / "c.bin", "wb", buffering=0) as raw:
            assert raw.write(b"c" * 50_000) == 40_000  # what fits lands: a short write...
            with pytest.raises(OSError) as full:
                raw.write(b"c" * 10_000)  # ...then the disk is full
        assert_errno(full.value, errno.ENOSPC)
        assert (root / "c.bin").stat().st_size == 40_000 and fs.usage == 100_000

        fs.set_quota(120_000)  # changed while active
        (root / "d.bin").write_bytes(b"d" * 20_000)
        assert fs.usage == 120_000
    assert [event.kind for event in fs.events].count("enospc") == 2


def test_quota_with_trash_counts_deleted_and_replaced_files_until_truncated(root):
    with FaultyFS(root) as fs:
        fs.set_quota(100_000, trash=True)
        (root / "deleted.bin").write_bytes(b"x" * 60_000)
        (root / "deleted.bin").unlink()
        assert fs.usage == 60_000  # Drive's trash still counts it
        with pytest.raises(OSError) as full:
            (root / "next.bin").write_bytes(b"n" * 50_000)
        assert_errno(full.value, errno.ENOSPC)
        (root / "next.bin").unlink()  # its 40 000 bytes that fitted go to the trash too
        assert fs.usage == 100_000
        fs.empty_trash()
        assert fs.usage == 0

        # midikit's way: truncate before deleting, and empty a replaced file through a descriptor.
        (root / "removed.bin").write_bytes(b"r" * 60_000)
        os.truncate(root / "removed.bin", 0)
        (root / "removed.bin").unlink()
        (root / "ckpt.pt").write_bytes(b"1" * 40_000)
        (root / ".ckpt.pt.tmp").write_bytes(b"2" * 40_000)
        old = os.open(root / "ckpt.pt", os.O_WRONLY)
        os.replace(root / ".ckpt.pt.tmp", root / "ckpt.pt")
        assert fs.usage == 80_000  # the replaced version sits in the trash
        os.ftruncate(old, 0)
        os.close(old)
        assert fs.usage == 40_000


def test_quota_holds_across_writer_threads(root):
    with FaultyFS(root) as fs:
        fs.set_quota(100_000)
        outcomes: list[str] = []

        def writer(index: int) -> None:
            try:
                with open(root / f"w{index}.bin", "wb", buffering=0) as raw:
                    for _ in range(10):
                        raw.write(b"w" * 4_000)
                outcomes.append("done")
            except OSError as exc:
                outcomes.append(errno.errorcode[exc.errno])

        threads = [threading.Thread(target=writer, args=(index,)) for index in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert sum(path.stat().st_size for path in root.iterdir()) == 100_000  # never a byte more
    assert len(outcomes) == 4 and set(outcomes) <= {"done", "ENOSPC"} and "ENOSPC" in outcomes


# --------------------------------------------------------------------------- unmount


def test_unmount_refuses_everything_under_the_root_and_remount_restores(root, outside):
    kept = root / "kept.txt"
    kept.write_text("before")
    before = os.stat(kept)
    with FaultyFS(root) as fs:
        pending = open(root / "pending.bin", "wb")
        pending.write(b"p" * 100)  # still in Python's buffer
        fs.unmount()
        for action in (
            kept.exists, kept.is_file, root.is_dir, root.stat, lambda: open(kept), lambda: os.listdir(root),
            lambda: (root / "new").mkdir(), lambda: (root / "new").mkdir(parents=True, exist_ok=True),
            lambda: os.makedirs(root / "new" / "deeper", exist_ok=True), kept.touch, lambda: list(root.glob("*")),
            lambda: os.replace(kept, root / "moved.txt"), kept.unlink, pending.flush,
        ):  # fmt: skip
            with pytest.raises(OSError) as caught:
                action()
            assert_errno(caught.value, errno.ENOTCONN)
            assert caught.value.strerror == NOT_CONNECTED
        assert os.path.exists(kept) is False  # os.path swallows every OSError; pathlib does not
        with pytest.raises(OSError):
            pending.close()  # the buffered bytes never reach the file
        (outside / "fine.txt").write_text("outside")

        fs.unmount(vanish=True)
        assert not kept.exists() and not root.exists()
        with pytest.raises(FileNotFoundError):
            open(kept)

        fs.remount()
        assert kept.read_text() == "before"
        assert sorted(os.listdir(root)) == ["kept.txt", "pending.bin"]
    after = os.stat(kept)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert (root / "pending.bin").stat().st_size == 0
    assert not (root / "new").exists() and not (root / "moved.txt").exists()


# --------------------------------------------------------------------------- hung and slow writes


def start_writer(path: Path, data: bytes) -> tuple[threading.Thread, list]:
    outcome: list = []

    def write() -> None:
        try:
            path.write_bytes(data)
            outcome.append("written")
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread, outcome


def test_blocked_write_waits_for_release_unmount_or_exit(root):
    with FaultyFS(root) as fs:
        fs.block_writes(match="*.pt", times=1)
        thread, outcome = start_writer(root / "released.pt", b"r" * 1_000)
        assert fs.wait_blocked(1, timeout=5)
        thread.join(0.1)
        assert thread.is_alive() and fs.blocked == 1 and outcome == []
        (root / "other.txt").write_bytes(b"not blocked")
        assert fs.release() == 1
        thread.join(5)
        assert outcome == ["written"] and (root / "released.pt").stat().st_size == 1_000

        fs.block_writes()
        thread, outcome = start_writer(root / "dropped.pt", b"d" * 1_000)
        assert fs.wait_blocked(1, timeout=5)
        fs.unmount()  # a hung upload ends with the drop
        thread.join(5)
        assert_errno(outcome[0], errno.ENOTCONN)
        fs.remount()

        thread, outcome = start_writer(root / "at_exit.pt", b"e" * 1_000)
        assert fs.wait_blocked(1, timeout=5)
    thread.join(5)  # leaving the layer released it
    assert outcome == ["written"] and fs.blocked == 0


def test_slow_writes_take_their_time(root, outside):
    data = b"s" * 200_000
    with FaultyFS(root) as fs:
        fs.slow_writes(bytes_per_s=1_000_000)
        started = time.perf_counter()
        (outside / "fast.bin").write_bytes(data)
        fast = time.perf_counter() - started
        started = time.perf_counter()
        (root / "slow.bin").write_bytes(data)
        slow = time.perf_counter() - started
    assert slow >= 0.15 and fast < slow
    assert (root / "slow.bin").read_bytes() == data


# --------------------------------------------------------------------------- fsync, rename, any op


def test_fsync_and_rename_faults_fire_once_with_times_1(root, outside):
    with FaultyFS(root) as fs:
        fs.fail_fsync(errno.EIO, times=1)
        fs.fail_rename(errno.EIO, times=1)
        with open(root / "a.tmp", "wb") as handle:
            handle.write(b"x")
            handle.flush()
            with pytest.raises(OSError) as caught:
                os.fsync(handle.fileno())
            assert_errno(caught.value, errno.EIO)
            os.fsync(handle.fileno())
        with pytest.raises(OSError) as caught:
            os.replace(root / "a.tmp", root / "a")
        assert_errno(caught.value, errno.EIO)
        assert (root / "a.tmp").exists() and not (root / "a").exists()  # a failed rename changes nothing
        os.replace(root / "a.tmp", root / "a")

        fs.fail_fsync(errno.EIO)  # every time, also on descriptors from os.open
        descriptor = os.open(root / "b", os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError):
                os.fsync(descriptor)
        finally:
            os.close(descriptor)
        with open(outside / "c", "wb") as handle:
            os.fsync(handle.fileno())  # outside the root
    assert [event.detail.split(" (")[0] for event in fs.events if event.kind == "fail"] == [
        "fsync: EIO", "rename: EIO", "fsync: EIO",
    ]  # fmt: skip


def test_fail_any_op_at_the_nth_matching_call(root, outside):
    (root / "a.txt").write_text("a")
    (root / "b.txt").write_text("b")
    with FaultyFS(root) as fs:
        fs.fail("stat", errno.EIO, at_call=2, times=1, match="b.txt")
        (root / "a.txt").stat()
        (root / "b.txt").stat()
        (root / "a.txt").stat()
        with pytest.raises(OSError) as caught:
            (root / "b.txt").stat()
        assert_errno(caught.value, errno.EIO)
        (root / "b.txt").stat()
        fs.fail("close", errno.EIO, times=1)
        with pytest.raises(OSError):
            (root / "c.txt").write_text("c")  # Drive reports a failed upload at close
        assert (root / "c.txt").read_text() == "c"
        (outside / "source.bin").write_bytes(b"s" * 100_000)
        fs.fail_writes(errno.EIO, after_bytes=50_000, times=1)
        with pytest.raises(OSError) as caught:
            shutil.copyfile(outside / "source.bin", root / "copy.bin")  # sendfile's fast path is seen too
        assert_errno(caught.value, errno.EIO)
        assert (root / "copy.bin").stat().st_size == 50_000


# --------------------------------------------------------------------------- lifecycle


def test_everything_is_restored_after_exit(root):
    patched = {name: getattr(*faults._target(name)) for name in faults._PATCHES}
    supports = {name: set(getattr(os, name)) for name in faults._SUPPORTS_SETS if hasattr(os, name)}
    with pytest.raises(KeyError):
        with FaultyFS(root):
            assert builtins.open is not patched["builtins.open"] and os.stat is not patched["os.stat"]
            with pytest.raises(RuntimeError):
                FaultyFS(root / "inner").start()  # overlapping roots are refused
            raise KeyError("leaving by an exception restores too")
    assert {name: getattr(*faults._target(name)) for name in faults._PATCHES} == patched
    assert builtins.open is io.open and patched["os.replace"] is os.replace
    assert {name: set(getattr(os, name)) for name in supports} == supports
    assert not faults._layers and not faults._descriptors


def test_spec_and_timed_actions_in_process(root):
    with pytest.raises(ValueError):
        parse_spec('[{"fail_writes": {"errno": "ENOTCONN", "after_byte": 1}}]')  # a typo fails early
    spec = [
        {"fail_writes": {"errno": "ENOTCONN", "after_bytes": 10, "times": 1}},
        {"at_seconds": 0.05, "unmount": {}},
        {"at_seconds": 0.1, "remount": {}},
    ]
    with FaultyFS(root) as fs:
        actions = apply_spec(fs, spec)
        with TimedActions(fs, actions):
            with pytest.raises(OSError) as caught:
                (root / "x.bin").write_bytes(b"x" * 100)
            assert_errno(caught.value, errno.ENOTCONN)
            time.sleep(0.2)
    assert [event.kind for event in fs.events if event.kind in ("unmount", "remount")] == ["unmount", "remount"]


# --------------------------------------------------------------------------- the command line


def run_faulty_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "testsupport.pyfaults", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_command_line_passes_midikit_arguments_through(root, torch):  # midikit's CLI needs torch
    result = run_faulty_cli("--root", str(root), "--spec", "[]", "--", "--help")
    assert result.returncode == 0, result.stderr
    assert "preprocess" in result.stdout and "train" in result.stdout
    bad = run_faulty_cli("--root", str(root), "--spec", '[{"explode": {}}]', "--", "--help")
    assert bad.returncode == 2 and "unknown spec method" in bad.stderr


def test_command_line_faults_reach_a_real_midikit_run(root, tmp_path, torch):
    events_log = tmp_path / "events.jsonl"
    spec = json.dumps([{"fail_writes": {"errno": "ENOSPC", "times": 1}}])
    result = run_faulty_cli(  # no --root: the command's --checkpoint_dir is the faulty folder
        "--spec", spec, "--events-log", str(events_log), "--",
        "preprocess", "--source", "corpus", "--dataset", "faulty", "--checkpoint_dir", str(root / "ck"),
        "--no_progress",
    )  # fmt: skip
    # The checkpoint folder's write probe meets the full disk: midikit says so and exits 2.
    assert result.returncode == 2, result.stderr
    assert "full" in result.stderr
    events = [json.loads(line) for line in events_log.read_text().splitlines()]
    fired = [event for event in events if event["kind"] == "fail"]
    assert len(fired) == 1 and fired[0]["path"].startswith(str(root / "ck")) and "ENOSPC" in fired[0]["detail"]
