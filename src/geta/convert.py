"""`convert`: physically remove the zero units of a prepared model.

Walks the groups once: the zero units of each prunable group (all but one if every unit is
zero) give, per tensor dimension, the positions to drop; every tensor is sliced once; then the
module attributes recorded by the op handlers (``out_features``, ``in_channels``, ``groups``,
``num_groups``, ...) are set to the surviving sizes. The result is a deep copy of the user's
model, of the user's own classes, with the quantizers kept at their learned state, carrying
the original model's counts (``Plan.dense``) for `geta.report`.
"""

from __future__ import annotations

import copy
import warnings
from collections import defaultdict

import torch
from torch import nn

from geta.errors import ConvertError
from geta.graph.prune_group import PruneGroup
from geta.graph.space import Space
from geta.ops.modules import apply_module_fixers
from geta.plan import Plan
from geta.reporting.model import DENSE_COUNTS_ATTR
from geta.savehook import guard_save_pretrained

__all__ = ["convert", "removed_units", "apply_removal"]


def removed_units(plan: Plan) -> dict[int, torch.Tensor]:
    """Group id -> int64 indices of the units `convert` removes (zero units, at least one kept).

    Under ``Config.uniform_layers`` groups of one kind keep the same count (`_equalize`).
    """
    out: dict[int, torch.Tensor] = {}
    for g in plan.groups:
        if not g.prunable:
            continue
        zero = g.is_zero()
        if bool(zero.all()):
            zero[0] = False  # a layer keeps at least one channel
        units = zero.nonzero().flatten()
        if units.numel():
            out[g.id] = units
    if plan.config.uniform_layers:
        out = _equalize(plan, out)
    return out


def _equalize(plan: Plan, removed: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Remove from every group of a kind only as many units as the group of that kind losing fewest.

    The units kept back are zero: keeping them leaves the function unchanged (their consumers'
    slices are zero), so per-layer counts that differ by quota rounding become one count.
    """
    kinds: dict[int, list[PruneGroup]] = defaultdict(list)
    for g, kind in zip(plan.prunable_groups, plan.group_kinds()):
        kinds[kind].append(g)
    out: dict[int, torch.Tensor] = {}
    for members in kinds.values():
        fewest = min(int(removed[g.id].numel()) if g.id in removed else 0 for g in members)
        for g in members:
            if fewest and g.id in removed:
                out[g.id] = removed[g.id][:fewest]
    return out


def convert(model: nn.Module, plan: Plan, *, verify: bool = True) -> nn.Module:
    """Return a copy of ``model`` with every zero unit of ``plan`` physically removed.

    The copy computes the same function as ``model`` (up to float rounding). With ``verify``
    both are run on the plan's example inputs; a converted model that fails to run raises
    `ConvertError` (a module class whose size attributes geta does not know), and a numeric
    mismatch warns.

    >>> import torch, geta
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> plan = geta.prepare(model, (torch.randn(2, 4),))
    >>> plan.groups[0].zero_(torch.arange(4))
    >>> small = geta.convert(model, plan)
    >>> small[0].out_features, small[2].in_features
    (4, 4)
    """
    if plan.model is not model:
        raise ConvertError("convert(model, plan): plan was prepared for a different model object")
    removed = removed_units(plan)
    memo: dict[int, object] = {}
    try:
        new = copy.deepcopy(model, memo)
    except Exception as exc:
        raise ConvertError(
            f"convert works on a copy of the model, but copy.deepcopy({type(model).__name__}) failed "
            f"({type(exc).__name__}: {exc}); keep non-copyable objects out of the module's attributes"
        ) from exc
    apply_removal(plan, new, removed, memo)
    guard_save_pretrained(new)  # HF's save_pretrained would write the pruned tensors under the old config
    if plan.dense is not None:  # the original model's counts: the reference of geta.report(new, ...)
        setattr(new, DENSE_COUNTS_ATTR, plan.dense)
    if verify and plan.example_inputs is not None:
        _verify(model, new, plan)
    return new


def apply_removal(
    plan: Plan, copy_: nn.Module, removed: dict[int, torch.Tensor], memo: dict[int, object]
) -> None:
    """Remove ``removed`` units (group id -> units) from ``copy_``, a deep copy made with ``memo``."""
    _slice_tensors(plan, removed, memo)
    _fix_attributes(plan, removed, memo)
    apply_module_fixers(copy_)


def _slice_tensors(plan: Plan, removed: dict[int, torch.Tensor], memo: dict[int, object]) -> None:
    drop: dict[tuple[int, int], list[torch.Tensor]] = defaultdict(list)
    tensors: dict[int, torch.Tensor] = {}
    for g in plan.groups:
        units = removed.get(g.id)
        if units is None:
            continue
        for s in g.slices:
            drop[(id(s.tensor), s.dim)].append(s.index[units].reshape(-1))
            tensors[id(s.tensor)] = s.tensor
    for (tid, dim), parts in drop.items():
        target = memo.get(tid)
        if not isinstance(target, torch.Tensor):
            raise ConvertError(
                f"internal: a sliced tensor of shape {tuple(tensors[tid].shape)} was not copied"
            )
        keep = torch.ones(target.shape[dim], dtype=torch.bool)
        keep[torch.cat(parts)] = False
        index = keep.nonzero().flatten().to(target.device)
        with torch.no_grad():
            target.data = target.data.index_select(dim, index).contiguous()
        target.grad = None


def _fix_attributes(plan: Plan, removed: dict[int, torch.Tensor], memo: dict[int, object]) -> None:
    if plan.analysis is None:
        return
    by_space: dict[Space, torch.Tensor] = {plan.group_spaces[gid]: u for gid, u in removed.items()}
    alg = plan.analysis.algebra
    for rule in plan.analysis.attr_rules:
        module = memo.get(id(rule.module), rule.module)
        value = alg.kept(rule.expr, by_space) // rule.scale
        current = getattr(module, rule.attr, None)
        if isinstance(current, int) and not isinstance(current, bool):
            setattr(module, rule.attr, value)


def _verify(model: nn.Module, new: nn.Module, plan: Plan) -> None:
    from geta.graph.capture import run_model
    from geta.testing.invariance import max_relative_error

    modes = {m: m.training for m in model.modules()}
    model.eval()
    new.eval()
    try:
        with torch.no_grad():
            ref = run_model(model, plan.example_inputs)
            try:
                out = run_model(new, plan.example_inputs)
            except Exception as exc:
                raise ConvertError(
                    f"the converted model fails its forward ({type(exc).__name__}: {exc}); a module "
                    "probably keeps a size in an attribute geta does not know: register a "
                    "geta.ops.modules.ModuleSpec with a fixer for its class "
                    "or exclude its groups with Config(exclude_prune=...)"
                ) from exc
        err = max_relative_error(out, ref)
        if err > 1e-3:
            warnings.warn(
                f"geta.convert: converted model differs from the zeroed model (relative error {err:.2e})",
                RuntimeWarning,
                stacklevel=3,
            )
    finally:
        for m, mode in modes.items():
            m.train(mode)
        for m_new, m_old in zip(new.modules(), model.modules()):
            m_new.train(m_old.training)
