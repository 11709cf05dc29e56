"""`CompressJob` (geta.cli.job): what it holds before a run, and the per-epoch BOPs measurement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import geta
from geta.cli.job import CompressJob


class _Notes:
    """A reporter that keeps the warnings (the rest of the protocol is not called here)."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, text: str) -> None:
        self.warnings.append(text)


class _Data:
    def example(self, n: int) -> tuple[torch.Tensor]:
        return (torch.randn(n, 4),)


def _job(tmp_path: Path) -> tuple[CompressJob, _Notes]:
    notes = _Notes()
    job = CompressJob(tmp_path, notes, stop=lambda: False)  # type: ignore[arg-type]
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    job.model, job.data = model, _Data()  # type: ignore[assignment]
    job.plan = geta.prepare(model, (torch.randn(3, 4),), geta.Config(weight_bits=(4, 8)))
    return job, notes


def test_a_new_job_holds_every_attribute_before_it_runs(tmp_path: Path) -> None:
    job = CompressJob(tmp_path, _Notes(), stop=lambda: False)  # type: ignore[arg-type]
    assert (job.model, job.data, job.plan, job.teacher, job.progress) == (None,) * 5
    assert job._costs() == {} and job._extra() == {}  # nothing to measure before the compression


def test_costs_measure_the_converted_model(tmp_path: Path) -> None:
    job, notes = _job(tmp_path)
    assert 0 < job._costs()["relative_bops"] < 1 and notes.warnings == []


def test_a_model_geta_cannot_convert_is_warned_about_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, notes = _job(tmp_path)

    def refuse(*args: Any, **kwargs: Any) -> nn.Module:
        raise geta.errors.ConvertError("Foo has no fixer")

    monkeypatch.setattr(geta, "convert", refuse)
    assert job._costs() == {} and job._costs() == {}
    assert len(notes.warnings) == 1 and "Foo has no fixer" in notes.warnings[0]


def test_a_bug_in_the_measurement_is_not_swallowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job, _ = _job(tmp_path)

    def broken(*args: Any, **kwargs: Any) -> nn.Module:
        raise KeyError("a bug")

    monkeypatch.setattr(geta, "convert", broken)
    with pytest.raises(KeyError, match="a bug"):
        job._costs()
