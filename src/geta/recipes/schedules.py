"""Learning-rate schedules for `geta.QASSO` that know its two parameter groups and four stages.

A torch LR scheduler multiplies the base lr of *every* parameter group by its factor. QASSO has
two groups: 0, the model's weights (``lr``), and 1, the quantizer scalars (``lr_quant``).
transformers' ``get_linear_schedule_with_warmup(opt, w, T)`` is a ``LambdaLR`` with one factor
for all groups, so ``lr_quant`` is scaled exactly like ``lr``: 0 at the first step, the full
value after ``w`` steps, back to 0 at step ``T``. The ratio lr_quant / lr is kept, but the
quantizers stop learning at the end and do not move in the first step.

The weights' lr also reaches QASSO's forgetting: with ``forget="descent"`` (the paper's rate)
the shrink rate of the selected rows is bounded by a multiple of lr, so an lr decayed during
the joint stage forgets more slowly and leaves more to the commit's hard cut; the default
``forget="linear"`` shrinks the rows by 1 / (steps left in the period) whatever the lr.

`qasso_scheduler` is the schedule ``geta compress`` follows: a linear warm-up over QASSO's
warm-up stage, the full lr through projection and joint (the pruning periods see a constant
lr), a cosine decay to 0 over the cool-down -- for the weights only; ``lr_quant`` stays at the
value it was given (``quant_follows=True`` scales it like the weights instead).

>>> import torch, geta
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> plan = geta.prepare(model, (torch.randn(2, 4),), geta.Config(target_sparsity=0.5, weight_bits=(4, 8)))
>>> opt = geta.QASSO(plan, lr=0.1, lr_quant=1e-3, schedule=geta.Schedule(warmup=2, joint=4, cooldown=2))
>>> sched = qasso_scheduler(opt)
>>> lrs = []
>>> for _ in range(8):
...     lrs.append([round(g["lr"], 4) for g in opt.param_groups])
...     loss = model(torch.randn(8, 4)).pow(2).mean()
...     opt.zero_grad(); loss.backward(); opt.step(); sched.step()
>>> [w for w, _ in lrs], {q for _, q in lrs}  # weights: warm-up, constant, cosine; lr_quant kept
([0.05, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.05], {0.001})
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from geta.optim.schedule import Schedule

__all__ = ["stage_lr_factor", "qasso_scheduler"]


def stage_lr_factor(schedule: Schedule, step: int, *, warmup_steps: int | None = None) -> float:
    """The weights' lr factor at optimizer step ``step`` (0-based) of a QASSO ``schedule``.

    1) linear warm-up over ``warmup_steps`` (default: the warm-up stage): (step + 1) / warmup;
    2) 1 through projection and joint;
    3) cosine from 1 to 0 over the cool-down (0 after it).

    >>> s = Schedule(warmup=2, joint=2, cooldown=4)
    >>> [round(stage_lr_factor(s, i), 3) for i in range(9)]
    [0.5, 1.0, 1.0, 1.0, 1.0, 0.854, 0.5, 0.146, 0.0]
    """
    warm = schedule.warmup if warmup_steps is None else warmup_steps
    if step < warm:  # 1) linear warm-up
        return (step + 1) / warm
    start = schedule.cooldown_start
    if step < start or schedule.cooldown == 0:  # 2) constant until the cool-down
        return 1.0
    t = min((step - start) / schedule.cooldown, 1.0)  # 3) cosine decay over the cool-down
    return 0.5 * (1.0 + math.cos(math.pi * t))


def _constant(step: int) -> float:
    return 1.0


def qasso_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_steps: int | None = None,
    quant_follows: bool = False,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` for a `geta.QASSO`: `stage_lr_factor` on the weights, lr_quant kept.

    Step it once after every ``optimizer.step()`` (transformers' ``Trainer`` does). ``quant_follows``
    scales the quantizer group by the same factor as the weights (what a single-factor scheduler
    such as ``get_linear_schedule_with_warmup`` does).
    """
    schedule: Schedule | None = getattr(optimizer, "schedule", None)
    if not isinstance(schedule, Schedule):
        raise TypeError(f"qasso_scheduler needs a geta.QASSO optimizer, got {type(optimizer).__name__}")

    def weights(step: int) -> float:
        return stage_lr_factor(schedule, step, warmup_steps=warmup_steps)

    others = weights if quant_follows else _constant
    factors: list[Callable[[int], float]] = [weights] + [others] * (len(optimizer.param_groups) - 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
