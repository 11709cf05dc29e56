"""``geta compress --compile``: the flag parses, and a compiled run trains like an eager one."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from geta.cli.options import CompressOptions

from .conftest import TINY, Result


def test_compile_flag_parses() -> None:
    assert CompressOptions.from_mapping({"compile": "true"}, where=str).compile is True
    assert CompressOptions().compile is False


@pytest.mark.slow
@pytest.mark.timeout(1200)  # inductor compiles the forward and backward of both phases (C++ on CPU)
def test_compiled_run_reaches_the_eager_run(tmp_path: Path, geta_cli: Callable[..., Result]) -> None:
    """Same seed, same schedule: sparsity and bits as eager; accuracy within a few points
    (inductor's sums may move a value across a rounding boundary, so not bit for bit)."""
    reports = []
    for extra in ([], ["--compile"]):
        out = tmp_path / ("compiled" if extra else "eager")
        assert geta_cli("compress", "--out", out, *TINY, *extra).code == 0
        reports.append(json.loads((out / "report.json").read_text()))
    eager, compiled = reports
    assert compiled["group_sparsity"] == pytest.approx(eager["group_sparsity"])
    assert abs(compiled["compressed"]["accuracy"] - eager["compressed"]["accuracy"]) < 0.05


def test_fixed_exponent_flag_reaches_the_config() -> None:
    """--fixed-exponent sets Config.learn_exponent to False; the default learns it."""
    assert CompressOptions().arguments("config")["learn_exponent"] is True
    fixed = CompressOptions.from_mapping({"fixed_exponent": "true"}, where=str)
    assert fixed.arguments("config")["learn_exponent"] is False
