"""`check_finite`: one stacked test for all gradients, the slow path only to name the culprit."""

from __future__ import annotations

import pytest
import torch

from geta.optim.finite import NonFiniteError, check_finite


def grads() -> list[torch.Tensor]:
    """Mixed shapes and dtypes, as a prepared model's weights and quantizer scalars are."""
    return [
        torch.randn(4, 3),
        torch.randn(5, dtype=torch.bfloat16),
        torch.randn((), dtype=torch.float64),
        torch.tensor(0.5),
        torch.tensor(-2.0, dtype=torch.bfloat16),
    ]


def test_finite_gradients_of_mixed_dtypes_pass() -> None:
    check_finite(grads(), 3, str)
    big = torch.full((4,), 60000.0, dtype=torch.float16)  # its sum overflows, its elements do not
    check_finite([*grads(), big], 3, str)


@pytest.mark.parametrize("where", [0, 1, 2, 4])
@pytest.mark.parametrize("bad", [float("nan"), float("-inf")])
def test_a_non_finite_element_is_named(where: int, bad: float) -> None:
    gs = grads()
    gs[where].view(-1)[-1] = bad
    with pytest.raises(NonFiniteError, match=f"step 7: the gradient of 'g{where}' holds"):
        check_finite(gs, 7, lambda i: f"g{i}")
