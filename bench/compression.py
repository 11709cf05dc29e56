"""Compression quality: geta's front vs the sequential pipeline's (prune -> fine-tune -> QAT).

    python -m bench.compression [--tasks digits,mnist1d,mnist1d-noisy,lm] [--seeds 3] [--jobs 2] [--quick]

For every task and seed one dense model is trained (``dense_epochs``) and shared; then every
method gets the same budget of ``epochs`` more epochs from it, with the same loop, batch order,
SGD (momentum 0.9, wd 1e-4) and cosine learning rate (peak ``Task.lr``; no per-method search):

- dense FP32: ``epochs`` more float epochs;
- sequential pipeline: Torch-Pruning group-magnitude pruning (``GroupMagnitudeImportance``,
  ``MetaPruner``, the same channel sparsity in every layer, the classifier left alone) ->
  ``epochs / 2`` float fine-tuning -> ``epochs / 2`` QAT at fixed bits (weights and inputs; the
  sparsities and bits of `PIPELINE_GRID`) with geta's own `LearnableQuantizer` (a QASSO run that
  is all cool-down: fixed bits, learned clipping); sparsity 0 of it is plain fixed-bit QAT;
- geta: one QASSO run (warm-up 2, projection 6, joint 12 in 4 pruning periods, cool-down 20
  epochs of 40) with weights + activations, bits in [2, 8], at `BUDGETS` BOPs budgets per task
  and no sparsity (widths and bits chosen together under the budget), log-spaced over
  `BUDGET_RANGE` (fixed per task: from about the pipeline's cheapest point, 2 bits at s=0.7, to
  its 8-bit s=0 point; the pipeline's BOPs do not depend on training); geta's default (no
  budget, no sparsity); on `RULE_ROWS` also the paper's rules at s=0.5 and weights only.
  A budget below the cheapest model the bounds allow is recorded as infeasible, not run.

Reported (`bench.compression_report`): accuracy of the *converted* model (mean ± std over
seeds), relative BOPs against the dense FP32 model (W+A; the weights-only row uses weight-only
BOPs and is not on the W+A front), geta's lowest test accuracy in the joint stage and largest
drop at a pruning period's end; per task the pipeline's BOPs ÷ geta's at equal accuracy at
every budget (the pipeline's Pareto front of seed means, interpolated in log BOPs), their
median over the budgets at or below the pipeline's 4-bit point (seed means; and mean ± std over
seeds of each seed's median), whether geta is at or above the front at each of them, geta's
default point, and the kept width of every prune group (one seed; every run's widths are in
runs/bench-compression/results.json). Jobs run as single-thread processes, ``--jobs`` at a
time; each records its wall and CPU seconds. Writes its section of docs/benchmarks.md and
docs/compression_pareto.png.

Duration (``--seeds 3 --jobs 2``, all four tasks): at most 40 minutes on the idle 2-core machine.
Measured per job in a ``--quick`` run (1 seed, contended 2-core x86_64 CPU, CPU seconds of the
single-thread job, i.e. its time on an idle core): dense 8.5-14.9 s, float 12-13 s, QAT 8-10 s,
geta 29-30 s on every image task before joint allocation, 34 s with it (digits, one run per
budget 0.03 % and default); the image tasks' grid (69 geta, 99 QAT, 36 fine-tuning, 9 dense,
9 float jobs) is about 3,700 CPU-s, 31 minutes with two jobs at a time. That leaves the LM task
about 9 minutes (1,000 CPU-s for its 3 seeds, 7 geta runs each); ``wall time`` at the end of
the table says what a run took.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from bench.compression_report import BUDGET_PREFIX, DEFAULT, Results, plot, summarize
from bench.compression_tasks import TASKS, Task, compression_epochs, fit, score
from geta.optim.budget import InfeasibleBudget

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = ROOT / "runs" / "bench-compression"
PLOT = ROOT / "docs" / "compression_pareto.png"
# the pipeline's sparsities and bits on the image tasks; left out as dominated on digits and
# MNIST-1D in the 2026-12-01 run (3 seeds): 2 and 3 bits at s=0.3, 2 bits at s=0.5 (each beaten,
# cheaper and more accurate, by s=0.5 at 4 bits or s=0.7 at 3-4 bits)
PIPELINE_GRID = {0.0: (4, 8), 0.3: (4, 8), 0.5: (3, 4, 8), 0.7: (2, 3, 4, 8)}
RULE_ROWS = ("mnist1d",)  # the task with the paper's-rules and weights-only rows (one each)
GETA_BITS = (2, 8)
BUDGETS = 6  # geta's budgets per task
# (lowest, highest) budget: about the pipeline's cheapest point (2 bits at s=0.7; the LM's grid:
# 3 bits at s=0.5) and its 8-bit s=0 point, fixed per task (the pipeline's BOPs do not depend on
# training, so the same budgets serve every seed and every run)
BUDGET_RANGE = {"*": (0.0003, 0.0625), "lm": (0.005, 0.0625)}


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
    from geta.optim.quota import group_floors, uniform_quotas
    from geta.optim.saliency import select_per_group
    from geta.optim.units import UnitLayout

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
        learn_exponent=spec.get("learn_exponent", True),
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
    fresh: list[float] = []  # the same epochs with re-estimated BatchNorm statistics (a copy)

    def on_epoch(_: int) -> None:
        path.append(_metric(task, model, data))
        fresh.append(_fresh_metric(task, model, data))

    loss_fn = _task_loss(task, seed, spec.get("distill"))
    fit(model, opt, data, e, seed=seed + 100, lr=lr, loss_fn=loss_fn, clip_norm=task.clip_norm,
        on_epoch=on_epoch)  # fmt: skip
    widths = [[g.slices[0].name, g.size, g.size - int(g.is_zero().sum())] for g in plan.prunable_groups]
    small = geta.convert(model, plan)
    acc = _metric(task, small, data)
    start = w + pr - 1  # the epoch that ends the projection stage: accuracy at the joint start
    ends = [(schedule.pruning_period_bounds(k)[1] - 1) // per_epoch for k in range(4)]  # commit epochs
    sign = -1.0 if task.lm else 1.0  # +1: higher is better (accuracy); -1: perplexity
    worst = sign * min(sign * v for v in fresh[start + 1 : w + pr + j])
    stale = sign * min(sign * v for v in path[start + 1 : w + pr + j])
    out = {"acc": acc, "path": path, "path_fresh": fresh, "joint_min": worst, "joint_min_stale": stale,
           "start": path[start], "widths": widths}  # fmt: skip
    out["period_drop"] = max(sign * (path[start] - path[k]) for k in ends)
    out["bits"] = sorted({round(b.quantizer.bit_width) for b in plan.bindings})
    return {**out, **_measure(small, _load_dense(task, seed), data[0], not spec.get("acts", True))}


def _fresh_metric(task: Task, model: torch.nn.Module, data: tuple[torch.Tensor, ...]) -> float:
    """`_metric` of a copy of ``model`` whose BatchNorm statistics were re-estimated on 20
    training batches (`geta.recalibrate_norms`, what ``geta compress`` does before it evaluates):
    the run itself is untouched. Models without BatchNorm: the plain metric."""
    import copy

    import geta

    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return _metric(task, model, data)
    twin = copy.deepcopy(model)
    geta.recalibrate_norms(twin, (data[0][i : i + 64] for i in range(0, 64 * 20, 64)), max_batches=20)
    return _metric(task, twin, data)


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
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        out = globals()[fn_name](*args)
    except InfeasibleBudget as exc:  # a budget below the cheapest model the bounds allow: no run
        out = {"infeasible": exc.floor}
    out["seconds"] = time.perf_counter() - t0
    out["cpu_seconds"] = time.process_time() - c0  # one thread: the job's seconds on an idle core
    return out


# ---------------------------------------------------------------------------------------------
# the grid, the table, the headline
# ---------------------------------------------------------------------------------------------


def budgets(task: str, quick: bool) -> tuple[float, ...]:
    """geta's BOPs budgets of a task: `BUDGETS` points log-spaced over its range (`BUDGET_RANGE`);
    ``quick``: the middle two."""
    lo, hi = BUDGET_RANGE.get(task, BUDGET_RANGE["*"])
    points = tuple(lo * (hi / lo) ** (k / (BUDGETS - 1)) for k in range(BUDGETS))
    return points[BUDGETS // 2 - 1 : BUDGETS // 2 + 1] if quick else points


def geta_specs(task: str, quick: bool) -> dict[str, dict[str, Any]]:
    """geta's configurations: one per budget (no sparsity: widths and bits chosen together), the
    default (neither), and on the image tasks the paper's rules at s=0.5 and weights only."""
    specs: dict[str, dict[str, Any]] = {
        f"{BUDGET_PREFIX}{100 * b:.3g}%": {"budget": b} for b in budgets(task, quick)
    }
    specs[DEFAULT] = {}
    if not quick and task in RULE_ROWS:  # the paper's rules and weights only, on two tasks
        specs["geta W only"] = {"acts": False}
        specs["geta paper rules s=0.5"] = {"sparsity": 0.5, "forget": "descent", "bits": "descent",
                                           "selection": "global"}  # fmt: skip
    return specs


