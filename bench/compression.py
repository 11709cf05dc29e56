"""Compression quality: geta vs the sequential pipeline (prune -> fine-tune -> QAT), side by side.

    python -m bench.compression [--tasks digits,mnist1d] [--seeds 3] [--jobs 2] [--quick]

For every task and seed one dense model is trained (``dense_epochs``) and shared; then every
method gets the same budget of ``epochs`` more epochs from it, with the same loop, batch order,
SGD (momentum 0.9, wd 1e-4) and cosine learning rate (peak ``Task.lr``; no per-method search):

- dense FP32: ``epochs`` more float epochs;
- sequential pipeline: Torch-Pruning group-magnitude pruning (``GroupMagnitudeImportance``,
  ``MetaPruner``, the same channel sparsity in every layer, the classifier left alone) ->
  ``epochs / 2`` float fine-tuning -> ``epochs / 2`` QAT at fixed 2, 3, 4 or 8 bits (weights and
  inputs) with geta's own `LearnableQuantizer` (a QASSO run that is all cool-down: fixed bits,
  learned clipping); sparsity 0 of the same pipeline is plain fixed-bit QAT;
- geta: one QASSO run (warm-up 2, projection 6, joint 12 in 4 pruning periods, cool-down 20
  epochs of 40) with weights + activations, bits in [2, 8], at several sparsities and BOPs
  budgets, and weights only.

Reported: accuracy of the *converted* model (mean ± std over seeds), relative BOPs against the
dense FP32 model (W+A; weights-only rows use weight-only BOPs and are not on the W+A front),
and for geta the lowest test accuracy during the joint stage and the largest drop at the end of
a pruning period against the joint stage's start. The headline per task: the pipeline's
relative BOPs ÷ geta's at equal accuracy, the pipeline's Pareto front (seed means) interpolated
in log BOPs at geta's accuracy, for geta's default configuration (sparsity 0.5, default budget).
Jobs run as single-thread processes, ``--jobs`` at a time. Writes its section of
docs/benchmarks.md and docs/compression_pareto.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from bench.compression_tasks import TASKS, Task, compression_epochs, fit, score

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = ROOT / "runs" / "bench-compression"
PLOT = ROOT / "docs" / "compression_pareto.png"
SPARSITIES = (0.3, 0.5, 0.7)
PIPELINE_BITS = (2, 3, 4, 8)
GETA_BITS = (2, 8)
DEFAULT = "geta W+A s=0.5"  # the headline configuration
Results = dict[tuple[str, str], list[dict[str, Any]]]  # (task, method) -> one record per seed


# ---------------------------------------------------------------------------------------------
# jobs (each runs in its own single-thread process)
# ---------------------------------------------------------------------------------------------


def _optimizer(task: Task, params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The task's float optimizer (the same for every method): SGD momentum 0.9 or AdamW."""
    if task.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)


def _qasso(task: Task, plan: Any, schedule: Any, lr: float | None = None, **rules: Any) -> Any:
    """QASSO following the task's optimizer (its SGD or AdamW variant), at ``lr`` (default the
    task's). Its element-wise clamp at 1 is a no-op after the task's norm clipping at 1 (`fit`)."""
    import geta

    return geta.QASSO(plan, lr=task.lr if lr is None else lr, lr_quant=1e-3, momentum=0.9,
                      weight_decay=1e-4, schedule=schedule, variant=task.optimizer, grad_clip=1.0,
                      **rules)  # fmt: skip


def _dense_path(task: str, seed: int) -> pathlib.Path:
    pre = "-pretrained" if TASKS[task].pretrain is not None else ""  # not the from-scratch model's cache
    return CACHE / f"{task}{pre}-s{seed}-dense.pt"


def _load_dense(task: Task, seed: int) -> torch.nn.Module:
    model = task.build()
    model.load_state_dict(torch.load(_dense_path(task.name, seed), weights_only=True))
    return model


