"""`PruneGroup` and `ParamSlice`: the removable structures found by the dependency analysis.

A prune group is one *channel space* (docs/method.md §2.3): a set of `size` interchangeable units
(channels, attention heads, hidden units) together with every tensor slice that lives on them.
Unit ``j`` of a group owns, in each slice, the positions ``slice.index[j]`` along ``slice.dim``.
Zeroing those positions in every slice of the group and then physically removing them leaves
the model's function unchanged (the zero-invariant property); `geta.convert` does the removal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["ParamSlice", "PruneGroup"]


@dataclass(frozen=True, eq=False)
class ParamSlice:
    """The positions of one parameter (or buffer) that live on a group's units.

    ``index`` has shape (size, m): unit ``j`` owns positions ``index[j, :]`` along ``dim``
    (m = 1 for a plain channel; m = head_dim for an attention head; m = H*W for a channel
    flattened into a linear layer).
    """

    tensor: torch.Tensor  # nn.Parameter or buffer, held by identity
    name: str  # qualified name, for display only
    dim: int
    index: torch.Tensor  # int64 (size, m)
    is_param: bool = True

    def rows(self, tensor: torch.Tensor | None = None) -> torch.Tensor:
        """The group's view of ``tensor`` (default: the sliced tensor): shape (size, m * rest).

        Row ``j`` holds every element of unit ``j`` in this slice; the same view is used for
        saliency, forgetting and zero checks (docs/method.md defect 4: one row view everywhere).
        """
        t = self.tensor if tensor is None else tensor
        moved = t.movedim(self.dim, 0)  # (n_dim, *rest)
        picked = moved[self.index.reshape(-1)]  # (size*m, *rest)
        return picked.reshape(self.index.shape[0], -1)


@dataclass(eq=False)
class PruneGroup:
    """One channel space: `size` removable units and the tensor slices that live on them."""

    id: int
    size: int
    slices: tuple[ParamSlice, ...]
    prunable: bool = True
    reason: str | None = None  # why the group is not prunable (None when it is)
    unit_name: str = "channel"  # "channel", "head", ... (display only)
    attrs: dict[str, object] = field(default_factory=dict, repr=False)

    @property
    def params(self) -> tuple[torch.Tensor, ...]:
        """The distinct tensors of this group, in slice order."""
        seen: dict[int, torch.Tensor] = {}
        for s in self.slices:
            seen.setdefault(id(s.tensor), s.tensor)
        return tuple(seen.values())

    @torch.no_grad()
    def unit_norms(self) -> torch.Tensor:
        """L2 norm of each unit over all its parameter slices: shape (size,)."""
        sq = torch.zeros(self.size, dtype=torch.float64)
        for s in self.slices:
            if s.is_param:
                sq += s.rows().detach().double().pow(2).sum(1).cpu()
        return sq.sqrt()

    @torch.no_grad()
    def is_zero(self) -> torch.Tensor:
        """Bool tensor (size,): True for each unit whose parameter slices are all exactly zero."""
        out = torch.ones(self.size, dtype=torch.bool)
        for s in self.slices:
            if s.is_param:
                out &= (s.rows().detach() == 0).all(1).cpu()
        return out

    @torch.no_grad()
    def zero_(self, units: torch.Tensor) -> None:
        """Set every parameter slice of the given units (int64 indices) to exactly zero."""
        units = torch.as_tensor(units, dtype=torch.long)
        for s in self.slices:
            if s.is_param and units.numel():
                pos = s.index[units].reshape(-1).to(s.tensor.device)
                s.tensor.data.index_fill_(s.dim, pos, 0.0)

    def __repr__(self) -> str:
        state = "prunable" if self.prunable else f"frozen: {self.reason}"
        names = ", ".join(sorted({s.name for s in self.slices}))
        return f"PruneGroup(id={self.id}, size={self.size} {self.unit_name}s, {state}, [{names}])"
