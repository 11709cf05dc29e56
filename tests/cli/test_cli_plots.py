"""The PNG plots of ``geta compress``: readable axes, legends off the data, honest content."""

from __future__ import annotations

import re
from typing import Any

import pytest

plt = pytest.importorskip("matplotlib.pyplot")

from geta.cli import plots  # noqa: E402

STAGES = ["dense", "dense", "warmup", "projection", "joint", "joint", "cooldown", "cooldown"]


def _report() -> dict[str, Any]:
    history = []
    for i, stage in enumerate(STAGES):
        phase = "dense" if stage == "dense" else "compress"
        record = {"phase": phase, "epoch": i, "stage": stage, "loss": 1.0 / (i + 1),
                  "train_accuracy": 0.9, "test_accuracy": 0.88 + 0.01 * (i % 3)}  # fmt: skip
        if stage != "dense":
            bits = 40.0 if stage == "warmup" else 3.4 if stage == "cooldown" else 3.7
            record |= {"sparsity": 0.5, "weight_bits": bits, "input_bits": bits + 0.2,
                       "relative_bops": 0.004 if stage == "cooldown" else 0.05}  # fmt: skip
        history.append(record)
    layers = [
        {"name": "encoder.layers.0.self_attn.in_proj_weight", "kind": "linear", "weight_bits": 4,
         "act_bits": 3, "params": 100, "weighted": True, "kept_out": 0.5, "kept_in": 1.0},
        {"name": "encoder.layers.0.self_attn:matmul", "kind": "matmul", "weight_bits": 32, "act_bits": 32,
         "params": 0, "weighted": False},
        {"name": "head", "kind": "linear", "weight_bits": 3, "act_bits": 4, "params": 10, "weighted": True,
         "kept_out": 1.0, "kept_in": 0.5},
    ]  # fmt: skip
    return {"options": {"model": "vit", "weight_bits": [3, 4], "act_bits": [2, 4]}, "data": "digits",
            "dense": {"accuracy": 0.9}, "compressed": {"accuracy": 0.89}, "relative_bops": 0.0038,
            "relative_bops_weight_only": 0.03, "history": history, "layers": layers}  # fmt: skip


@pytest.fixture
def report() -> dict[str, Any]:
    return _report()


def _drawn(fig: Any) -> Any:
    fig.canvas.draw()
    return fig


def test_bit_panel_is_linear_with_integer_ticks(report: dict[str, Any]) -> None:
    fig = _drawn(plots._curves(plt, report))
    bits = next(ax for ax in fig.axes if ax.get_title().startswith("mean bit width"))
    assert bits.get_yscale() == "linear"
    ticks = [t for t in bits.get_yticks() if bits.get_ylim()[0] <= t <= bits.get_ylim()[1]]
    assert all(float(t).is_integer() for t in ticks) and {3.0, 4.0} <= set(ticks)
    assert bits.get_ylim()[1] <= 6  # the 40 warm-up bits do not squash 3.4 vs 3.7
    assert any("40" in t.get_text() for t in bits.texts)  # ... and are still told
    plt.close(fig)


def test_stage_names_are_a_legend_not_text_on_the_data(report: dict[str, Any]) -> None:
    fig = _drawn(plots._curves(plt, report))
    for ax in fig.axes:
        assert not [t.get_text() for t in ax.texts if t.get_text() in plots.STAGE_LABELS.values()]
    legend_texts = {t.get_text() for legend in fig.legends for t in legend.get_texts()}
    assert {"dense", "warm-up", "projection", "joint", "cool-down"} <= legend_texts
    plt.close(fig)


def test_layers_legend_outside_names_short_weightless_ops_without_weight_bars(report: dict[str, Any]) -> None:
    fig = _drawn(plots._layers(plt, report))
    top, bottom = fig.axes
    for ax in (top, bottom):
        legend = ax.get_legend()
        assert legend.get_window_extent().x0 >= ax.get_window_extent().x1  # right of the data
    names = [t.get_text() for t in bottom.get_xticklabels()]
    assert all(len(n) <= 22 for n in names) and names[-1] == "head" and ".0." in names[0]
    blue = plt.matplotlib.colors.to_rgba("tab:blue")
    weight_bars = [p for p in top.patches if p.get_facecolor()[:3] == blue[:3]]
    assert len(weight_bars) == 2  # the matmul multiplies two activations: no weight bar
    plt.close(fig)


def test_tradeoff_shows_the_path_and_readable_percent_axis(report: dict[str, Any]) -> None:
    fig = _drawn(plots._tradeoff(plt, report))
    (ax,) = fig.axes
    path = [r for r in report["history"] if r.get("relative_bops")]
    points = sum(len(c.get_offsets()) for c in ax.collections)
    assert points == len(path) + 2  # every compression epoch, the dense and the converted model
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels and all(re.fullmatch(r"[\d.]+%", label) for label in labels), labels
    plt.close(fig)


def test_short_names_keep_the_block_index() -> None:
    assert plots.short_name("model.layers.11.self_attn.q_proj") == "m.l.11.s.q_proj"
    assert plots.short_name("model.layers.11.mlp") == "model.layers.11.mlp"  # short enough: kept
