"""The code is held to one lint: ruff with the project's rules (pyproject.toml: E, F, I; lines of at
most 120 characters), over the package, tests, benchmarks, scripts and notebooks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _ruff() -> list[str]:
    try:
        import ruff  # noqa: F401  (the pip package; `python -m ruff` runs its binary)
    except ImportError:
        if shutil.which("ruff") is None:
            pytest.skip("ruff is not installed: pip install -r requirements-dev.txt")
        return ["ruff"]
    return [sys.executable, "-m", "ruff"]


def test_the_repository_passes_its_lint():
    done = subprocess.run([*_ruff(), "check", "--no-cache", "--output-format", "concise", "."], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, f"ruff check . found:\n{done.stdout[-6000:]}{done.stderr[-2000:]}"


def test_the_lint_catches_a_line_over_120_characters(tmp_path):
    """The rules are the project's, not ruff's defaults (whose line limit is 88 and lets E501 pass)."""
    bad = tmp_path / "bad.py"
    bad.write_text("x = " + repr("a" * 130) + "\n")
    done = subprocess.run([*_ruff(), "check", "--no-cache", "--config", str(REPO / "pyproject.toml"), str(bad)],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "E501" in done.stdout
