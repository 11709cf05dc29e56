"""Clipping that follows the bits: the q_m minimising ‖Q(x) − x‖² on a given grid.

When the budget rule lowers a quantizer's bits, a clipping range calibrated at high bits
(q_m = max|x|) wastes the few levels left on outliers: at 2 signed bits the grid is
{−q_m, 0, q_m}, and an input whose typical |x| is below q_m / 2 rounds to zero everywhere. On
the llama recipe that zeroed the LM head's input, and the model's output went uniform (test
perplexity 256 = the vocabulary) the moment the projection stage ended. So whenever a layer's
bits change, its q_m is refitted to the candidate that minimises the squared rounding error:

- weights on the weight itself, among `WEIGHT_FRACTIONS` of max|W|;
- activations (layer inputs, attention operands) on a sample of the values the quantizer saw
  in this step's forward (`InputSampler`), among `INPUT_FRACTIONS` of their max, which reach
  much lower because activations carry heavier outliers than weights.

q_m then learns on by gradient, as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from geta.quant.functional import MIN_QMAX, fake_quant, step_for_bits
from geta.quant.limits import floored_scalars
from geta.quant.quantizer import LearnableQuantizer

__all__ = ["BATCH_ELEMENTS", "INPUT_FRACTIONS", "SAMPLE_SIZE", "WEIGHT_FRACTIONS", "InputSampler", "mse_clip"]

WEIGHT_FRACTIONS = tuple(0.3 + 0.05 * k for k in range(15))  # candidate q_m / max|W|, 0.3 .. 1.0
INPUT_FRACTIONS = tuple(0.02 * 50 ** (k / 23) for k in range(24))  # q_m / max|x|, 0.02 .. 1, geometric
SAMPLE_SIZE = 8192  # values of an activation kept per forward for the refit
BATCH_ELEMENTS = 1 << 22  # candidate grids x values evaluated at once by `mse_clip` (16 MiB)
_HASH = 2654435761  # Knuth's multiplicative hash: sample positions spread over every channel


@torch.no_grad()
def mse_clip(
    values: Tensor, bits: Tensor | float, q: LearnableQuantizer, fractions: Sequence[float]
) -> Tensor:
    """The q_m among ``fractions`` of the peak of ``values`` that minimises ‖Q(values) − values‖²
    on a ``bits`` grid (q's sign mode and exponent), as a 0-d tensor in q_m's dtype.

    The peak is max|values| (unsigned quantizers: the max of the non-negative part); the first
    candidate of equal error wins, and the peak itself if no error is finite. The candidates are
    evaluated together, as many at a time as fit in `BATCH_ELEMENTS` values (the search runs
    whenever a layer's bits change, at every step of a one-period projection stage): one pass
    and one host sync, where a loop over 15 to 24 candidates cost a call and a sync each.
    """
    x = values.detach().reshape(-1)
    peak = (x.abs() if q.signed else x.clamp_min(0.0)).amax().clamp_min(MIN_QMAX)
    qmax = (peak * torch.tensor(fractions, dtype=peak.dtype, device=peak.device)).to(q.qmax.dtype)  # (K,)
    step = step_for_bits(bits, qmax, q.exponent, signed=q.signed).to(q.step.dtype)  # (K,)
    batch = max(1, BATCH_ELEMENTS // max(1, x.numel()))
    errors = torch.cat(
        [_errors(x, step[k : k + batch], qmax[k : k + batch], q) for k in range(0, len(qmax), batch)]
    )
    best = int(errors.nan_to_num(nan=math.inf).argmin())  # argmin: the first of equal minima
    return qmax[best] if bool(torch.isfinite(errors[best])) else peak.to(q.qmax.dtype)


def _errors(x: Tensor, step: Tensor, qmax: Tensor, q: LearnableQuantizer) -> Tensor:
    """‖Q(x) − x‖² on each of the grids (step[k], qmax[k]), (K,); x (N,).

    Q(x) = sign(x) d round(min(|x|, q_m) ** t / d) (§1.1), with min(|x|, q_m) ** t computed as
    min(|x| ** t, q_m ** t): equal bit for bit (``pow`` is monotonic), and N powers instead of
    K N. The products differ from the op's only in order by an exact factor sign(x).
    """
    if len(step) == 1:  # a large tensor: one grid at a time through the op (a fused kernel)
        return (fake_quant(x, step[0], qmax[0], q.exponent, signed=q.signed) - x).pow(2).sum().reshape(1)
    d, top, t = floored_scalars(x, step, qmax, q.exponent.detach())  # (K,), (K,), ()
    xc = x.to(d.dtype)
    s, a = (torch.sign(xc), xc.abs()) if q.signed else ((xc > 0).to(xc.dtype), xc.clamp_min(0.0))
    if not q.unit_exponent:  # a fixed exponent of 1: m ** 1 == m
        a, top = a.pow_(t), top.pow(t)
    d = d[:, None]
    u = torch.minimum(a, top[:, None])  # (K, N)
    return u.div_(d).round_().mul_(d).mul_(s).sub_(xc).pow_(2).sum(dim=1)


class InputSampler:
    """Up to `SAMPLE_SIZE` values of what each of ``quantizers`` received in its latest forward.

    Forward pre-hooks, no change to any output; positions ``(k * 2654435761) mod numel`` are
    deterministic (no random-number draws, so a resumed run samples as the uninterrupted one)
    and spread over channels, where an even stride would keep hitting the same one. A
    quantizer keeps its last sample until the next forward that runs it; `remove` drops the
    hooks and the samples. Forwards traced by ``torch.export`` (capturing the model to convert
    or report it mid-training) are not sampled.
    """

    def __init__(self, quantizers: dict[int, nn.Module]) -> None:
        self.samples: dict[int, Tensor] = {}  # quantizer index -> (≤ SAMPLE_SIZE,) values
        self._positions: dict[tuple[int, torch.device], Tensor] = {}
        self._handles = [q.register_forward_pre_hook(self._hook(i)) for i, q in quantizers.items()]

    def _hook(self, i: int) -> Any:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            if torch.compiler.is_exporting():  # a capture (convert, report) is no training forward:
                return  # its fake values must not become samples, nor its index a cached constant
            if args and isinstance(args[0], Tensor) and args[0].numel() > 0 and args[0].device.type != "meta":
                self.samples[i] = self._sample(args[0].detach())

        return record

    def _sample(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1)
        n = flat.numel()
        if n <= SAMPLE_SIZE:
            return flat.clone()
        key = (n, flat.device)
        if key not in self._positions:
            k = torch.arange(SAMPLE_SIZE, dtype=torch.int64)
            self._positions[key] = ((k * _HASH) % n).to(flat.device)
        return flat.index_select(0, self._positions[key])

    def remove(self) -> None:
        """Detach the hooks and forget the samples (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles, self.samples = [], {}
