"""The examples in the repository run (they are documentation too)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_quickstart_runs_and_converts_exactly() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert "parameters:" in out.stdout
    diff = float(out.stdout.strip().splitlines()[-1].split()[-1])
    assert diff < 1e-4
