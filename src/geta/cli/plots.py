"""PNG plots of a ``geta compress`` run (matplotlib, imported lazily, Agg backend).

- ``training_curves.png``: loss, accuracy (perplexity, train and test, for a language model),
  group sparsity and mean bits per epoch; the stages
  (dense, warm-up, projection, joint, cool-down) are shaded, with their legend above the panels;
- ``layers.png``: per-layer weight/activation bit widths and kept-channel fractions, each output
  bar labelled with its width (kept/original channels, features or heads x head size);
- ``tradeoff.png``: the task's metric (test accuracy; perplexity for language models) against
  relative BOPs: the dense model, the run's path epoch by epoch through the compression
  stages, and the converted model.

Legends sit outside the data; bit axes are linear with integer ticks; layer labels drop the
wrappers all names share (`display_names`: 'layers.0.self_attn · q@k').
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["write_plots", "PLOT_FILES", "display_names", "metric_of", "short_name"]

PLOT_FILES = ("training_curves.png", "layers.png", "tradeoff.png")
STAGE_COLORS = {"dense": "#9e9e9e", "warmup": "#8dd3c7", "projection": "#80b1d3", "joint": "#fb8072",
                "cooldown": "#b3de69"}  # fmt: skip
STAGE_LABELS = {"dense": "dense", "warmup": "warm-up", "projection": "projection", "joint": "joint",
                "cooldown": "cool-down"}  # fmt: skip
FLOAT_BITS = 32  # bits of an unquantized float32 operand
_NAME_WIDTH = 22  # `short_name`'s default width
_LABEL_WIDTH = 34  # layer labels on an axis longer than this are shortened


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def write_plots(report: dict[str, Any], directory: Path) -> list[str]:
    """Write the three plots of a ``report.json`` dict into ``directory``; return their names.

    Without matplotlib nothing is written and an empty list is returned.
    """
    try:
        plt = _pyplot()
    except ImportError:
        return []
    written = []
    for name, draw in zip(PLOT_FILES, (_curves, _layers, _tradeoff)):
        fig = draw(plt, report)
        fig.savefig(directory / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(name)
    return written


def short_name(name: str, width: int = _NAME_WIDTH) -> str:
    """``name`` in at most ``width`` characters: outer path components shrink to their initial.

    Indices and the last component stay, so that layers of different blocks stay apart.

    >>> short_name("encoder.layers.0.self_attn.in_proj_weight"), short_name("fc")
    ('e.l.0.s.in_proj_weight', 'fc')
    """
    parts = re.split(r"([.:]| · )", name)  # components and the separators between them
    for i in range(0, len(parts) - 1, 2):
        if len("".join(parts)) <= width:
            break
        if not parts[i].isdigit():
            parts[i] = parts[i][:1]
    short = "".join(parts)
    return short if len(short) <= width else "…" + short[-(width - 1) :]


def _trimmed(name: str) -> str:
    """``name`` from its first indexed block on ('lm.model.layers.0.mlp' -> 'layers.0.mlp')."""
    path, sep, op = name.partition(":")
    parts = path.split(".")
    first = next((i for i in range(len(parts) - 1) if parts[i + 1].isdigit()), 0)
    return ".".join(parts[first:]) + sep + op


def display_names(names: list[str], width: int = _LABEL_WIDTH) -> list[str]:
    """Readable, still unambiguous labels of layer names, for axes and tables.

    The module prefix every name shares is dropped, and so are the wrappers before a name's
    first indexed block ('lm.model.layers.0' -> 'layers.0') unless two labels would collide;
    a weightless op of a module reads 'module · op'; a label over ``width`` is shortened by
    `short_name`.

    >>> display_names(["lm.model.embed_tokens", "lm.model.layers.0.self_attn:q@k", "lm.lm_head"])
    ['model.embed_tokens', 'layers.0.self_attn · q@k', 'lm_head']
    """
    split = [n.partition(":")[0].split(".") for n in names]
    common = 0
    while split and all(len(p) > common + 1 and p[common] == split[0][common] for p in split):
        common += 1
    shared = [
        ".".join(n.partition(":")[0].split(".")[common:]) + "".join(n.partition(":")[1:]) for n in names
    ]
    trimmed = [_trimmed(n) for n in shared]
    if len(set(trimmed)) == len(set(shared)):
        shared = trimmed
    return [short_name(n.replace(":", " · "), width) for n in shared]


@dataclass(frozen=True)
class Metric:
    """The task's own quality measure, as the plots draw it."""

    label: str  # 'accuracy (%)' or 'perplexity'
    dense: float  # of the dense model (test)
    final: float  # of the converted model (test)
    test: Callable[[dict[str, Any]], float | None]  # of a history record, held-out
    train: Callable[[dict[str, Any]], float | None]  # of a history record, on the training batches
    log: bool  # drawn on a log axis (perplexity)
    text: str  # formats a value: '91.20%', 'ppl 8.61'


