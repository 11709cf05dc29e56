"""Shared helpers of the CLI tests: run ``geta`` in-process and capture what it prints."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from geta.cli.main import main

# The fastest meaningful compress run: an MLP on digits, 1 dense + 2 compression epochs.
TINY = ["--model", "mlp", "--dense-epochs", "1", "--epochs", "2", "--quiet", "--no-plots", "--no-export"]


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def geta_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """``geta_cli("compress", "--out", d)`` -> Result(exit code, stdout, stderr)."""

    def run(*argv: str) -> Result:
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def report_numbers(out: Path) -> dict[str, Any]:
    """The numbers of report.json that a resumed run must reproduce exactly (no timings)."""
    report = json.loads((out / "report.json").read_text())
    keys = ("dense", "compressed", "relative_bops", "group_sparsity", "bits", "layers", "history")
    return {key: report[key] for key in keys}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny finished run with exports (shared by the report/export/output tests of a module)."""
    out = tmp_path_factory.mktemp("run") / "out"
    argv = [a for a in TINY if a != "--no-export"]
    assert main(["compress", "--out", str(out), *argv]) == 0
    return out
