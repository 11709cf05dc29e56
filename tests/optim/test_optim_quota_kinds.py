"""`uniform_quotas(..., kinds=...)`: groups of one kind (the same group of every layer) get one quota."""

from __future__ import annotations

import pytest
import torch

from geta.optim.quota import group_floors, uniform_quotas


@pytest.mark.parametrize("target", range(0, 160, 7))
@pytest.mark.parametrize("divisible", [1, 4])
def test_kinds_get_equal_quotas_close_to_the_target(target: int, divisible: int) -> None:
    sizes = torch.tensor([2, 48, 2, 48, 2, 48, 40])  # 3 layers (kv heads, MLP) + a lone group
    kinds = torch.tensor([0, 1, 0, 1, 0, 1, 2])
    floors = group_floors(sizes, fraction=0.1, count=1, divisible=divisible)
    quota = uniform_quotas(sizes, target, floors, divisible=divisible, kinds=kinds)
    for kind in kinds.unique():
        assert len(set(quota[kinds == kind].tolist())) == 1
    assert bool((quota <= sizes - floors).all())
    free = uniform_quotas(sizes, target, floors, divisible=divisible)  # no kinds: the plain rule
    assert int(quota.sum()) <= int(free.sum())
    assert int(free.sum()) - int(quota.sum()) < 3 * max(divisible, 2)  # short by < one increment per member


def test_no_kinds_and_singleton_kinds_are_the_same_rule() -> None:
    sizes = torch.tensor([2, 48, 2, 48, 2, 48])
    floors = group_floors(sizes, fraction=0.1, count=1, divisible=1)
    alone = uniform_quotas(sizes, 53, floors, divisible=1, kinds=torch.arange(6))
    assert torch.equal(alone, uniform_quotas(sizes, 53, floors, divisible=1))
    assert alone.tolist() == [1, 17, 1, 17, 0, 17]  # the rounding that leaves layers uneven
    kinds = torch.tensor([0, 1, 0, 1, 0, 1])
    assert uniform_quotas(sizes, 53, floors, divisible=1, kinds=kinds).tolist() == [0, 17, 0, 17, 0, 17]


def test_a_kind_of_unequal_groups_is_refused() -> None:
    sizes = torch.tensor([4, 6])
    with pytest.raises(ValueError, match="share a kind"):
        uniform_quotas(
            sizes, 4, torch.ones(2, dtype=torch.long), divisible=1, kinds=torch.zeros(2, dtype=torch.long)
        )
