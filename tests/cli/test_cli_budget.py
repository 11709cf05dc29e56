"""The compression-quality flags of ``geta compress`` (issue 8): budget, selection, floors, rules,
distillation — passed through to the run, and bad values refused in one line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import TINY, Result


def test_a_budget_run_ends_at_or_under_its_budget(geta_cli: Callable[..., Result], tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [*TINY, "--sparsity", "0.5", "--weight-bits", "2,8", "--act-bits", "2,8"]
    argv += ["--target-bops", "0.01", "--distill", "0.5", "--min-keep", "0.25"]
    r = geta_cli("compress", "--out", out, *argv, "--forget", "linear", "--bit-rule", "budget")
    assert r.code == 0, r.err
    report = json.loads((out / "report.json").read_text())
    assert 0 < report["relative_bops"] <= 0.01
    assert (out / "config.yaml").read_text().count("distill: 0.5") == 1


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--selection", "best"], "--selection must be one of uniform, global"),
        (["--forget", "fast"], "--forget must be one of linear, descent"),
        (["--bit-rule", "x"], "--bit-rule must be one of budget, descent"),
        (["--target-bops", "2"], "--target-bops must be in"),
        (["--min-keep", "-0.1"], "--min-keep must be in"),
        (["--distill", "-1"], "--distill must be >="),
        (["--target-bops", "1e-7"], "--target-bops 1e-07 cannot be met"),
    ],
)
def test_bad_quality_flags_exit_2_with_one_line(
    geta_cli, tmp_path: Path, flags: list[str], needle: str
) -> None:
    r = geta_cli("compress", "--out", tmp_path / "run", *TINY, *flags)
    assert r.code == 2, (r.code, r.err)
    errors = [line for line in r.err.splitlines() if "error:" in line]
    assert len(errors) == 1 and needle in errors[0], r.err
