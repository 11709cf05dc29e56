"""A silent library: exporting to ONNX prints nothing and warns nothing (issue 7, item 10)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import geta

pytest.importorskip("onnxscript")


def test_onnx_export_keeps_the_console_quiet(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64, 2)
    )
    example = (torch.randn(2, 3, 6, 6),)
    plan = geta.prepare(model, example, geta.Config(weight_bits=(4, 8), act_bits=(4, 8)))
    small = geta.convert(model, plan)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        geta.export.onnx(small, example, tmp_path / "m.onnx")
    out, err = capfd.readouterr()
    assert (out, err) == ("", ""), (out, err)
    assert [str(w.message) for w in caught] == []
    assert (tmp_path / "m.onnx").stat().st_size > 0
