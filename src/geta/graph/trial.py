"""Trial conversion: which prune groups can really be removed from the user's code?

The graph sees sizes, not the Python that produced them: ``x.view(b, self.groups, c // self.groups)``
captures as constants, so removing a whole shuffle group would break the model's own reshape.
Before a group is declared prunable, `unconvertible_groups` removes one unit of every candidate
group from a *meta-device* copy (no weights are copied or computed) and runs the forward; if it
fails, bisection finds the groups responsible. Cost: one trial per removal pattern when all is
well, O(k log n) for k failing groups out of n.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from geta.graph.capture import run_model
from geta.plan import Plan

__all__ = ["unconvertible_groups"]


def _to_meta(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to("meta")
    if isinstance(x, tuple):
        return tuple(_to_meta(v) for v in x)
    if isinstance(x, list):
        return [_to_meta(v) for v in x]
    if isinstance(x, dict):
        return {k: _to_meta(v) for k, v in x.items()}
    return x


def _meta_memo(model: nn.Module) -> dict[int, object]:
    """A deepcopy memo that replaces every parameter and buffer by an empty meta tensor."""
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return memo


def _runs(plan: Plan, removed: dict[int, torch.Tensor], inputs: Any, meta: bool) -> bool:
    """Remove ``removed`` from a copy; on real tensors also compare with the zeroed model."""
    from geta.convert import apply_removal
    from geta.testing.invariance import max_relative_error

    memo = _meta_memo(plan.model) if meta else {}
    try:
        zeroed = copy.deepcopy(plan.model, memo)
        with torch.no_grad():
            zeroed.eval()
            if not meta:
                _zero(plan, removed, memo)
                ref = run_model(zeroed, inputs)  # then the same copy loses the units
            trial = zeroed
            apply_removal(plan, trial, removed, memo)
            trial.eval()
            out = run_model(trial, inputs)
            return meta or max_relative_error(out, ref) <= 1e-4
    except Exception:
        return False


def _zero(plan: Plan, removed: dict[int, torch.Tensor], memo: dict[int, object]) -> None:
    for g in plan.groups:
        units = removed.get(g.id)
        for s in g.slices if units is not None else ():
            t = memo[id(s.tensor)]
            assert isinstance(t, torch.Tensor)
            t.index_fill_(s.dim, s.index[units].reshape(-1), 0.0)


# Above this many parameters the trial only checks shapes, on the meta device.
NUMERIC_TRIAL_MAX_PARAMS = 20_000_000


def unconvertible_groups(plan: Plan, seed: int = 0) -> list[int]:
    """Ids of prunable groups whose removal breaks the model (its forward, or its function).

    Each candidate group loses a random half of its units, then all units but one; small
    models are checked numerically against the zeroed model, large or meta-device models by
    shapes only.
    """
    candidates = [g.id for g in sorted(plan.groups, key=lambda g: -g.size) if g.prunable and g.size > 1]
    if not candidates or plan.example_inputs is None:
        return []
    gen = torch.Generator().manual_seed(seed)
    sizes = {g.id: g.size for g in plan.groups if g.id in candidates}
    # two removal patterns: a random half, and all units but one (sizes hard-coded in the code
    # often survive the first by coincidence, never the second)
    patterns = [
        {i: torch.randperm(n, generator=gen)[: max(1, n // 2)].sort().values for i, n in sizes.items()},
        {i: torch.arange(1, n) for i, n in sizes.items()},
    ]
    params = list(plan.model.parameters())
    on_meta = any(p.is_meta for p in params)
    meta = on_meta or sum(p.numel() for p in params) > NUMERIC_TRIAL_MAX_PARAMS
    inputs = _to_meta(plan.example_inputs) if meta else plan.example_inputs

    def ok(ids: list[int]) -> bool:
        return all(_runs(plan, {i: p[i] for i in ids}, inputs, meta) for p in patterns)

    if ok(candidates):  # the common case: every candidate converts, two trials in all
        return []
    if not _runs(plan, {}, inputs, meta):  # the trial itself cannot run (no meta kernels, no deepcopy)
        warnings.warn(
            "geta.prepare: the trial conversion could not run on a copy of this model; groups are "
            "declared prunable without it (geta.convert still checks its result)",
            RuntimeWarning,
            stacklevel=3,
        )
        return []
    return _grow([], candidates, ok, tried=True)[1]


def _grow(
    accepted: list[int], chunk: list[int], ok: Callable[[list[int]], bool], *, tried: bool = False
) -> tuple[list[int], list[int]]:
    """Add as much of ``chunk`` to ``accepted`` as keeps ``ok``; returns (accepted, rejected).

    Bisection that carries the accepted set along, so a group that only fails together with
    another (two sizes tied by one reshape) is caught too. ``tried``: ``accepted + chunk`` is
    already known to fail.
    """
    if not chunk or (not tried and ok(accepted + chunk)):
        return accepted + chunk, []
    if len(chunk) == 1:
        return accepted, chunk
    mid = len(chunk) // 2
    accepted, bad_left = _grow(accepted, chunk[:mid], ok)
    accepted, bad_right = _grow(accepted, chunk[mid:], ok)
    return accepted, bad_left + bad_right
