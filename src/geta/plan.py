"""`Plan`: the quantization-aware dependency graph (QADG) of one model.

It holds the prune groups (channel spaces with their parameter slices) and the quantizers
bound to the layers they serve. Everything is referenced by object identity; names are kept
for display and for the user-facing ``quantizers`` mapping only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from geta.config import Config
from geta.graph.prune_group import PruneGroup
from geta.graph.summary import plan_summary

if TYPE_CHECKING:
    from geta.graph.analysis import Analysis
    from geta.graph.ir import Graph
    from geta.graph.space import Space
    from geta.quant.quantizer import LearnableQuantizer
    from geta.reporting.count import LayerCost
    from geta.reporting.model import DenseCounts

__all__ = ["Plan", "QuantBinding", "QuantTarget"]


class QuantTarget(enum.Enum):
    WEIGHT = "weight"  # an attached branch: fake-quantizes a layer's weight
    INPUT = "input"  # an inserted branch: fake-quantizes a layer's input activation


@dataclass(frozen=True, eq=False)
class QuantBinding:
    """One quantizer and the layer it serves (docs/method.md §2.4)."""

    name: str  # 'conv1.weight' / 'conv1.input' (display and the `quantizers` mapping)
    quantizer: LearnableQuantizer
    module: nn.Module
    target: QuantTarget
    tensor: torch.Tensor | None  # the quantized parameter for WEIGHT bindings, None for INPUT


@dataclass(eq=False)
class Plan:
    """The result of `geta.prepare`: prune groups plus quantizer bindings for one model."""

    model: nn.Module
    config: Config
    graph: Graph
    groups: list[PruneGroup]
    bindings: list[QuantBinding] = field(default_factory=list)
    analysis: Analysis | None = field(default=None, repr=False)  # labels and module rules (convert)
    group_spaces: dict[int, Space] = field(default_factory=dict, repr=False)  # group id -> space
    example_inputs: object = field(default=None, repr=False)
    dense: DenseCounts | None = field(default=None, repr=False)  # the original model's MACs/params
    costs: list[LayerCost] | None = field(default=None, repr=False)  # cost terms kept by geta.shard

    def __post_init__(self) -> None:
        self._weight_quantizer = {
            id(b.tensor): b.quantizer for b in self.bindings if b.target is QuantTarget.WEIGHT
        }

    @property
    def quantizers(self) -> dict[str, LearnableQuantizer]:
        """Every quantizer by display name: ``'conv1.weight'`` / ``'conv1.input'``."""
        return {b.name: b.quantizer for b in self.bindings}

    @property
    def prunable_groups(self) -> list[PruneGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def num_prunable_units(self) -> int:
        """Total number of removable units (channels, heads, ...) over the prunable groups."""
        return sum(g.size for g in self.groups if g.prunable)

    def group_kinds(self) -> list[int]:
        """Per prunable group, an id shared by the groups of one kind (the same group of another layer).

        Two groups are of one kind when they have the same size and slice tensors of the same
        shapes along the same dims: every decoder layer's MLP units, or its kv heads with their
        query heads. ``Config(uniform_layers=True)`` keeps the same count in every group of a kind.
        """
        ids: dict[tuple[object, ...], int] = {}
        kinds = []
        for g in self.prunable_groups:
            slices = sorted((tuple(s.tensor.shape), s.dim, s.index.numel()) for s in g.slices)
            kinds.append(ids.setdefault((g.size, tuple(slices)), len(ids)))
        return kinds

    def weight_quantizer(self, tensor: torch.Tensor) -> LearnableQuantizer | None:
        """The weight quantizer bound to ``tensor`` (by identity), or None."""
        return self._weight_quantizer.get(id(tensor))

    def group_sparsity(self) -> float:
        """Fraction of the prunable units that are exactly zero now."""
        total = self.num_prunable_units
        if total == 0:
            return 0.0
        zero = sum(int(g.is_zero().sum()) for g in self.groups if g.prunable)
        return zero / total

    def summary(self) -> str:
        """A plain-text table of the groups and quantizers (what `geta inspect` prints)."""
        return plan_summary(self)