def job_dense(task_name: str, seed: int) -> dict[str, Any]:
    """Train the shared dense model; a pretrained one (``Task.pretrain``) only once per seed."""
    task = TASKS[task_name]
    data = task.data()
    path = _dense_path(task_name, seed)
    if task.pretrain is not None and path.exists():
        return {"acc": _metric(task, _load_dense(task, seed), data), "cached": True}
    torch.manual_seed(seed)
    model = task.build()
    opt = _optimizer(task, model.parameters(), task.dense_lr)
    train = task.pretrain() if task.pretrain is not None else data
    fit(model, opt, train, task.dense_epochs, seed=seed, lr=task.dense_lr, clip_norm=task.clip_norm)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return {"acc": _metric(task, model, data)}


def _metric(task: Task, model: torch.nn.Module, data: tuple[torch.Tensor, ...]) -> float:
    """What the tables show: accuracy in % (classification) or perplexity (language modelling)."""
    value = score(task, model, data)  # type: ignore[arg-type]
    return value if task.lm else 100 * value


def _measure(
    small: torch.nn.Module, dense: torch.nn.Module, x: torch.Tensor, weights_only: bool
) -> dict[str, float]:
    import geta

    rep = geta.report(small, (x[:2],), dense=dense)
    return {
        "bops": rep.relative_bops_weight_only if weights_only else rep.relative_bops,
        "size": rep.size_bits,
    }


def job_float(task_name: str, seed: int, lr: float | None = None) -> dict[str, Any]:
    """Float training of the dense model for the compression budget, at ``lr`` (default the task's)."""
    task = TASKS[task_name]
    data = task.data()
    model = _load_dense(task, seed)
    lr = task.lr if lr is None else lr
    opt = _optimizer(task, model.parameters(), lr)
    (epochs,) = compression_epochs(task)["dense FP32"]
    fit(model, opt, data, epochs, seed=seed + 100, lr=lr, clip_norm=task.clip_norm,
        loss_fn=_task_loss(task, seed))  # fmt: skip
    return {"acc": _metric(task, model, data), "bops": 1.0}


def job_finetune(task_name: str, seed: int, sparsity: float) -> dict[str, Any]:
    """Torch-Pruning group magnitude to ``sparsity`` of every layer's channels, then float FT."""
    import torch_pruning as tp

    task = TASKS[task_name]
    data = task.data()
    model = _load_dense(task, seed)
    if sparsity > 0 and task.lm:
        model = _magnitude_prune(model, data[0][:8], sparsity)
    elif sparsity > 0:
        pruner = tp.pruner.MetaPruner(
            model,
            data[0][:2],
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=sparsity,
            ignored_layers=[model.head],
        )
        pruner.step()
    opt = _optimizer(task, model.parameters(), task.lr)
    epochs = compression_epochs(task)["pipeline"][0]
    fit(model, opt, data, epochs, seed=seed + 100, lr=task.lr, clip_norm=task.clip_norm,
        loss_fn=_task_loss(task, seed))  # fmt: skip
    path = CACHE / f"{task_name}-s{seed}-ft{sparsity}.pt"
    torch.save(model, path)
    return {"path": str(path), "acc": _metric(task, model, data)}


def _magnitude_prune(model: torch.nn.Module, example: torch.Tensor, sparsity: float) -> torch.nn.Module:
    """Torch-Pruning hangs on HF Llama: prune geta's own groups by group magnitude instead (the
    same share of every group, lowest L2 norm over all its slices first), bake, return float."""
    import geta
    from geta.optim.layout import UnitLayout
    from geta.optim.quota import group_floors, uniform_quotas
    from geta.optim.saliency import select_per_group

    plan = geta.prepare(model, (example,), geta.Config(target_sparsity=sparsity, weight_bits=(16, 16)))
    layout = UnitLayout(plan.prunable_groups, lambda t: -1)
    sizes = torch.tensor([g.size for g in plan.prunable_groups])
    floors = group_floors(sizes, fraction=0.1, count=1, divisible=1)
    need = uniform_quotas(sizes, round(sparsity * int(sizes.sum())), floors, divisible=1)
    x_sq, _, _ = layout.unit_stats(lambda t: None)
    chosen = select_per_group(x_sq, layout.unit_group, torch.ones_like(x_sq, dtype=torch.bool), need)
    with torch.no_grad():
        for tensor, dim, pos in layout.zero_positions(chosen):
            tensor.index_fill_(dim, pos, 0.0)
    return geta.export.baked(geta.convert(model, plan)).train()


