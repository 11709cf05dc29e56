"""What the two phases of a ``geta compress`` job train with, built from its options.

- the dense phase: `dense_optimizer` (SGD with Nesterov momentum, Adam or AdamW, as the
  recipe's training says);
- the compression phase: `build_compression` prepares the model with the run's `geta.Config`
  and builds its `geta.QASSO`; `check_budget` does it once on a throwaway copy first, so that
  an unreachable ``--target-bops`` fails in seconds, before the dense phase; `prepared_note`
  says what was prepared; `teacher` is the frozen dense model that distillation learns from;
  `qasso_lr` is the learning rate over the compression steps.

`geta.cli.job.CompressJob` calls these in order; none of them prints.
"""

from __future__ import annotations

import copy
import random
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import geta
from geta.cli.checkpoint import rng_state, set_rng_state
from geta.cli.errors import CliError
from geta.cli.options import CompressOptions
from geta.cli.quiet import quiet_capture
from geta.optim.budget import InfeasibleBudget
from geta.recipes import DataBundle, EpochStats, cosine_lr

__all__ = [
    "CALIBRATION_SAMPLES",
    "build_compression",
    "check_budget",
    "dense_optimizer",
    "prepared_note",
    "qasso_lr",
    "seed_everything",
    "teacher",
]

CALIBRATION_SAMPLES = 64  # training samples that calibrate the activation ranges in `prepare`


def seed_everything(seed: int) -> None:
    """Seed torch, Python's `random` and (when installed) numpy."""
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


def dense_optimizer(options: CompressOptions, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The optimizer of the dense phase: the recipe's ``sgd`` (Nesterov), ``adam`` or ``adamw``."""
    params, wd, name = model.parameters(), options.weight_decay, options.training().optimizer
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=options.momentum, weight_decay=wd, nesterov=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def build_compression(
    options: CompressOptions, data: DataBundle, device: torch.device, model: nn.Module
) -> tuple[geta.Plan, geta.QASSO]:
    """Prepare ``model`` with the run's `geta.Config` and build its QASSO optimizer."""
    example = tuple(t.to(device) for t in data.example(CALIBRATION_SAMPLES))
    plan = geta.prepare(model, example, geta.Config(**options.arguments("config")))
    steps = data.num_batches(options.batch_size)
    schedule = geta.Schedule.from_epochs(steps_per_epoch=steps, **options.arguments("schedule"))
    opt = geta.QASSO(plan, schedule=schedule, **options.arguments("qasso"))
    return plan, opt


def check_budget(options: CompressOptions, data: DataBundle, device: torch.device, model: nn.Module) -> None:
    """Build the compression on a throwaway copy of ``model``: is ``--target-bops`` reachable?

    The random states are put back afterwards, so the run is the same as without the check.
    """
    o, saved = options, rng_state()
    try:
        with quiet_capture(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the real `prepare` warns later, once
            build_compression(o, data, device, copy.deepcopy(model))
    except InfeasibleBudget as exc:
        widths = "every layer at its --min-keep width" if o.sparsity is None else f"--sparsity {o.sparsity:g}"
        fix = "lower --min-keep" if o.sparsity is None else "raise --sparsity (or leave it out)"
        raise CliError(
            f"--target-bops {o.target_bops:g} cannot be met: with the lower ends of --weight-bits "
            f"{o.weight_bits[0]} and --act-bits {o.act_bits[0] if o.act_bits else 'none'} and "
            f"{widths} the model costs {exc.floor:.6g} of the dense BOPs; pass "
            f"--target-bops {exc.floor:.6g} or more, lower those lower ends or {fix}"
        ) from None
    finally:
        set_rng_state(saved)


def prepared_note(plan: geta.Plan, opt: geta.QASSO) -> str:
    """One line on what `build_compression` prepared: groups, units to remove, quantizers."""
    if plan.config.chooses_widths:
        budget = getattr(opt.bits, "relative_budget", None)
        least = f", at least {opt.target_units} removed" if opt.target_units else ""
        under = "" if budget is None else f" of {100 * budget:.3g} % of the dense BOPs"
        units = f"{plan.num_prunable_units} units, widths chosen with the bits under the budget"
        units += under + least
    else:
        units = f"{plan.num_prunable_units} units, {opt.target_units} to remove"
    return (
        f"prepared: {len(plan.prunable_groups)} of {len(plan.groups)} groups prunable "
        f"({units}), {len(plan.quantizers)} quantizers"
    )


def teacher(model: nn.Module, dense_state: dict[str, Any]) -> nn.Module:
    """A frozen copy of ``model`` with the dense weights (eval mode) that teaches the compressed one."""
    out = copy.deepcopy(model)
    out.load_state_dict(dense_state)
    return out.eval().requires_grad_(False)


def qasso_lr(options: CompressOptions, opt: geta.QASSO) -> Callable[[EpochStats], float]:
    """Constant lr until the cool-down (the forget rule reads it), then cosine decay to 0."""
    _, lr = options.learning_rates()
    sch = opt.schedule
    return lambda s: (
        lr
        if opt.step_count < sch.cooldown_start
        else cosine_lr(opt.step_count - sch.cooldown_start, sch.cooldown, lr)
    )
