"""The numeric floors of the fake-quantizer (docs/method.md §1), shared by its two implementations.

`geta.quant.functional` (the registered op) and `geta.quant.fusable` (plain ops for
``torch.compile``) both read them here; ``geta.quant.functional`` re-exports them.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["LN_EPS", "MIN_QMAX", "MIN_STEP", "STE_FIXED_BOUND", "floored_scalars"]

MIN_STEP = 1e-20  # floor of step (d) inside the math: never divide by zero
MIN_QMAX = 1e-8  # floor of qmax (q_m): min(|x|, qmax) stays positive, so u**t is defined
LN_EPS = 1e-12  # ln(min(|x|, qmax)) is taken of max(., LN_EPS) in dL/dexponent
STE_FIXED_BOUND = 2.0  # STE.FIXED passes the input gradient where |x| <= 2 (authors' release)


def floored_scalars(x: Tensor, step: Tensor, qmax: Tensor, exponent: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(d, q_m, t) in the compute dtype of ``x`` (float64 stays, the rest float32), floors applied."""
    dt = torch.promote_types(x.dtype, torch.float32)
    return step.to(dt).clamp_min(MIN_STEP), qmax.to(dt).clamp_min(MIN_QMAX), exponent.to(dt)
