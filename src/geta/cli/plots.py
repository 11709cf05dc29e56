"""PNG plots of a ``geta compress`` run (matplotlib, imported lazily, Agg backend).

- ``training_curves.png``: loss, test accuracy, group sparsity and mean bits per epoch, with
  the stage boundaries (dense, warm-up, projection, joint, cool-down) marked;
- ``layers.png``: per-layer weight/activation bit widths and kept-channel fractions;
- ``tradeoff.png``: accuracy against relative BOPs, compressed vs the dense model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["write_plots", "PLOT_FILES"]

PLOT_FILES = ("training_curves.png", "layers.png", "tradeoff.png")


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


def _stage_marks(ax: Any, history: list[dict[str, Any]]) -> None:
    """Dashed lines where the stage changes, labelled with the new stage."""
    previous = None
    for i, record in enumerate(history):
        if record["stage"] != previous:
            ax.axvline(i + 0.5, color="0.6", linestyle="--", linewidth=0.8)
            ax.text(
                i + 0.6,
                1.0,
                record["stage"],
                transform=ax.get_xaxis_transform(),
                fontsize=7,
                va="top",
                rotation=90,
                color="0.35",
            )
            previous = record["stage"]


def _curves(plt: Any, report: dict[str, Any]) -> Any:
    history = report["history"]
    x = list(range(1, len(history) + 1))
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    series = [
        (axes[0][0], "training loss", [("loss", "loss")]),
        (axes[0][1], "accuracy", [("test_accuracy", "test"), ("train_accuracy", "train")]),
        (axes[1][0], "group sparsity", [("sparsity", "sparsity")]),
        (axes[1][1], "mean bit width", [("weight_bits", "weights"), ("input_bits", "activations")]),
    ]
    for ax, title, keys in series:
        for key, label in keys:
            ys = [r.get(key) for r in history]
            pts = [(xi, y) for xi, y in zip(x, ys) if y is not None]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=label)
        _stage_marks(ax, history)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][1].axhline(report["dense"]["accuracy"], color="k", linewidth=0.8, label="dense (final, test)")
    axes[1][1].set_yscale("log", base=2)  # warm-up bits are unconstrained and may be large
    axes[0][1].legend(fontsize=7)
    axes[1][1].legend(fontsize=7)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    fig.suptitle(f"{report['options']['model']} on {report['data']}", fontsize=10)
    return fig


def _layers(plt: Any, report: dict[str, Any]) -> Any:
    layers = [r for r in report["layers"] if r.get("kind") != "embedding" or r.get("params")]
    names = [r["name"] for r in layers]
    idx = list(range(len(layers)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.45 * len(layers) + 2), 6), sharex=True)
    top.bar(
        [i - 0.2 for i in idx], [min(r["weight_bits"], 32) for r in layers], width=0.4, label="weight bits"
    )
    top.bar(
        [i + 0.2 for i in idx], [min(r["act_bits"], 32) for r in layers], width=0.4, label="activation bits"
    )
    ticks = sorted({min(r[k], 32) for r in layers for k in ("weight_bits", "act_bits")})
    top.set_yscale("log", base=2)
    top.set_ylim(1, max(ticks, default=32) * 1.3)
    top.set_yticks(ticks, [str(t) for t in ticks])
    top.minorticks_off()
    top.set_ylabel("bits")
    top.legend(fontsize=7)
    top.grid(alpha=0.3, axis="y")
    bottom.bar(
        [i - 0.2 for i in idx], [r.get("kept_out", 1.0) for r in layers], width=0.4, label="output channels"
    )
    bottom.bar(
        [i + 0.2 for i in idx], [r.get("kept_in", 1.0) for r in layers], width=0.4, label="input channels"
    )
    bottom.set_ylim(0, 1.05)
    bottom.set_ylabel("kept fraction")
    bottom.legend(fontsize=7)
    bottom.grid(alpha=0.3, axis="y")
    bottom.set_xticks(idx)
    bottom.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    fig.suptitle("per-layer bit widths and kept channels", fontsize=10)
    return fig


def _tradeoff(plt: Any, report: dict[str, Any]) -> Any:
    fig, ax = plt.subplots(figsize=(6, 4))
    d, c = report["dense"], report["compressed"]
    points = [
        ("dense FP32", 1.0, d["accuracy"], "k"),
        ("compressed (W+A)", report["relative_bops"], c["accuracy"], "tab:red"),
        ("compressed (W only)", report["relative_bops_weight_only"], c["accuracy"], "tab:orange"),
    ]
    for label, bops, acc, color in points:
        if bops > 0:
            ax.scatter([bops * 100], [acc * 100], color=color, label=label, zorder=3)
            ax.annotate(
                f"{bops:.2%}", (bops * 100, acc * 100), textcoords="offset points", xytext=(5, 5), fontsize=7
            )
    lowest = min(acc for _, _, acc, _ in points) * 100
    ax.set_ylim(max(0.0, lowest - 2.0), min(100.5, max(d["accuracy"], c["accuracy"]) * 100 + 1.0))
    ax.set_xscale("log")
    ax.set_xlabel("relative BOPs (% of dense FP32)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title("accuracy vs cost", fontsize=10)
    return fig
