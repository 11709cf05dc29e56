"""Base directions of QASSO (docs/method.md §3.1): SGD (momentum, Nesterov), Adam and AdamW.

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
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Variant",
    "adam_direction",
    "adam_directions",
    "group_direction",
    "group_directions",
    "sgd_direction",
    "sgd_directions",
]


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


# ---------------------------------------------------------------------------------------------
# Many tensors at once: the same arithmetic through torch._foreach_* (one call per operation
# for a whole parameter group instead of one per tensor). On the CPU a foreach op runs the
# per-tensor op on each tensor, and on accelerators the same elementwise formula per element, so
# the directions are those of `sgd_direction` / `adam_direction` bit for bit.
# ---------------------------------------------------------------------------------------------


def sgd_directions(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
) -> list[Tensor]:
    """`sgd_direction` of every (param, grad, state) (may return the momentum buffers)."""
    d_p = list(grads) if weight_decay == 0 else list(torch._foreach_add(grads, params, alpha=weight_decay))
    if momentum == 0:
        return d_p
    bufs: list[Tensor] = []
    old: list[int] = []
    for i, (d, state) in enumerate(zip(d_p, states, strict=True)):
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = torch.clone(d).detach()  # the first step seeds the buffer with d_p
            state["momentum_buffer"] = buf
        else:
            old.append(i)
        bufs.append(buf)
    if old:
        moving = [bufs[i] for i in old]
        torch._foreach_mul_(moving, momentum)
        torch._foreach_add_(moving, [d_p[i] for i in old], alpha=1 - dampening)
    return list(torch._foreach_add(d_p, bufs, alpha=momentum)) if nesterov else bufs


def adam_directions(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    decoupled: bool,
) -> list[Tensor]:
    """`adam_direction` of every (param, grad, state) (new tensors)."""
    beta1, beta2 = betas
    if not decoupled and weight_decay != 0:
        grads = list(torch._foreach_add(grads, params, alpha=weight_decay))
    for p, state in zip(params, states, strict=True):
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)  # m
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)  # v
        state["step"] += 1
    ms = [s["exp_avg"] for s in states]
    vs = [s["exp_avg_sq"] for s in states]
    torch._foreach_lerp_(ms, grads, 1 - beta1)
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, grads, grads, value=1 - beta2)
    by_step: dict[int, list[int]] = {}  # the bias corrections depend on each tensor's step count
    for i, state in enumerate(states):
        by_step.setdefault(state["step"], []).append(i)
    out: list[Tensor] = [ms[0]] * len(states)
    for k, idx in by_step.items():
        bias1 = 1 - beta1**k
        bias2_sqrt = (1 - beta2**k) ** 0.5
        denom = torch._foreach_sqrt([vs[i] for i in idx])
        torch._foreach_div_(denom, bias2_sqrt)
        torch._foreach_add_(denom, eps)  # sqrt(v̂) + eps
        direction = torch._foreach_div([ms[i] for i in idx], bias1)
        torch._foreach_div_(direction, denom)  # m̂ / (sqrt(v̂) + eps)
        if decoupled and weight_decay != 0:
            torch._foreach_add_(direction, [params[i] for i in idx], alpha=weight_decay)
        for i, d in zip(idx, direction, strict=True):
            out[i] = d
    return out


def _options(variant: Variant, group: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``variant``'s direction, read from a param group."""
    if variant is Variant.SGD:
        return {k: group[k] for k in ("momentum", "dampening", "nesterov", "weight_decay")}
    wd, decoupled = group["weight_decay"], variant is Variant.ADAMW
    return dict(betas=group["betas"], eps=group["eps"], weight_decay=wd, decoupled=decoupled)


def group_direction(variant: Variant, group: dict[str, Any]) -> Callable[..., Tensor]:
    """The direction of one tensor of ``group``: f(p, grad, state) -> ∇."""
    fn = sgd_direction if variant is Variant.SGD else adam_direction
    return functools.partial(fn, **_options(variant, group))


def group_directions(variant: Variant, group: dict[str, Any]) -> Callable[..., list[Tensor]]:
    """The directions of many tensors of ``group`` (foreach): f(params, grads, states) -> [∇]."""
    fn = sgd_directions if variant is Variant.SGD else adam_directions
    return functools.partial(fn, **_options(variant, group))
