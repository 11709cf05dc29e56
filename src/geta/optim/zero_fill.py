"""Keeping the committed units at zero after every step (docs/method.md §3.2).

Once a pruning period commits its selected units, their rows and columns must stay exactly zero:
momentum and weight decay would otherwise move them again. QASSO writes the zeros after each
step. Written slice by slice that is one ``index_fill_`` per (tensor, dim) a committed unit
touches — 36 calls per step on the benchmark CNN, a sixth of the optimizer step's time. So:

- a small tensor (at most `MASKED_ELEMENTS` elements) gets a 0/1 mask of its own shape, the
  product of all its slices' zeros, and all small tensors are multiplied by their masks in one
  ``torch._foreach_mul_``. The mask costs as much memory as the tensor, which is why only small
  tensors (biases, norms, the convolutions of small networks) take this path. A multiplied
  negative value becomes -0.0 where ``index_fill_`` would write +0.0; both are zero;
- a large or sharded (DTensor) tensor keeps ``index_fill_`` on its local data.

>>> w = torch.ones(3, 2)
>>> zeros = CommittedZeros([(w, 0, torch.tensor([1])), (w, 1, torch.tensor([0]))])
>>> zeros.apply(); w
tensor([[0., 1.],
        [0., 0.],
        [0., 1.]])
"""

from __future__ import annotations

import torch
from torch import Tensor

from geta.optim.sharding import is_sharded, local_data

__all__ = ["MASKED_ELEMENTS", "CommittedZeros"]

MASKED_ELEMENTS = 1 << 16  # a tensor up to this size is zeroed through a mask (256 KiB in float32)


class CommittedZeros:
    """The zeros of the committed units, written back by `apply` (after every QASSO step).

    ``positions`` are ``(tensor, dim, indices)`` as `geta.optim.units.UnitLayout.zero_positions`
    gives them: the units' slices along ``dim``.
    """

    def __init__(self, positions: list[tuple[Tensor, int, Tensor]]) -> None:
        masks: dict[int, tuple[Tensor, Tensor]] = {}  # id(tensor) -> (tensor, 0/1 mask)
        self.indexed: list[tuple[Tensor, int, Tensor]] = []
        for tensor, dim, pos in positions:
            if is_sharded(tensor) or tensor.numel() > MASKED_ELEMENTS:
                self.indexed.append((tensor, dim, pos))
                continue
            if id(tensor) not in masks:
                masks[id(tensor)] = (tensor, torch.ones_like(tensor))
            masks[id(tensor)][1].index_fill_(dim, pos, 0.0)
        self.tensors = [t for t, _ in masks.values()]
        self.masks = [m for _, m in masks.values()]

    def __len__(self) -> int:
        """How many (tensor, dim) slices or masked tensors it writes."""
        return len(self.tensors) + len(self.indexed)

    @torch.no_grad()
    def apply(self) -> None:
        """Write the zeros: one fused multiply for the small tensors, an index fill for the rest."""
        if self.tensors:
            torch._foreach_mul_(self.tensors, self.masks)
        for tensor, dim, pos in self.indexed:
            local_data(tensor).index_fill_(dim, pos, 0.0)