def job_qat(task_name: str, seed: int, sparsity: float, bits: int) -> dict[str, Any]:
    """Fixed-bit QAT of the fine-tuned pruned model with geta's quantizers (all cool-down)."""
    import geta

    task = TASKS[task_name]
    data = task.data()
    model = torch.load(CACHE / f"{task_name}-s{seed}-ft{sparsity}.pt", weights_only=False)
    config = geta.Config(target_sparsity=0.0, weight_bits=(bits, bits), act_bits=(bits, bits))
    plan = geta.prepare(model, (data[0][:64],), config)
    epochs = compression_epochs(task)["pipeline"][1]
    opt = _qasso(task, plan, geta.Schedule(cooldown=epochs * (len(data[1]) // 64)))
    fit(model, opt, data, epochs, seed=seed + 200, lr=task.lr, clip_norm=task.clip_norm,
        loss_fn=_task_loss(task, seed))  # fmt: skip
    small = geta.convert(model, plan)
    return {
        "acc": _metric(task, small, data),
        **_measure(small, _load_dense(task, seed), data[0], False),
    }


def job_geta(task_name: str, seed: int, spec: dict[str, Any]) -> dict[str, Any]:
    """One geta run from the dense model; the test accuracy after every epoch is recorded."""
    import geta

    task = TASKS[task_name]
    data = task.data()
    model = _load_dense(task, seed)
    sparsity = spec.get("sparsity")
    config = geta.Config(
        **({"target_sparsity": sparsity} if sparsity is not None else {}),
        weight_bits=GETA_BITS,
        act_bits=GETA_BITS if spec.get("acts", True) else None,
        target_bops=spec.get("budget"),
        selection=spec.get("selection", "uniform"),
    )
    plan = geta.prepare(model, (data[0][:64],), config)
    per_epoch = len(data[1]) // 64
    (e,) = compression_epochs(task)["geta"]
    w, pr, j = round(0.05 * e), round(0.15 * e), round(0.3 * e)  # 2 / 6 / 12 / 20 of 40 epochs
    schedule = geta.Schedule.from_epochs(steps_per_epoch=per_epoch, warmup=w, projection=pr, joint=j,
                                         cooldown=e - w - pr - j, projection_periods=3,
                                         pruning_periods=4)  # fmt: skip
    rules = {"forget": spec.get("forget", "linear"), "bits": spec.get("bits", "budget")}
    lr = spec.get("lr", task.lr)
    opt = _qasso(task, plan, schedule, lr, **rules)
    path: list[float] = []
    loss_fn = _task_loss(task, seed, spec.get("distill"))
    fit(model, opt, data, e, seed=seed + 100, lr=lr, loss_fn=loss_fn, clip_norm=task.clip_norm,
        on_epoch=lambda _: path.append(_metric(task, model, data)))  # fmt: skip
    small = geta.convert(model, plan)
    acc = _metric(task, small, data)
    start = w + pr - 1  # the epoch that ends the projection stage: accuracy at the joint start
    ends = [(schedule.pruning_period_bounds(k)[1] - 1) // per_epoch for k in range(4)]  # commit epochs
    sign = -1.0 if task.lm else 1.0  # +1: higher is better (accuracy); -1: perplexity
    worst = sign * min(sign * v for v in path[start + 1 : w + pr + j])
    out = {"acc": acc, "path": path, "joint_min": worst, "start": path[start]}
    out["period_drop"] = max(sign * (path[start] - path[k]) for k in ends)
    out["bits"] = sorted({round(b.quantizer.bit_width) for b in plan.bindings})
    return {**out, **_measure(small, _load_dense(task, seed), data[0], not spec.get("acts", True))}


def _task_loss(task: Task, seed: int, distill: float | None = None) -> Any:
    """The loss of every method on ``task``: cross-entropy (None), or with distillation from the
    seed's dense model at weight ``distill`` (default the task's, `Task.distill`)."""
    weight = task.distill if distill is None else distill
    return _distill_loss(_load_dense(task, seed), weight) if weight > 0 else None


def _distill_loss(teacher: torch.nn.Module, weight: float = 1.0) -> Any:
    """Cross-entropy + ``weight`` x the CLI's distillation term (T² KL(teacher || student) at
    T = 2, `geta.recipes.training.distillation_loss`; class or token logits), the dense model
    (eval mode) teaching."""
    from bench.compression_tasks import _ce
    from geta.recipes.training import distillation_loss

    teacher.eval()

    def loss(out: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(x)
        return _ce(out, y) + weight * distillation_loss(out, target)

    return loss


def _run(fn_name: str, *args: Any) -> dict[str, Any]:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    out = globals()[fn_name](*args)
    out["seconds"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------------------------
# the grid, the table, the headline
# ---------------------------------------------------------------------------------------------


def geta_specs(quick: bool, lm: bool) -> dict[str, dict[str, Any]]:
    """geta's configurations; the LM task (minutes per run) gets a smaller grid."""
    specs: dict[str, dict[str, Any]] = {}
    for s in (0.5,) if quick else (0.0, 0.3, 0.5) if lm else (0.0, *SPARSITIES):
        specs[f"geta W+A s={s}"] = {"sparsity": s}  # s = 0: quantization only, bits learned
    if lm and not quick:
        specs["geta W+A s=0.5 budget 0.5%"] = {"sparsity": 0.5, "budget": 0.005}
    elif not quick:
        specs["geta W+A s=0.5 budget 0.2%"] = {"sparsity": 0.5, "budget": 0.002}
        specs["geta W+A s=0.7 budget 0.06%"] = {"sparsity": 0.7, "budget": 0.0006}
        specs["geta W s=0.5"] = {"sparsity": 0.5, "acts": False}
        specs["geta W+A s=0.5 paper rules"] = {"sparsity": 0.5, "forget": "descent", "bits": "descent",
                                              "selection": "global"}  # fmt: skip
    return specs


def run_all(
    tasks: list[str], seeds: int, jobs: int, quick: bool
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def sparsities(task: str) -> tuple[float, ...]:
        return (0.5,) if quick else (0.0, 0.5) if TASKS[task].lm else (0.0, *SPARSITIES)

    def bit_widths(task: str, sparsity: float) -> tuple[int, ...]:
        if quick:
            return (4,)
        return (4, 8) if sparsity == 0 else (3, 4, 8) if TASKS[task].lm else PIPELINE_BITS

    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        dense = {(t, s): pool.submit(_run, "job_dense", t, s) for t in tasks for s in range(seeds)}
        for (t, _), f in dense.items():
            results.setdefault((t, "dense (start)"), []).append(f.result())
        wave: dict[tuple[str, str], list[Any]] = {}
        for t in tasks:
            for s in range(seeds):
                for sp in sparsities(t):
                    wave.setdefault((t, f"ft {sp}"), []).append(pool.submit(_run, "job_finetune", t, s, sp))
                for name, spec in geta_specs(quick, TASKS[t].lm).items():
                    wave.setdefault((t, name), []).append(pool.submit(_run, "job_geta", t, s, spec))
                wave.setdefault((t, "dense FP32"), []).append(pool.submit(_run, "job_float", t, s))
        qat: dict[tuple[str, str], list[Any]] = {}
        for (t, name), futures in wave.items():
            if name.startswith("ft "):
                sp = float(name[3:])
                for s, f in enumerate(futures):
                    f.result()
                    for b in bit_widths(t, sp):
                        key = (t, f"pipeline s={sp} {b}-bit")
                        qat.setdefault(key, []).append(pool.submit(_run, "job_qat", t, s, sp, b))
        for key, futures in {**wave, **qat}.items():
            if not key[1].startswith("ft "):
                results[key] = [f.result() for f in futures]
    return results


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(bops, acc) points not dominated (lower BOPs and higher accuracy), by increasing BOPs."""
    front: list[tuple[float, float]] = []
    for b, a in sorted(points):
        if not front or a > front[-1][1]:
            front.append((b, a))
    return front


def bops_at(front: list[tuple[float, float]], acc: float) -> float | None:
    """The front's BOPs at accuracy ``acc``, linear in log BOPs between points; None outside."""
    for (b0, a0), (b1, a1) in itertools.pairwise(front):
        if a0 <= acc <= a1:
            w = 0.0 if a1 == a0 else (acc - a0) / (a1 - a0)
            return math.exp(math.log(b0) + w * (math.log(b1) - math.log(b0)))
    return None  # outside the front: better than its best point or worse than its cheapest


def summarize(results: dict[tuple[str, str], list[dict[str, Any]]], task: str) -> tuple[list[str], str]:
    """The task's table, the ratio of every geta W+A row, and the headline line."""
    lm = TASKS[task].lm
    q = (lambda v: -v) if lm else (lambda v: v)  # larger q is better
    rows = [(name, rs) for (t, name), rs in results.items() if t == task]
    metric, worst = ("perplexity", "joint max") if lm else ("accuracy %", "joint min %")
    cols = f"{metric:>15} {'rel. BOPs %':>12} {worst:>12} {'drop@period':>12}  bits"
    lines = [f"{'method':<34} {cols}", "-" * 100]
    front_pts = []
    for name, rs in sorted(rows, key=lambda r: r[0]):
        m, sd = _mean_std([r["acc"] for r in rs])
        bops = statistics.fmean(r.get("bops", float("nan")) for r in rs)
        jm = f"{statistics.fmean(r['joint_min'] for r in rs):.2f}" if "joint_min" in rs[0] else ""
        drop = f"{max(r['period_drop'] for r in rs):.2f}" if "period_drop" in rs[0] else ""
        bits = str(sorted({b for r in rs for b in r.get("bits", [])})) if "bits" in rs[0] else ""
        lines.append(f"{name:<34} {m:>8.2f} ± {sd:<4.2f} {100 * bops:>12.4f} {jm:>12} {drop:>12}  {bits}")
        if name.startswith("pipeline"):
            front_pts.append((bops, q(m)))
    front = pareto(front_pts)
    lines.append("")
    ratios: dict[str, tuple[float, str]] = {}
    for name, rs in rows:
        if not name.startswith("geta W+A") or "paper" in name:
            continue
        m, sd = _mean_std([r["acc"] for r in rs])
        g = statistics.fmean(r["bops"] for r in rs)
        at = bops_at(front, q(m))
        if at is None and front and q(m) > front[-1][1]:  # better than every pipeline point
            value, text = front[-1][0] / g, f">= {front[-1][0] / g:.2f}x (better than every pipeline point)"
        elif at is None and front:  # worse than the cheapest pipeline point: it dominates geta
            value, text = math.nan, f"<= {front[0][0] / g:.2f}x (worse than the pipeline's cheapest point)"
        else:
            value, text = (math.nan, "n/a") if at is None else (at / g, f"{at / g:.2f}x")
        ratios[name] = (value, f"{name}: {m:.2f} ± {sd:.2f} at {100 * g:.3f} % rel. BOPs -> {text}")
        lines.append(f"pipeline BOPs / geta BOPs at equal {metric.split()[0]}, {ratios[name][1]}")
    finite = {k: v for k, v in ratios.items() if not math.isnan(v[0])}
    best = max(finite, key=lambda k: finite[k][0], default=None)
    headline = f"{task}: best {finite[best][1]}" if best else f"{task}: no comparable geta row"
    if DEFAULT in ratios:
        headline += f"; default ({ratios[DEFAULT][1]})"
    return lines, headline


_PIPE, _GETA, _PAPER, _WONLY = (
    "pipeline (Torch-Pruning -> FT -> QAT)",
    "geta W+A (defaults; budgets)",
    "geta W+A, the paper's rules",
    "geta W only (weight-only BOPs)",
)


def _series(name: str) -> str:
    if name.startswith("pipeline"):
        return _PIPE
    if "paper" in name:
        return _PAPER
    return _WONLY if name.startswith("geta W ") else _GETA


def plot(results: Results, tasks: list[str]) -> None:
    """One panel per task: seed means of every method, the pipeline's Pareto front dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, axes = plt.subplots(1, len(tasks), figsize=(6.2 * len(tasks), 4.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        groups: dict[str, list[tuple[float, float]]] = {_PIPE: [], _GETA: [], _PAPER: [], _WONLY: []}
        for (t, name), rs in results.items():
            if t == task and "bops" in rs[0] and name != "dense FP32":
                m = statistics.fmean(r["acc"] for r in rs)
                groups[_series(name)].append((statistics.fmean(100 * r["bops"] for r in rs), m))
        for (label, pts), style in zip(groups.items(), ("o", "s", "x", "^")):
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=style, label=label, zorder=3)
        lm = TASKS[task].lm
        sign = -1.0 if lm else 1.0
        front = pareto([(b, sign * m) for b, m in groups[_PIPE]])
        ax.plot([p[0] for p in front], [sign * p[1] for p in front], "--", color="C0", linewidth=1)
        dense = [r["acc"] for (t, n), rs in results.items() if t == task and n == "dense FP32" for r in rs]
        if dense:
            ax.axhline(statistics.fmean(dense), color="gray", linestyle=":", label="dense FP32")
            ref = statistics.fmean(dense)  # show the region that matters; far-off points are clipped
            if lm:  # from the best perplexity shown up to 1.6x it (collapsed runs fall off the top)
                low = min([ref] + [p[1] for pts in groups.values() for p in pts])
                ax.set_ylim(low * 0.95, low * 1.6)
            else:
                ax.set_ylim(max(ref - 12, 0), 100.5)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("relative BOPs, W+A (% of dense FP32, log scale)")
        ax.set_ylabel("test perplexity (lower is better)" if lm else "test accuracy, converted model (%)")
        ax.set_title(task)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper right" if lm else "lower right", fontsize=7)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)


def _saved(results: Results) -> Results:
    """Merge ``results`` into CACHE/results.json (per task and method) and return everything saved,
    so that tasks run separately (``--tasks lm``) still make one table and one plot."""
    path = CACHE / "results.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    merged = {tuple(k.split("|", 1)): v for k, v in old.items()}
    merged.update(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({f"{t}|{n}": v for (t, n), v in merged.items()}))
    return merged  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="digits,mnist1d,lm")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one geta and one pipeline configuration")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    parser.add_argument("--table-only", action="store_true",
                        help="no training: table and plot of the results saved by earlier runs")  # fmt: skip
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    t0 = time.perf_counter()
    fresh = {} if args.table_only else run_all(tasks, args.seeds, args.jobs, args.quick)
    results = _saved(fresh)
    tasks = [t for t in TASKS if any(k[0] == t for k in results)] if args.table_only else tasks
    import geta

    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, geta "
             f"{geta.__version__}; {args.seeds} seeds, {args.jobs} single-thread jobs at a time"]  # fmt: skip
    headlines = []
    for task in tasks:
        t = TASKS[task]
        lines += ["", f"== {task}: dense {t.dense_epochs} epochs, then {t.epochs} epochs per method =="]
        body, head = summarize(results, task)
        lines += body
        headlines.append(head)
    if not args.table_only:
        lines += ["", f"wall time {time.perf_counter() - t0:.0f} s"]
    lines += headlines
    print("\n".join(lines))
    if not args.no_write:
        from bench.results import write_section

        write_section("compression quality", lines)
        plot(results, tasks)
        print(f"wrote docs/benchmarks.md and {PLOT.relative_to(ROOT)}")
    print(" | ".join(headlines))


if __name__ == "__main__":
    main()
