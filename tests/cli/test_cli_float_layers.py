"""A model geta leaves partly in float: the console summary and report name those layers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import TINY, Result

LSTM_NET = '''
import torch
from torch import nn


class Rows(nn.Module):
    """Reads an image row by row: a linear embedding, an LSTM (left in float), a linear head."""

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.embed = nn.Linear(in_channels * 8, 32)
        self.lstm = nn.LSTM(32, 48, batch_first=True)
        self.head = nn.Linear(48, num_classes)

    def forward(self, x):
        rows = x.permute(0, 2, 1, 3).flatten(2)  # (B, 8 rows, C * 8)
        y, _ = self.lstm(torch.relu(self.embed(rows)))
        return self.head(y[:, -1])


def rows(num_classes, in_channels):
    return Rows(num_classes, in_channels)
'''


@pytest.mark.filterwarnings("ignore:The tensor attributes")  # export's note on nn.LSTM's flat weights
def test_a_float_lstm_is_counted_and_named_in_the_summary(
    tmp_path: Path, geta_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lstm_nets.py").write_text(LSTM_NET)
    monkeypatch.chdir(tmp_path)
    argv = [a for a in TINY if a != "--quiet"]
    out = tmp_path / "run"
    result = geta_cli("compress", "--out", out, *argv, "--model", "lstm_nets:rows", "--sparsity", "0.3")
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    assert report["float_layers"] == ["lstm"] and not report["unknown_ops"]
    lstm = next(layer for layer in report["layers"] if layer["name"] == "lstm")
    assert lstm["source"] == "flop_counter" and lstm["bops"] == lstm["macs"] * 32 * 32
    # the float LSTM is in the relative BOPs: at least its own share of the dense model's
    dense_macs = report["dense"]["macs"]
    assert report["relative_bops"] >= lstm["macs"] / dense_macs
    notes = [line for line in result.out.splitlines() if line.startswith("note: left in float")]
    assert len(notes) == 1 and "lstm (lstm, " in notes[0] and "of the BOPs" in notes[0]
    assert "left in float" in (out / "report.md").read_text().split("| layer |")[0]  # above the tables