def pipeline_grid(task: str, quick: bool) -> dict[float, tuple[int, ...]]:
    """The pipeline's sparsities and, for each, its fixed bit widths (sparsity 0: plain QAT)."""
    if quick:
        return {0.5: (3, 4)}
    if TASKS[task].lm:
        return {0.0: (4, 8), 0.5: (3, 4, 8)}
    return dict(PIPELINE_GRID)


def run_all(tasks: list[str], seeds: int, jobs: int, quick: bool) -> Results:
    results: Results = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        dense = {(t, s): pool.submit(_run, "job_dense", t, s) for t in tasks for s in range(seeds)}
        for (t, _), f in dense.items():
            results.setdefault((t, "dense (start)"), []).append(f.result())
        wave: dict[tuple[str, str], list[Any]] = {}
        for t in tasks:
            for s in range(seeds):
                for sp in pipeline_grid(t, quick):
                    wave.setdefault((t, f"ft {sp}"), []).append(pool.submit(_run, "job_finetune", t, s, sp))
                for name, spec in geta_specs(t, quick).items():
                    wave.setdefault((t, name), []).append(pool.submit(_run, "job_geta", t, s, spec))
                wave.setdefault((t, "dense FP32"), []).append(pool.submit(_run, "job_float", t, s))
        qat: dict[tuple[str, str], list[Any]] = {}
        for (t, name), futures in wave.items():
            if name.startswith("ft "):
                sp = float(name[3:])
                for s, f in enumerate(futures):
                    f.result()
                    for b in pipeline_grid(t, quick)[sp]:
                        key = (t, f"pipeline s={sp} {b}-bit")
                        qat.setdefault(key, []).append(pool.submit(_run, "job_qat", t, s, sp, b))
        for key, futures in {**wave, **qat}.items():
            if not key[1].startswith("ft "):
                results[key] = [f.result() for f in futures]
    return results


def _saved(results: Results) -> Results:
    """Merge ``results`` into CACHE/results.json (per task) and return everything saved, so that
    tasks run separately (``--tasks lm``) still make one table and one plot. A task run again
    replaces all its rows (no row of an older grid stays in its table)."""
    path = CACHE / "results.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    fresh = {t for t, _ in results}
    merged = {key: v for k, v in old.items() if (key := tuple(k.split("|", 1)))[0] not in fresh}
    merged.update(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({f"{t}|{n}": v for (t, n), v in merged.items()}))
    return merged  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    quick = "geta: two budgets and the default; pipeline: s=0.5 at 3 and 4 bits"
    parser.add_argument("--quick", action="store_true", help=quick)
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
        plot(results, tasks, PLOT)
        print(f"wrote docs/benchmarks.md and {PLOT.relative_to(ROOT)}")
    print(" | ".join(headlines))


if __name__ == "__main__":
    main()
