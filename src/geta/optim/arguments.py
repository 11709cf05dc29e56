"""Checks of QASSO's constructor arguments: a bad value raises `ConfigError` naming it."""

from __future__ import annotations

from typing import Any

from geta.errors import ConfigError

__all__ = ["choice", "validate"]


def validate(
    lr: float,
    lr_quant: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    grad_clip: float | None,
) -> None:
    checks = [
        ("lr", lr, lr >= 0, ">= 0"),
        ("lr_quant", lr_quant, lr_quant >= 0, ">= 0"),
        ("momentum", momentum, 0 <= momentum < 1, "in [0, 1)"),
        ("dampening", dampening, 0 <= dampening <= 1, "in [0, 1]"),
        ("betas", betas, all(0 <= b < 1 for b in betas) and len(betas) == 2, "two values in [0, 1)"),
        ("eps", eps, eps > 0, "> 0"),
        ("weight_decay", weight_decay, weight_decay >= 0, ">= 0"),
        ("grad_clip", grad_clip, grad_clip is None or grad_clip > 0, "None or > 0"),
    ]
    for name, value, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"QASSO({name}={value!r}) must be {allowed}")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ConfigError("QASSO(nesterov=True) needs momentum > 0 and dampening = 0")


def choice(kind: type[Any], value: object, name: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"QASSO({name}={value!r}) must be one of {[v.value for v in kind]}") from None
