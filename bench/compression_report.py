"""The compression benchmark's table, front summary and plot (from the saved per-seed records).

Rows are named by the grid of `bench.compression`: ``pipeline s=S B-bit``, ``geta budget X%``
(joint allocation under the budget), ``geta default`` (no budget, no sparsity: the library's
default rule), ``geta paper rules s=0.5`` and ``geta W only`` (weight-only BOPs: not on the W+A
front). The front summary compares the ``geta budget`` rows with the pipeline's Pareto front
(`bench.compression_front`): per budget the pipeline's BOPs ÷ geta's at equal quality; over the
budgets at or below the pipeline's 4-bit point (its most expensive 4-bit row: plain 4-bit QAT)
their median, from the seed means and per seed (each seed's geta points against the seed-mean
pipeline front: the pipeline's own seed noise is not paired with geta's), and whether each
such point is at or above the front. Ratios outside the front are bounds (``>=``: geta beats the
pipeline's best; ``<=``: geta is below its cheapest) and enter the median at the bound.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from bench.compression_front import FrontSummary, front_summary, pareto, ratio_at
from bench.compression_tasks import TASKS

__all__ = ["BUDGET_PREFIX", "DEFAULT", "four_bit_point", "plot", "summarize", "widths_text"]

Results = dict[tuple[str, str], list[dict[str, Any]]]  # (task, method) -> one record per seed
BUDGET_PREFIX = "geta budget "
DEFAULT = "geta default"
_MARK = {"exact": "", "lower": ">=", "upper": "<=", "none": ""}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _ok(rs: list[dict[str, Any]]) -> bool:
    """Every seed ran (a budget below the cheapest model the bounds allow records ``infeasible``)."""
    return all("acc" in r for r in rs)


def four_bit_point(results: Results, task: str) -> float:
    """BOPs of the pipeline's most expensive 4-bit row (plain 4-bit QAT when the grid has it)."""
    rows = [rs for (t, n), rs in results.items() if t == task and n.startswith("pipeline") and "4-bit" in n]
    return max((statistics.fmean(r["bops"] for r in rs) for rs in rows), default=math.inf)


def _budget_rows(results: Results, task: str) -> list[tuple[str, list[dict[str, Any]]]]:
    rows = [(n, rs) for (t, n), rs in results.items() if t == task and n.startswith(BUDGET_PREFIX)]
    return sorted((r for r in rows if _ok(r[1])), key=lambda r: statistics.fmean(x["bops"] for x in r[1]))


def _table(results: Results, task: str) -> list[str]:
    lm = TASKS[task].lm
    metric, worst = ("perplexity", "joint max") if lm else ("accuracy %", "joint min %")
    lines = [f"{'method':<34} {metric:>15} {'rel. BOPs %':>12} {worst:>12} {'drop@period':>12}  bits",
             "-" * 100]  # fmt: skip
    for (t, name), rs in sorted(results.items(), key=lambda kv: kv[0][1]):
        if t != task:
            continue
        if not _ok(rs):
            floor = max(r.get("infeasible", math.nan) for r in rs)
            lines.append(f"{name:<34} infeasible: the cheapest model allowed costs {100 * floor:.4f} %")
            continue
        m, sd = _mean_std([r["acc"] for r in rs])
        bops = statistics.fmean(r.get("bops", math.nan) for r in rs)
        jm = f"{statistics.fmean(r['joint_min'] for r in rs):.2f}" if "joint_min" in rs[0] else ""
        drop = f"{max(r['period_drop'] for r in rs):.2f}" if "period_drop" in rs[0] else ""
        bits = str(sorted({b for r in rs for b in r.get("bits", [])})) if "bits" in rs[0] else ""
        lines.append(f"{name:<34} {m:>8.2f} ± {sd:<4.2f} {100 * bops:>12.4f} {jm:>12} {drop:>12}  {bits}")
    return lines


