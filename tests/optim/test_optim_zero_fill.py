"""CommittedZeros writes the same zeros as one index_fill_ per slice (the obvious reference)."""

from __future__ import annotations

import pytest
import torch

from geta.optim.zero_fill import MASKED_ELEMENTS, CommittedZeros


def reference(positions: list[tuple[torch.Tensor, int, torch.Tensor]]) -> None:
    for tensor, dim, pos in positions:
        tensor.index_fill_(dim, pos, 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_and_indexed_tensors_get_the_reference_zeros(dtype: torch.dtype, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 8, 3, 3), (32,), (300, 300), (8, 4)]  # (300, 300) is above MASKED_ELEMENTS
    tensors = [torch.randn(s, generator=gen).to(device, dtype) for s in shapes]
    positions = []
    for t in tensors:
        for dim in range(min(t.dim(), 2)):
            pos = torch.randperm(t.shape[dim], generator=gen)[: t.shape[dim] // 3]
            positions.append((t, dim, pos.to(device)))
    twins = {id(t): t.clone() for t in tensors}
    zeros = CommittedZeros(positions)
    assert len(zeros.indexed) == 2 and all(t.numel() > MASKED_ELEMENTS for t, _, _ in zeros.indexed)
    zeros.apply()
    reference([(twins[id(t)], d, p) for t, d, p in positions])
    for t in tensors:
        want = twins[id(t)]
        assert torch.equal(t == 0, want == 0)  # the same zeros (−0.0 counts as zero)
        kept, bits = want != 0, torch.int16 if dtype == torch.bfloat16 else torch.int32
        assert torch.equal(t[kept].view(bits), want[kept].view(bits))  # the rest bit for bit


def test_moved_weights_are_zeroed_again_and_nothing_else_changes() -> None:
    w = torch.ones(4, 3)
    zeros = CommittedZeros([(w, 0, torch.tensor([0, 2]))])
    w.add_(0.5)  # a step moved every entry
    zeros.apply()
    assert w[[0, 2]].eq(0).all() and w[[1, 3]].eq(1.5).all()
    assert len(CommittedZeros([])) == 0
