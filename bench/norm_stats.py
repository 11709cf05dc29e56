"""Accuracy at every compression-epoch end with stale and with re-estimated BatchNorm statistics.

    python -m bench.norm_stats [--tasks digits,mnist1d] [--seed 0] [--batches 20]

One QASSO run per task and configuration, as in `bench.compression` (its tasks, loop,
schedule: warm-up 5 %, projection 15 %, joint 30 % in 4 pruning periods, cool-down; bits in
[2, 8]; dense model trained here with the task's ``dense_epochs``). After every epoch the test
accuracy is measured twice: with the running statistics as training left them, and after
`geta.recalibrate_norms` on the first ``--batches`` training batches (a fixed order); the
statistics are then put back, so the training and the "stale" column are exactly those of a
run that never recalibrates (training normalises with batch statistics and never reads the
running ones). The converted model is measured both ways too. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from torch import nn

from bench.compression_tasks import TASKS, Task, accuracy, fit

CONFIGS = {"s=0.5 default budget": {"sparsity": 0.5}, "s=0.7 budget 0.06%": {"sparsity": 0.7, "budget": 6e-4}}


def _stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


def _recalibrate(model: nn.Module, x_train: torch.Tensor, batches: int) -> None:
    """`geta.recalibrate_norms` on the first ``batches`` batches of 64 of a fixed shuffle."""
    import geta

    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(200_000))
    inputs = (x_train[order[i : i + 64]] for i in range(0, len(x_train), 64))
    geta.recalibrate_norms(model, inputs, max_batches=batches)


def _recalibrated_accuracy(model: nn.Module, data: tuple[torch.Tensor, ...], batches: int) -> float:
    """Test accuracy after re-estimating the statistics; the old ones are put back afterwards."""
    saved = _stats(model)
    _recalibrate(model, data[0], batches)
    acc = accuracy(model, data[2], data[3])
    model.load_state_dict(saved, strict=False)
    return acc


def run(task: Task, spec: dict[str, object], seed: int, batches: int) -> dict[str, object]:
    import geta

    data = task.data()
    torch.manual_seed(seed)
    model = task.build()
    opt = torch.optim.SGD(model.parameters(), lr=task.dense_lr, momentum=0.9, weight_decay=1e-4)
    fit(model, opt, data, task.dense_epochs, seed=seed, lr=task.dense_lr)
    dense_acc = accuracy(model, data[2], data[3])
    config = geta.Config(target_sparsity=spec["sparsity"], weight_bits=(2, 8), act_bits=(2, 8),
                         target_bops=spec.get("budget"))  # fmt: skip
    plan = geta.prepare(model, (data[0][:64],), config)
    per_epoch, e = len(data[1]) // 64, task.epochs
    w, pr, j = round(0.05 * e), round(0.15 * e), round(0.3 * e)
    schedule = geta.Schedule.from_epochs(steps_per_epoch=per_epoch, warmup=w, projection=pr, joint=j,
                                         cooldown=e - w - pr - j, projection_periods=3,
                                         pruning_periods=4)  # fmt: skip
    opt = geta.QASSO(plan, lr=task.lr, lr_quant=1e-3, momentum=0.9, weight_decay=1e-4, schedule=schedule,
                     grad_clip=1.0)  # fmt: skip
    stages = ["warm-up"] * w + ["projection"] * pr + ["joint"] * j + ["cool-down"] * (e - w - pr - j)
    rows: list[tuple[int, str, float, float]] = []

    def on_epoch(epoch: int) -> None:
        stale = accuracy(model, data[2], data[3])
        rows.append((epoch + 1, stages[epoch], stale, _recalibrated_accuracy(model, data, batches)))

    fit(model, opt, data, e, seed=seed + 100, lr=task.lr, on_epoch=on_epoch)
    final_stale = accuracy(geta.convert(model, plan), data[2], data[3])
    _recalibrate(model, data[0], batches)
    final_recal = accuracy(geta.convert(model, plan), data[2], data[3])
    return {"dense": dense_acc, "rows": rows, "final": (final_stale, final_recal)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="digits,mnist1d")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batches", type=int, default=20)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for name in args.tasks.split(","):
        for cname in args.configs.split(","):
            out = run(TASKS[name], CONFIGS[cname], args.seed, args.batches)
            print(f"\n### {name}, {cname}, seed {args.seed}: dense {100 * out['dense']:.2f} %\n")
            print("| epoch | stage | stale statistics | re-estimated |\n|---|---|---|---|")
            for epoch, stage, stale, recal in out["rows"]:
                print(f"| {epoch} | {stage} | {100 * stale:.2f} | {100 * recal:.2f} |")
            fs, fr = out["final"]
            print(f"| converted | | {100 * fs:.2f} | {100 * fr:.2f} |", flush=True)


if __name__ == "__main__":
    main()
