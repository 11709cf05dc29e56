"""``--recalibrate-norms N``: fresh BatchNorm statistics at compression-epoch ends, nothing else."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from geta.cli.checkpoint import state_path
from geta.cli.compress import add_parser, options_from_args
from geta.cli.errors import CliError
from geta.cli.options import CompressOptions

from .conftest import TINY, Result, report_numbers

# the smallest run with BatchNorms: the residual CNN, 1 dense + 2 compression epochs
BN_RUN = ["--model", "resnet", *TINY[2:], "--recalibrate-norms", "3"]
BN_RUN_OFF = [*BN_RUN[:-1], "0"]


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["compress", "--out", "x", *argv])


def test_the_option_parses_from_flags_and_files_and_checks_its_value(tmp_path: Path) -> None:
    default = next(f.default for f in fields(CompressOptions) if f.name == "recalibrate_norms")
    assert isinstance(default, int) and default >= 0
    assert options_from_args(_parse()).recalibrate_norms == default
    assert options_from_args(_parse("--recalibrate-norms", "0")).recalibrate_norms == 0
    assert options_from_args(_parse("--recalibrate-norms", "7")).recalibrate_norms == 7
    config = tmp_path / "c.yaml"
    config.write_text("recalibrate_norms: 5\n")
    assert options_from_args(_parse("--config", str(config))).recalibrate_norms == 5
    for bad, message in (("-1", "must be >= 0"), ("2.5", "must be an integer")):
        with pytest.raises(CliError, match="--recalibrate-norms") as info:
            options_from_args(_parse("--recalibrate-norms", bad))
        assert message in str(info.value)
    assert "recalibrate_norms" not in {
        **CompressOptions().arguments("config"),
        **CompressOptions().arguments("qasso"),
    }  # it drives the job, not the library


def _history(out: Path) -> list[dict[str, object]]:
    return json.loads((out / "report.json").read_text())["history"]


def _running_stats(out: Path) -> dict[str, torch.Tensor]:
    model = torch.load(out / "compressed.pt", weights_only=False)
    return {k: v for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}


@pytest.mark.slow
def test_a_resumed_run_that_recalibrates_equals_an_uninterrupted_one(
    tmp_path: Path, geta_cli: Callable[..., Result]
) -> None:
    straight, resumed, off = tmp_path / "straight", tmp_path / "resumed", tmp_path / "off"
    assert geta_cli("compress", "--out", straight, *BN_RUN).code == 0
    assert geta_cli("compress", "--out", resumed, *BN_RUN, "--stop-after-epochs", "2").code == 130
    assert state_path(resumed).is_file()
    assert geta_cli("compress", "--out", resumed, *BN_RUN, "--resume").code == 0
    assert report_numbers(resumed) == report_numbers(straight)
    # against a run without it: the same training (losses bit for bit), other statistics
    assert geta_cli("compress", "--out", off, *BN_RUN_OFF).code == 0
    with_it, without = _history(straight), _history(off)
    assert [r["loss"] for r in with_it] == [r["loss"] for r in without]
    assert [r["train_accuracy"] for r in with_it] == [r["train_accuracy"] for r in without]
    on_stats, off_stats = _running_stats(straight), _running_stats(off)
    assert on_stats.keys() == off_stats.keys() and on_stats
    assert any(not torch.equal(on_stats[k], off_stats[k]) for k in on_stats)


def test_a_model_without_batchnorm_is_unaffected(tmp_path: Path, geta_cli: Callable[..., Result]) -> None:
    on, off = tmp_path / "on", tmp_path / "off"
    assert geta_cli("compress", "--out", on, *TINY, "--recalibrate-norms", "5").code == 0
    assert geta_cli("compress", "--out", off, *TINY, "--recalibrate-norms", "0").code == 0
    assert report_numbers(on) == report_numbers(off)
