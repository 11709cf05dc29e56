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
from geta.quant.quantizer import LearnableQuantizer

__all__ = ["INPUT_FRACTIONS", "SAMPLE_SIZE", "WEIGHT_FRACTIONS", "InputSampler", "mse_clip"]

WEIGHT_FRACTIONS = tuple(0.3 + 0.05 * k for k in range(15))  # candidate q_m / max|W|, 0.3 .. 1.0
INPUT_FRACTIONS = tuple(0.02 * 50 ** (k / 23) for k in range(24))  # q_m / max|x|, 0.02 .. 1, geometric
SAMPLE_SIZE = 8192  # values of an activation kept per forward for the refit
_HASH = 2654435761  # Knuth's multiplicative hash: sample positions spread over every channel


@torch.no_grad()
def mse_clip(
    values: Tensor, bits: Tensor | float, q: LearnableQuantizer, fractions: Sequence[float]
) -> Tensor:
    """The q_m among ``fractions`` of the peak of ``values`` that minimises ‖Q(values) − values‖²
    on a ``bits`` grid (q's sign mode and exponent), as a 0-d tensor in q_m's dtype.

    The peak is max|values| (unsigned quantizers: the max of the non-negative part); the first
    candidate of equal error wins.
    """
    x = values.detach()
    peak = (x.abs() if q.signed else x.clamp_min(0.0)).amax().clamp_min(MIN_QMAX)
    best, best_err = peak.to(q.qmax.dtype), math.inf
    for frac in fractions:
        qmax = (peak * frac).to(q.qmax.dtype)
        step = step_for_bits(bits, qmax, q.exponent, signed=q.signed).to(q.step.dtype)
        err = float((fake_quant(x, step, qmax, q.exponent, signed=q.signed) - x).pow(2).sum())
        if err < best_err:
            best, best_err = qmax, err
    return best


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
