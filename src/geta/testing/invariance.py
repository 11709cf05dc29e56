"""Helpers for zero-invariance checks: zero random groups, run a model, compare outputs.

The property geta relies on (docs/method.md §2.3): once every parameter slice of some group units
is exactly zero, physically removing those units does not change the model's outputs. A test
of your own model therefore reads:

>>> import geta, torch
>>> from geta.testing import zoo, zero_random_groups, model_outputs, max_relative_error
>>> model, inputs = zoo.build("resnet")  # doctest: +SKIP
>>> plan = geta.prepare(model, inputs, geta.Config())  # doctest: +SKIP
>>> zero_random_groups(plan, fraction=0.5, seed=0)  # doctest: +SKIP
>>> before = model_outputs(model, inputs)  # doctest: +SKIP
>>> after = model_outputs(geta.convert(model, plan), inputs)  # doctest: +SKIP
>>> assert max_relative_error(after, before) < 1e-5  # doctest: +SKIP

`max_relative_error` also works on plain structures:

>>> max_relative_error({"logits": torch.ones(2)}, {"logits": torch.full((2,), 2.0)})
0.5
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from geta.plan import Plan

__all__ = ["max_relative_error", "model_outputs", "zero_random_groups"]


def zero_random_groups(plan: Plan, fraction: float, seed: int) -> int:
    """Zero ``round(fraction * units)`` random units of the plan's prunable groups.

    ``units`` is the total number of units (channels, heads, ...) over
    ``plan.prunable_groups``. Units are drawn uniformly without replacement with a seeded
    ``torch.Generator``, but at least one unit of every group is always kept, so no channel
    space vanishes entirely; the number actually zeroed can therefore fall short of the
    request (e.g. ``fraction=1.0``). Returns that number.
    """
    if isinstance(fraction, bool) or not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"fraction={fraction!r} must be in [0, 1]")
    groups = plan.prunable_groups
    sizes = [g.size for g in groups]
    wanted = round(fraction * sum(sizes))
    # Unit k of the flat pool belongs to group owner[k], as that group's unit local[k].
    owner = [i for i, n in enumerate(sizes) for _ in range(n)]
    local = [j for n in sizes for j in range(n)]
    budget = [max(n - 1, 0) for n in sizes]  # how many more units of each group may go
    chosen: list[list[int]] = [[] for _ in groups]
    gen = torch.Generator().manual_seed(seed)
    count = 0
    for k in torch.randperm(len(owner), generator=gen).tolist():
        if count == wanted:
            break
        i = owner[k]
        if budget[i] > 0:
            budget[i] -= 1
            chosen[i].append(local[k])
            count += 1
    for group, units in zip(groups, chosen, strict=True):
        if units:
            group.zero_(torch.tensor(sorted(units), dtype=torch.long))
    return count


def _leaves(out: object, path: str, acc: dict[str, torch.Tensor]) -> None:
    """Collect the floating-point tensors of a nested output by their path (``"[0].logits"``)."""
    if isinstance(out, torch.Tensor):
        if out.is_floating_point() or out.is_complex():
            acc[path] = out
    elif isinstance(out, Mapping):  # dict, OrderedDict, HF ModelOutput (None fields omitted)
        for key, value in out.items():
            _leaves(value, f"{path}.{key}", acc)
    elif isinstance(out, (tuple, list)):
        for i, value in enumerate(out):
            _leaves(value, f"{path}[{i}]", acc)


def max_relative_error(a: object, b: object) -> float:
    """The largest ``max|a - b| / max(max|b|, 1e-12)`` over matching floating tensors.

    ``a`` and ``b`` may be tensors or tuples, lists, dicts and HF ``ModelOutput`` objects
    nesting them; ``b`` is the reference. Non-floating leaves (ids, masks) are ignored. A
    different structure or shape raises ``ValueError``; NaN anywhere gives ``inf``.
    """
    la: dict[str, torch.Tensor] = {}
    lb: dict[str, torch.Tensor] = {}
    _leaves(a, "", la)
    _leaves(b, "", lb)
    if la.keys() != lb.keys():
        raise ValueError(f"outputs differ in structure: {sorted(la)} vs {sorted(lb)}")
    if not la:
        raise ValueError("no floating-point tensors to compare in the outputs")
    worst = 0.0
    for key, ta in la.items():
        tb = lb[key]
        if ta.shape != tb.shape:
            raise ValueError(f"output{key}: shape {tuple(ta.shape)} vs {tuple(tb.shape)}")
        ta, tb = ta.detach().double().cpu(), tb.detach().double().cpu()
        if ta.numel() == 0:
            continue
        err = (ta - tb).abs().max().item() / max(tb.abs().max().item(), 1e-12)
        if math.isnan(err):
            return math.inf
        worst = max(worst, err)
    return worst


def model_outputs(model: nn.Module, example_inputs: object) -> object:
    """Run ``model`` on ``example_inputs`` under ``torch.no_grad()``.

    A dict is passed as keyword arguments (``model(**inputs)``), a tuple or list as positional
    arguments (``model(*inputs)``), anything else as the single argument.
    """
    with torch.no_grad():
        if isinstance(example_inputs, Mapping):
            return model(**example_inputs)
        if isinstance(example_inputs, (tuple, list)):
            return model(*example_inputs)
        return model(example_inputs)
