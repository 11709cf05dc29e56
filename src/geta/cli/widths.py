"""Kept widths of a pruned model: per layer, what pruning kept of its output and input channels.

They go into report.json (``kept_out``/``kept_in`` fractions, ``width_out``/``width_in`` as
``[kept, original]``), report.md's per-layer table (`width_text`) and layers.png's labels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["kept_fractions", "width_text"]


@torch.no_grad()
def kept_fractions(dense: nn.Module, small: nn.Module) -> dict[str, dict[str, Any]]:
    """Per layer (module name): the kept fraction of output and input channels (``kept_out``,
    ``kept_in``) and the widths themselves, ``[kept, original]`` (``width_out``, ``width_in``):
    channels of a conv, features of a linear (an attention projection's heads x head size)."""
    dense_modules = dict(dense.named_modules())
    out: dict[str, dict[str, Any]] = {}
    for name, module in small.named_modules():
        w, ref = getattr(module, "weight", None), getattr(dense_modules.get(name), "weight", None)
        if (
            not (isinstance(w, torch.Tensor) and isinstance(ref, torch.Tensor))
            or w.dim() < 2
            or w.dim() != ref.dim()
        ):
            continue
        o, i = (1, 0) if getattr(module, "transposed", False) else (0, 1)  # ConvTranspose: (in, out, ...)
        (k_out, n_out), (k_in, n_in) = (w.shape[o], ref.shape[o]), (w.shape[i], ref.shape[i])
        out[name] = {"kept_out": k_out / n_out, "kept_in": k_in / n_in,
                     "width_out": [k_out, n_out], "width_in": [k_in, n_in]}  # fmt: skip
    return out


def width_text(kept: dict[str, Any]) -> str:
    """A layer's kept widths for the per-layer table: ``'24/32 out, 8/8 in'``.

    >>> width_text({"width_out": [24, 32], "width_in": [8, 8]})
    '24/32 out, 8/8 in'
    """
    return ", ".join(f"{k}/{n} {side}" for side in ("out", "in") for k, n in [kept[f"width_{side}"]])
