"""What a user installs: the wheel `pip` builds from this repository holds midikit and nothing of the
tests' (the fault layers patch `open` and 22 `os` functions: they must never reach a user's runtime)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_midikit_and_no_fault_injector(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = tmp_path.glob("midikit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "midikit/__init__.py" in names and "midikit/train/loop.py" in names and "midikit/retry.py" in names
    shipped_tests = [name for name in names if name.startswith(("testsupport/", "tests/", "bench/"))
                     or "faults" in name or "fusefs" in name]
    assert shipped_tests == []
