"""`NonFiniteError` and the cheap finiteness check QASSO runs on every step.

A NaN or inf gradient must stop training with a message that names the step and the
parameter (docs/method.md §3, issue item 7): continuing would spread NaN into every weight and
quantizer, and silently skipping the step would hide the problem.

The check costs one reduction per tensor (one for all 0-dim tensors together) and one host
sync per step: the sums are stacked and tested together; only when that test fails are the
tensors inspected one by one (a sum can overflow to inf with finite elements, so the slow
path decides).
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
    device = grads[0].device
    # 0-dim gradients (a quantizer's scalars: most of a model's tensors) are stacked, not summed
    scalars: dict[torch.device, list[Tensor]] = {}
    sums = []
    for g in grads:
        if g.dim() == 0:
            scalars.setdefault(g.device, []).append(g)
        else:
            sums.append(_float_on(g.sum(), device))
    sums.extend(_float_on(torch.stack(same).sum(), device) for same in scalars.values())
    if bool(torch.isfinite(torch.stack(sums)).all()):
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


def _float_on(t: Tensor, device: torch.device) -> Tensor:
    """``t`` as float32 on ``device``; most sums already are (no conversion call at all)."""
    return t if t.dtype is torch.float32 and t.device == device else t.float().to(device)


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
