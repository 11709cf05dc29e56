"""Kept widths next to the bits: report.json's layers, report.md's per-layer table and layers.png
carry each pruned layer's kept/original width, and they differ where the groups were pruned apart."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import geta
from geta.cli.widths import kept_fractions, width_text


def _pruned() -> tuple[nn.Module, nn.Module, tuple[torch.Tensor]]:
    """A 3-layer MLP whose two hidden groups lose 3 of 8 and 6 of 16 units (different widths)."""
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    model.load_state_dict(dense.state_dict())
    example = (torch.randn(2, 4),)
    plan = geta.prepare(model, example, geta.Config(weight_bits=(4, 4), act_bits=(4, 4)))
    by_size = {g.size: g for g in plan.prunable_groups}
    by_size[8].zero_(torch.tensor([0, 3, 5]))
    by_size[16].zero_(torch.arange(6))
    return dense, geta.convert(model, plan).eval(), example


def test_widths_of_a_pruned_model_reach_the_table_and_the_json() -> None:
    dense, small, example = _pruned()
    kept = kept_fractions(dense, small)
    assert kept["0"]["width_out"] == [5, 8] and kept["0"]["width_in"] == [4, 4]
    assert kept["2"]["width_out"] == [10, 16] and kept["2"]["width_in"] == [5, 8]
    assert kept["4"]["width_out"] == [3, 3] and kept["4"]["width_in"] == [10, 16]
    assert kept["2"]["kept_out"] == pytest.approx(10 / 16)  # the fractions agree with the widths
    rep = geta.report(small, example, dense=dense)
    table = rep.to_markdown(widths={name: width_text(k) for name, k in kept.items()})
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert rows[0].split("|")[4].strip() == "kept width"  # next to the bits
    assert len({line.count("|") for line in rows}) == 1  # every row has every column
    cells = {line.split("|")[1].strip(): line.split("|")[4].strip() for line in rows[2:]}
    assert cells["0"] == "5/8 out, 4/4 in" and cells["2"] == "10/16 out, 5/8 in"
    assert cells["4"] == "3/3 out, 10/16 in"
    assert "kept width" not in rep.to_markdown()  # without widths: the table as before


def test_layers_plot_labels_each_output_bar_with_its_width() -> None:
    plt = pytest.importorskip("matplotlib.pyplot")
    from geta.cli import plots

    dense, small, example = _pruned()
    kept = kept_fractions(dense, small)
    layers = [
        {**r, **kept.get(r["name"], {})} for r in geta.report(small, example, dense=dense).to_dict()["layers"]
    ]
    fig = plots._layers(plt, {"layers": layers})
    bottom = fig.axes[1]
    labels = sorted(t.get_text() for t in bottom.texts)
    assert labels == sorted(["5/8", "10/16", "3/3"])
    assert max(t.get_position()[1] for t in bottom.texts) < bottom.get_ylim()[1]  # inside the panel
    plt.close(fig)