def _pipeline_front(results: Results, task: str, q: Any) -> list[tuple[float, float]]:
    pts = [(statistics.fmean(r["bops"] for r in rs), q(statistics.fmean(r["acc"] for r in rs)))
           for (t, n), rs in results.items() if t == task and n.startswith("pipeline")]  # fmt: skip
    return pareto(pts)


def widths_text(widths: list[list[Any]]) -> str:
    """Kept/size of every prunable group: '32/32 20/32 41/64'."""
    return " ".join(f"{kept}/{size}" for _, size, kept in widths)


def summarize(results: Results, task: str) -> tuple[list[str], str]:
    """The task's table, its front summary and default point, and the headline line."""
    lm = TASKS[task].lm
    q = (lambda v: -v) if lm else (lambda v: v)  # larger q is better
    unit = "perplexity" if lm else "accuracy"
    lines = _table(results, task)
    front = _pipeline_front(results, task, q)
    limit = four_bit_point(results, task)
    rows = _budget_rows(results, task)
    lines += ["", f"pipeline BOPs / geta BOPs at equal {unit} (pipeline front of seed means, log BOPs):"]
    means = [(statistics.fmean(r["bops"] for r in rs), q(statistics.fmean(r["acc"] for r in rs)))
             for _, rs in rows]  # fmt: skip
    whole = front_summary(front, means, limit)
    for (name, rs), (value, kind), (bops, _) in zip(rows, whole.ratios, means):
        m, sd = _mean_std([r["acc"] for r in rs])
        jm = [r["joint_min"] for r in rs]
        stale = [r.get("joint_min_stale", r["joint_min"]) for r in rs]
        lines.append(f"  {name[len(BUDGET_PREFIX):]:>8}: {m:.2f} ± {sd:.2f} at {100 * bops:.4f} % -> "
                     f"{_MARK[kind]}{value:.2f}x; joint stage worst {statistics.fmean(jm):.2f} "
                     f"(worst seed {min(jm, key=q):.2f}; stale norm statistics "
                     f"{statistics.fmean(stale):.2f}); "
                     "kept (seed 0) "
                     f"{widths_text(rs[0]['widths'])}")  # fmt: skip
    seeds = _per_seed(front, rows, limit, q)
    sd_text = f"{seeds[0]:.2f} ± {seeds[1]:.2f}x over seeds" if seeds else "no seeds"
    verdict = "yes" if whole.above else "NO"
    lines.append(f"  over the {whole.counted} budgets at or below the pipeline's 4-bit point "
                 f"({100 * limit:.4f} %): median {whole.median:.2f}x (seed means), {sd_text}; "
                 f"at or above the pipeline's front at each: {verdict} (seeds: {seeds[2] if seeds else 0} "
                 f"of {len(rows[0][1]) if rows else 0})")  # fmt: skip
    infeasible = [
        n for (t, n), rs in results.items() if t == task and n.startswith(BUDGET_PREFIX) and not _ok(rs)
    ]
    if infeasible:
        lines.append(f"  infeasible, not counted: {', '.join(n[len(BUDGET_PREFIX) :] for n in infeasible)}")
    head = f"{task}: front {sd_text} (median {whole.median:.2f}x of seed means, at/above: {verdict})"
    if infeasible:
        head += f"; {len(infeasible)} budget(s) infeasible"
    default = results.get((task, DEFAULT))
    if default and _ok(default):
        m, sd = _mean_std([r["acc"] for r in default])
        bops = statistics.fmean(r["bops"] for r in default)
        value, kind = ratio_at(front, (bops, q(m)))
        text = f"{m:.2f} ± {sd:.2f} at {100 * bops:.4f} % rel. BOPs -> {_MARK[kind]}{value:.2f}x"
        lines.append(f"  default (no budget, no sparsity): {text}; kept (seed 0) "
                     f"{widths_text(default[0]['widths'])}")  # fmt: skip
        head += f"; default {text}"
    return lines, head


