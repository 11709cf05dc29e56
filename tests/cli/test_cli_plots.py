"""The PNG plots of ``geta compress``: readable axes, legends off the data, honest content."""

from __future__ import annotations

import math
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
            bits = 20.0 if stage == "warmup" else 3.4 if stage == "cooldown" else 3.7
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
    assert bits.get_ylim()[1] <= 6  # the 20 warm-up bits do not squash 3.4 vs 3.7
    assert any("20" in t.get_text() for t in bits.texts)  # ... and are still told
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
    assert names == ["layers.0.self_attn.in_proj_weight", "layers.0.self_attn · matmul", "head"]
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


def test_layer_labels_of_a_transformer_are_readable_and_distinct() -> None:
    names = ["lm.model.embed_tokens", "lm.model.layers.0.self_attn.q_proj",
             "lm.model.layers.0.self_attn:q@k", "lm.model.layers.0.self_attn:attn@v",
             "lm.model.layers.1.self_attn:q@k", "lm.lm_head"]  # fmt: skip
    labels = plots.display_names(names)
    assert labels == ["model.embed_tokens", "layers.0.self_attn.q_proj", "layers.0.self_attn · q@k",
                      "layers.0.self_attn · attn@v", "layers.1.self_attn · q@k", "lm_head"]  # fmt: skip
    # names that only differ in their wrappers keep them (never two layers under one label)
    assert plots.display_names(["a.blocks.0.fc", "b.blocks.0.fc"]) == ["a.blocks.0.fc", "b.blocks.0.fc"]
    assert all(len(label) <= 34 for label in plots.display_names(["x" * 50 + ".layers.3." + "y" * 40]))


def _lm_report() -> dict[str, Any]:
    report = _report()
    report["task"] = "lm"
    for i, record in enumerate(report["history"]):
        record["test_perplexity"] = 30.0 / (i + 1) + 5
    report["dense"] |= {"perplexity": 12.0}
    report["compressed"] |= {"perplexity": 8.5}
    return report


def test_language_model_curves_plot_train_and_test_perplexity() -> None:
    report = _lm_report()
    fig = _drawn(plots._curves(plt, report))
    panel = next(ax for ax in fig.axes if ax.get_title().startswith("perplexity"))
    assert panel.get_yscale() == "log" and not any(ax.get_title().startswith("accuracy") for ax in fig.axes)
    lines = {line.get_label(): line for line in panel.get_lines()}
    test = [r["test_perplexity"] for r in report["history"]]
    train = [math.exp(r["loss"]) for r in report["history"]]
    assert list(lines["test perplexity"].get_ydata()) == pytest.approx(test)
    assert list(lines["train perplexity"].get_ydata()) == pytest.approx(train)
    assert list(lines["dense model (test)"].get_ydata()) == [12.0, 12.0]
    plt.close(fig)


def test_language_model_tradeoff_uses_perplexity() -> None:
    report = _lm_report()
    fig = _drawn(plots._tradeoff(plt, report))
    (ax,) = fig.axes
    assert "perplexity" in ax.get_ylabel() and ax.get_yscale() == "log"
    ys = sorted(float(y) for c in ax.collections for _, y in c.get_offsets())
    path = [r["test_perplexity"] for r in report["history"] if r.get("relative_bops")]
    assert ys == pytest.approx(sorted([*path, 12.0, 8.5]))  # the path, the dense and the converted model
    assert any("ppl 8.50" in t.get_text() for t in ax.texts)
    plt.close(fig)


def test_warmup_bits_above_float_are_labelled_float(report: dict[str, Any]) -> None:
    for record in report["history"]:
        if record["stage"] == "warmup":
            record["weight_bits"] = record["input_bits"] = 32.0  # mean_bits caps a free quantizer at 32
    fig = _drawn(plots._curves(plt, report))
    bits = next(ax for ax in fig.axes if ax.get_title().startswith("mean bit width"))
    assert {t.get_text() for t in bits.texts} == {"float"}  # not "32 bits"
    plt.close(fig)


def test_warmup_bits_tell_how_many_quantizers_are_float(report: dict[str, Any]) -> None:
    for record in report["history"]:
        if record["stage"] == "warmup":
            record |= {"weight_bits": 6.2, "weight_float": 9}  # the mean of the 16-bit-ish ones, 9 float
    fig = _drawn(plots._curves(plt, report))
    bits = next(ax for ax in fig.axes if ax.get_title().startswith("mean bit width"))
    assert "6 (+9 float)" in {t.get_text() for t in bits.texts}
    plt.close(fig)