def metric_of(report: dict[str, Any]) -> Metric:
    """Accuracy (%) for classifiers; perplexity for language models (lower is better).

    Train perplexity is exp(mean training loss), drawn only without distillation (whose loss
    is not the cross-entropy alone).
    """
    d, c = report["dense"], report["compressed"]
    if report.get("task") == "lm" and "perplexity" in c:
        plain = not (report.get("training") or report.get("options", {})).get("distill")
        return Metric(
            "perplexity", d["perplexity"], c["perplexity"],
            lambda r: r.get("test_perplexity"),
            lambda r: math.exp(min(r["loss"], 50.0)) if plain and r.get("loss") is not None else None,
            True, lambda v: f"ppl {v:.2f}",
        )  # fmt: skip
    return Metric(
        "accuracy (%)", 100 * d["accuracy"], 100 * c["accuracy"],
        lambda r: 100 * r["test_accuracy"] if r.get("test_accuracy") is not None else None,
        lambda r: 100 * r["train_accuracy"] if r.get("train_accuracy") is not None else None,
        False, lambda v: f"{v:.2f}%",
    )  # fmt: skip


def _plain_log_y(ax: Any) -> None:
    """A log y axis with plain numbers at 1, 1.5, 2, 3, 5, 7 x 10^k (8, 10, 15, 20, not 10¹)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _spans(history: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """(stage, first x, last x) of each run of equal stages, x being the 1-based epoch."""
    spans: list[tuple[str, float, float]] = []
    for i, record in enumerate(history, start=1):
        if spans and spans[-1][0] == record["stage"]:
            spans[-1] = (spans[-1][0], spans[-1][1], i)
        else:
            spans.append((record["stage"], i, i))
    return spans


def _shade_stages(ax: Any, spans: list[tuple[str, float, float]]) -> None:
    """A light band per stage and a dashed line where one stage ends (no text on the data)."""
    for k, (stage, first, last) in enumerate(spans):
        ax.axvspan(first - 0.5, last + 0.5, color=STAGE_COLORS.get(stage, "#dddddd"), alpha=0.18, lw=0)
        if k:
            ax.axvline(first - 0.5, color="0.5", linestyle="--", linewidth=0.7)


def _stage_handles(plt: Any, spans: list[tuple[str, float, float]]) -> list[Any]:
    from matplotlib.patches import Patch

    stages = list(dict.fromkeys(stage for stage, _, _ in spans))
    return [
        Patch(color=STAGE_COLORS.get(s, "#dddddd"), alpha=0.5, label=STAGE_LABELS.get(s, s)) for s in stages
    ]


def _bit_cap(report: dict[str, Any]) -> int:
    """Top of the bit axis: the final ranges and the bits of the stages that keep them in range.

    Warm-up bits are unconstrained and projection starts at the initial bits (16 and more):
    drawn to scale they would squash the 3 vs 4 bits that matter.
    """
    options = report.get("options", {})
    his = [int(b[1]) for b in (options.get("weight_bits"), options.get("act_bits")) if b]
    late = [r[k] for r in report["history"] if r["stage"] in ("joint", "cooldown")
            for k in ("weight_bits", "input_bits") if r.get(k) is not None]  # fmt: skip
    return int(max([*his, *late], default=8)) + 1


def _plot_bits(ax: Any, x: list[int], history: list[dict[str, Any]], cap: int) -> None:
    """Mean bits per epoch on a linear axis up to ``cap``; larger values as ▲ with their value."""
    kinds = (
        ("weight_bits", "mean weight bits", "tab:green"),
        ("input_bits", "mean activation bits", "tab:purple"),
    )
    for row, (key, label, color) in enumerate(kinds):
        floats = key.replace("_bits", "_float")  # quantizers above 32 bits, left out of the mean
        pts = [(xi, r[key], r.get(floats, 0)) for xi, r in zip(x, history) if r.get(key) is not None]
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [min(p[1], cap) for p in pts], marker=".", color=color, label=label)
        above = False
        for xi, y, n_float in pts:
            if y > cap:
                ax.plot([xi], [cap], marker="^", color=color)
                if not above:  # one value per run of ▲ (labels of neighbours would overlap)
                    where = {"textcoords": "offset points", "xytext": (-6, -4 - 10 * row), "ha": "right"}
                    text = (
                        "float"
                        if y >= FLOAT_BITS
                        else f"{y:.0f}" + (f" (+{n_float} float)" if n_float else "")
                    )
                    ax.annotate(text, (xi, cap), fontsize=7, color=color, **where)  # left of ▲
            above = y > cap
    ax.set_ylim(0, cap + 0.5)


def _curves(plt: Any, report: dict[str, Any]) -> Any:
    from matplotlib.ticker import MaxNLocator

    history = report["history"]
    x = list(range(1, len(history) + 1))
    spans = _spans(history)
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4), sharex=True)
    (loss, acc), (sparsity, bits) = axes
    metric = metric_of(report)
    name = metric.label.split(" (")[0]
    for ax, title in ((loss, "training loss"), (acc, metric.label + (" (log scale)" if metric.log else "")),
                      (sparsity, "group sparsity"),
                      (bits, "mean bit width (larger values: ▲ at the top, with their value)")):  # fmt: skip
        _shade_stages(ax, spans)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax, value, color, label in ((loss, lambda r: r.get("loss"), "tab:blue", None),
                                    (acc, metric.test, "tab:blue", f"test {name}"),
                                    (acc, metric.train, "tab:orange", f"train {name}"),
                                    (sparsity, lambda r: r.get("sparsity"), "tab:red", None)):  # fmt: skip
        pts = [(xi, v) for xi, r in zip(x, history) if (v := value(r)) is not None]
        if pts:
            ax.plot(*zip(*pts), marker=".", color=color, label=label)
    acc.axhline(metric.dense, color="k", linewidth=0.8, label="dense model (test)")
    if metric.log:
        _plain_log_y(acc)
    _plot_bits(bits, x, history, _bit_cap(report))
    bits.yaxis.set_major_locator(MaxNLocator(integer=True))  # linear: 3.4 vs 3.7 bits readable
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    handles = [*acc.get_legend_handles_labels()[0], *bits.get_legend_handles_labels()[0]]
    fig.suptitle(f"{report['options']['model']} on {report['data']}", fontsize=10, y=0.995)
    fig.legend(handles=_stage_handles(plt, spans), loc="upper center", bbox_to_anchor=(0.5, 0.975),
               ncol=len(spans) or 1, fontsize=8, frameon=False)  # fmt: skip
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles),
               fontsize=8, frameon=False)  # fmt: skip
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    return fig


def _layers(plt: Any, report: dict[str, Any]) -> Any:
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    layers = [r for r in report["layers"] if r.get("kind") != "embedding" or r.get("params")]
    idx = list(range(len(layers)))
    quantized = [r[k] for r in layers for k in ("weight_bits", "act_bits") if r[k] < FLOAT_BITS]
    top_bits = max(quantized, default=8) + 1  # float operands are drawn to the top, hatched
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.42 * len(layers) + 3), 6), sharex=True)
    for offset, key, color in ((-0.2, "weight_bits", "tab:blue"), (0.2, "act_bits", "tab:orange")):
        for i, r in zip(idx, layers):
            if key == "weight_bits" and not r.get("weighted", True):
                continue  # q·kᵀ and the like multiply two activations: no weight to draw
            value = r[key]
            is_float = value >= FLOAT_BITS
            style = {"alpha": 0.35, "hatch": "//"} if is_float else {"alpha": 0.9}
            top.bar(
                i + offset, top_bits if is_float else value, width=0.4, color=color, edgecolor=color, **style
            )
    top.set_ylim(0, top_bits + 0.2)
    top.yaxis.set_major_locator(MaxNLocator(integer=True))
    top.set_ylabel("bits")
    top.grid(alpha=0.3, axis="y")
    patches = [
        Patch(color="tab:blue", label="weight bits"),
        Patch(color="tab:orange", label="activation bits"),
        Patch(facecolor="white", edgecolor="0.3", hatch="//", label="float (not quantized)"),
    ]
    top.legend(handles=patches, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    for offset, key, label in ((-0.2, "kept_out", "output channels"), (0.2, "kept_in", "input channels")):
        pts = [(i + offset, r[key]) for i, r in zip(idx, layers) if key in r]
        if pts:
            bottom.bar(*zip(*pts), width=0.4, label=label)
    widths = _width_labels(bottom, idx, layers)
    bottom.set_ylim(0, 1.45 if widths else 1.05)
    bottom.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    bottom.set_ylabel("kept fraction")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    bottom.grid(alpha=0.3, axis="y")
    bottom.set_xticks(idx)
    bottom.set_xticklabels(display_names([r["name"] for r in layers]), rotation=60, ha="right", fontsize=7)
    fig.suptitle("per-layer bit widths and kept widths (kept/original output channels)", fontsize=10)
    return fig


def _width_labels(ax: Any, idx: list[int], layers: list[dict[str, Any]]) -> int:
    """Write each layer's kept/original output width ('24/32') above its output bar; return how
    many were written (report.json's ``width_out``; reports of older runs have none)."""
    n = 0
    for i, r in zip(idx, layers):
        if "width_out" in r:
            kept, size = r["width_out"]
            ax.text(i - 0.2, r["kept_out"] + 0.03, f"{kept}/{size}", rotation=90, ha="center", va="bottom",
                    fontsize=6)  # fmt: skip
            n += 1
    return n


def _percent(value: float, _pos: object = None) -> str:
    """A tick label of a percentage axis: 0.05%, 0.3%, 2%, 100%."""
    return f"{value:.3g}%"


def _tradeoff(plt: Any, report: dict[str, Any]) -> Any:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    metric = metric_of(report)
    path = [r for r in report["history"] if r.get("relative_bops") and metric.test(r) is not None]
    xs = [100 * r["relative_bops"] for r in path]
    ys = [float(metric.test(r)) for r in path]  # type: ignore[arg-type]
    if path:
        ax.plot(xs, ys, color="0.6", linewidth=0.8, zorder=1)
        ax.scatter(xs, ys, c=[STAGE_COLORS.get(r["stage"], "0.5") for r in path], s=22, edgecolor="0.3",
                   linewidth=0.4, zorder=2)  # fmt: skip
    final = 100 * report["relative_bops"]
    ax.scatter([100.0], [metric.dense], color="k", marker="o", s=40, zorder=3)
    ax.scatter([final], [metric.final], facecolor="none", edgecolor="tab:red", marker="*", s=260,
               linewidth=1.4, zorder=4)  # hollow: the last epochs' points stay visible inside  # fmt: skip
    ax.annotate(f"{final:.3g}% BOPs, {metric.text(metric.final)}", (final, metric.final),
                textcoords="offset points", xytext=(6, -12), fontsize=8)  # fmt: skip
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(_percent))
    ax.xaxis.set_minor_formatter(NullFormatter())
    lo_x = min([final, *xs]) / 1.6
    ax.set_xlim(lo_x, max([100.0, *xs]) * 1.6)  # (quantizers above float count 32 bits: <= 100 %)
    values = [metric.dense, metric.final, *ys]
    if metric.log:  # perplexity: lower is better, ratios matter
        _plain_log_y(ax)
        ax.set_ylim(min(values) / 1.15, max(values) * 1.15)
    else:
        ax.set_ylim(max(0.0, min(values) - 2.0), min(100.5, max(values) + 1.0))
    ax.set_xlabel("relative BOPs, weights x activations (% of the dense FP32 model, log scale)")
    ax.set_ylabel(f"test {metric.label}" + (" (log scale, lower is better)" if metric.log else ""))
    ax.grid(alpha=0.3, which="major")
    stages = list(dict.fromkeys(r["stage"] for r in path))
    dot = {"marker": "o", "linestyle": ""}
    star = {"marker": "*", "markersize": 12, "linestyle": ""}
    handles = [
        Line2D([], [], color="k", label="dense FP32 model", **dot),
        Line2D([], [], color="tab:red", markerfacecolor="none", label="converted model", **star),
    ]
    for stage in stages:
        label = f"epoch end, {STAGE_LABELS.get(stage, stage)}"
        handles.append(
            Line2D([], [], color=STAGE_COLORS.get(stage, "0.5"), markeredgecolor="0.3", label=label, **dot)
        )
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(f"{metric.label.split(' (')[0]} vs cost: the run's path to the converted model", fontsize=10)
    return fig