def _per_seed(
    front: list[tuple[float, float]], rows: list[tuple[str, list[dict[str, Any]]]], limit: float, q: Any
) -> tuple[float, float, int] | None:
    """Mean and std over seeds of each seed's median ratio, and how many seeds were at/above."""
    n = min((len(rs) for _, rs in rows), default=0)
    if n == 0:
        return None
    per: list[FrontSummary] = []
    for s in range(n):
        per.append(front_summary(front, [(rs[s]["bops"], q(rs[s]["acc"])) for _, rs in rows], limit))
    medians = [p.median for p in per if not math.isnan(p.median)]
    if not medians:
        return None
    m, sd = _mean_std(medians)
    return m, sd, sum(p.above for p in per)


def _panel(ax: Any, results: Results, task: str) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lm = TASKS[task].lm
    sign = -1.0 if lm else 1.0

    def mean(rs: list[dict[str, Any]], key: str, scale: float = 1.0) -> float:
        return statistics.fmean(scale * r[key] for r in rs)

    rows = {n: rs for (t, n), rs in results.items() if t == task and _ok(rs) and "bops" in rs[0]}
    pipe = [(mean(rs, "bops", 100), mean(rs, "acc")) for n, rs in rows.items() if n.startswith("pipeline")]
    if pipe:
        ax.scatter(*zip(*pipe), marker="o", color="C0", label="pipeline (Torch-Pruning -> FT -> QAT)")
    front = pareto([(b, sign * a) for b, a in pipe])
    ax.plot([p[0] for p in front], [sign * p[1] for p in front], "--", color="C0", linewidth=1,
            label="pipeline's Pareto front")  # fmt: skip
    limit = four_bit_point(results, task)
    if math.isfinite(limit):
        ax.axvline(100 * limit, color="C0", linestyle=":", linewidth=0.8,
                   label="pipeline's 4-bit point (the median's limit)")  # fmt: skip
    budgets = _budget_rows(results, task)
    ys = [_mean_std([r["acc"] for r in rs]) for _, rs in budgets]
    if budgets:
        xs = [mean(rs, "bops", 100) for _, rs in budgets]
        ax.errorbar(xs, [y[0] for y in ys], yerr=[y[1] for y in ys], marker="s", color="C3", capsize=3,
                    label="geta, BOPs budgets (mean ± std over seeds)")  # fmt: skip
    for name, marker, label in ((DEFAULT, "*", "geta default (no budget)"),
                                ("geta paper rules s=0.5", "x", "geta, the paper's rules (s=0.5)"),
                                ("geta W only", "^", "geta W only (weight-only BOPs)")):  # fmt: skip
        if name in rows:
            ax.scatter([mean(rows[name], "bops", 100)], [mean(rows[name], "acc")], marker=marker, s=90,
                       color={"*": "C3", "x": "C2", "^": "C1"}[marker], label=label, zorder=4)  # fmt: skip
    dense = rows.get("dense FP32")
    if dense:
        ref = mean(dense, "acc")
        ax.axhline(ref, color="gray", linestyle=":", label="dense FP32")
        shown = [a for _, a in pipe] + [y[0] for y in ys]
        if lm:  # from the best perplexity shown to geta's worst point (collapsed pipeline runs fall off)
            low = min([ref, *shown])
            geta_worst = max([y[0] for y in ys] + [mean(rows[n], "acc") for n in rows if n == DEFAULT])
            ax.set_ylim(low * 0.95, min(max(low * 1.6, geta_worst * 1.05), low * 3))
        else:
            ax.set_ylim(max(min([ref - 12, *shown]) - 2, 0), min(100.5, max([ref, *shown]) + 2))
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # labels within a decade too
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("relative BOPs, W+A (% of dense FP32, log scale)")
    ax.set_ylabel("test perplexity (lower is better)" if lm else "test accuracy, converted model (%)")
    ax.set_title(task)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right" if lm else "lower right", fontsize=7)


def plot(results: Results, tasks: list[str], path: Any) -> None:
    """One panel per task (two per row): the pipeline's points and front, geta's budgets as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(2, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.8 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        _panel(ax, results, task)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
