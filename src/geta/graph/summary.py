"""Plain-text summary of a `Plan`: groups, their sizes and tensors, quantizers, unknown ops.

It sits below `geta.plan` (``Plan.summary`` calls it), so it reads a plan through the small
protocols below instead of importing the class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import nn

from geta.graph.context import Analysis
from geta.graph.prune_group import PruneGroup
from geta.quant.quantizer import LearnableQuantizer

__all__ = ["plan_summary"]


class _Binding(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def quantizer(self) -> LearnableQuantizer: ...


class _Plan(Protocol):
    """The parts of a `geta.Plan` the summary reads."""

    @property
    def model(self) -> nn.Module: ...
    @property
    def groups(self) -> Sequence[PruneGroup]: ...
    @property
    def prunable_groups(self) -> Sequence[PruneGroup]: ...
    @property
    def num_prunable_units(self) -> int: ...
    @property
    def bindings(self) -> Sequence[_Binding]: ...
    @property
    def analysis(self) -> Analysis | None: ...


def _names(group_slices: tuple, limit: int = 6) -> str:
    names = list(dict.fromkeys(s.name for s in group_slices if s.is_param))
    more = f", +{len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def plan_summary(plan: _Plan) -> str:
    """What `Plan.summary` returns (and `geta inspect` prints)."""
    lines = [
        f"{type(plan.model).__name__}: {len(plan.groups)} groups, "
        f"{len(plan.prunable_groups)} prunable ({plan.num_prunable_units} units), "
        f"{len(plan.bindings)} quantizers"
    ]
    lines.append(f"{'id':>4}  {'size':>5}  {'state':<9} tensors / reason")
    for g in plan.groups:
        state = "prunable" if g.prunable else "frozen"
        lines.append(f"{g.id:>4}  {g.size:>5}  {state:<9} {_names(g.slices)}")
        if not g.prunable:
            lines.append(f"{'':>22}reason: {g.reason}")
    if plan.bindings:
        lines.append("quantizers:")
        for b in plan.bindings:
            kind = "signed" if b.quantizer.signed else "unsigned"
            lines.append(f"  {b.name:<40} {b.quantizer.bit_width:6.2f} bits ({kind})")
    unknown = plan.analysis.unknown_ops if plan.analysis is not None else {}
    if unknown:
        lines.append(
            "ops without a handler (their channels are frozen): "
            + ", ".join(f"{k} x{v}" for k, v in sorted(unknown.items()))
        )
    return "\n".join(lines)
