"""Base directions of QASSO (method.md §3.1): SGD (momentum, Nesterov), Adam and AdamW.

Each function turns a gradient into the direction ∇ of one parameter, updating that
parameter's optimizer state in place; the optimizer then moves ``p <- p - lr * ∇``. Keeping the
direction explicit (instead of fusing it into the update as ``torch.optim`` does) is what the
forgetting step needs: it acts on the rows of ∇, not of the raw gradient.

The arithmetic follows ``torch.optim``'s single-tensor implementations, so that a QASSO run
without quantizers or pruning matches ``torch.optim.SGD`` bit for bit and ``Adam``/``AdamW``
to rounding.
"""

from __future__ import annotations

import enum
from typing import Any

import torch
from torch import Tensor

__all__ = ["Variant", "adam_direction", "sgd_direction"]


class Variant(enum.Enum):
    """The base optimizer whose direction QASSO follows."""

    SGD = "sgd"  # momentum, dampening, Nesterov, L2 weight decay
    ADAM = "adam"  # L2 weight decay folded into the gradient
    ADAMW = "adamw"  # decoupled weight decay


def sgd_direction(
    p: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
) -> Tensor:
    """SGD direction: (grad + wd p), through the momentum buffer (and Nesterov look-ahead).

    May return the momentum buffer itself (do not modify the result in place).
    """
    d_p = grad if weight_decay == 0 else grad.add(p, alpha=weight_decay)
    if momentum == 0:
        return d_p
    buf = state.get("momentum_buffer")
    if buf is None:
        buf = torch.clone(d_p).detach()  # the first step seeds the buffer with d_p
        state["momentum_buffer"] = buf
    else:
        buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
    return d_p.add(buf, alpha=momentum) if nesterov else buf


def adam_direction(
    p: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    decoupled: bool,
) -> Tensor:
    """Adam direction m̂ / (sqrt(v̂) + eps) with standard bias correction (a new tensor).

    ``decoupled=False`` (Adam): weight decay is added to the gradient; ``decoupled=True``
    (AdamW): ``wd * p`` is added to the direction, so ``p - lr ∇`` is AdamW's
    ``p (1 - lr wd) - lr m̂ / (sqrt(v̂) + eps)``.
    """
    beta1, beta2 = betas
    if not decoupled and weight_decay != 0:
        grad = grad.add(p, alpha=weight_decay)
    if "exp_avg" not in state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)  # m
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)  # v
    state["step"] += 1
    m, v, k = state["exp_avg"], state["exp_avg_sq"], state["step"]
    m.lerp_(grad, 1 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias1 = 1 - beta1**k
    bias2_sqrt = (1 - beta2**k) ** 0.5
    denom = (v.sqrt() / bias2_sqrt).add_(eps)  # sqrt(v̂) + eps
    direction = (m / bias1).div_(denom)  # m̂ / (sqrt(v̂) + eps)
    if decoupled and weight_decay != 0:
        direction.add_(p, alpha=weight_decay)
    return direction
