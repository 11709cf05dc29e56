"""`NonFiniteError` and the cheap finiteness check QASSO runs on every step.

A NaN or inf gradient must stop training with a message that names the step and the
parameter (docs/method.md §3, issue item 7): continuing would spread NaN into every weight and
quantizer, and silently skipping the step would hide the problem.

The check costs one reduction per tensor of one or more dimensions and one host sync per
step: the sums and the 0-dim gradients are stacked and tested together; only when that test
fails are the tensors inspected one by one (a sum can overflow to inf with finite elements,
so the slow path decides).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from geta.errors import GetaError

__all__ = ["NonFiniteError", "check_finite", "check_loss"]


class NonFiniteError(GetaError, FloatingPointError):
    """A loss or gradient holds NaN or inf; the message names the step and the parameter."""


@torch.no_grad()
def check_finite(grads: Sequence[Tensor], step: int, name_of: Callable[[int], str]) -> None:
    """Raise `NonFiniteError` if any of ``grads`` holds NaN/inf; ``name_of(i)`` names grads[i]."""
    if not grads:
        return
    # 0-dim gradients (a quantizer's scalars: most of a model's tensors) are stacked, not summed
    sums = [g.sum() for g in grads if g.dim() != 0]
    sums.extend(g for g in grads if g.dim() == 0)
    if _all_finite(sums, grads[0].device):
        return
    for i, g in enumerate(grads):
        bad = ~torch.isfinite(g)
        if bool(bad.any()):
            kind = "NaN" if bool(torch.isnan(g).any()) else "inf"
            raise NonFiniteError(
                f"QASSO step {step}: the gradient of {name_of(i)!r} holds {kind} "
                f"({int(bad.sum())} of {g.numel()} elements); lower the learning rate, check the "
                "loss and inputs, or use a GradScaler (it skips such steps) -- the step was not taken"
            )


def _all_finite(values: list[Tensor], device: torch.device) -> bool:
    """Whether every one of ``values`` (sums and 0-dim gradients) is finite: one stack, one sync.

    ``torch.stack`` widens mixed dtypes by itself; values on several devices (a model split
    across devices) are first brought to ``device``.
    """
    try:
        stacked = torch.stack(values)
    except RuntimeError:  # not all on one device
        stacked = torch.stack([v.float().to(device) for v in values])
    return bool(torch.isfinite(stacked).all())


def check_loss(loss: object, step: int) -> None:
    """Raise `NonFiniteError` if the closure's ``loss`` is a non-finite number or tensor."""
    if isinstance(loss, Tensor):
        finite = bool(torch.isfinite(loss.detach()).all())
    elif isinstance(loss, (int, float)):
        finite = bool(torch.isfinite(torch.tensor(float(loss))))
    else:
        return
    if not finite:
        raise NonFiniteError(f"QASSO step {step}: the loss is {loss!r}; the step was not taken")
