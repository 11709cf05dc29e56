"""Quantized Linear weights as integer codes in the compressed-tensors ``pack-quantized`` format.

geta's quantized weight is W_q = k·step with an integer code k per element and one learned
``step`` per tensor, at a bit width b (2..8 after QASSO) of its own per layer; whatever the
learned exponent, the dequantized grid is uniform, so (k, step) says W_q exactly. The
compressed-tensors format (``quantization_config.quant_method = "compressed-tensors"``), which
transformers loads through its compressed-tensors integration and vLLM serves, stores the same
thing for a ``Linear``: per module

- ``weight_packed`` (int32, ``(out, ceil(in·b / 32))``): the codes offset by 2**(b-1) to
  unsigned, each row packed densely, value i of a row at bits [i·b, (i+1)·b) of the row's
  little-endian bit stream (rows padded to whole 32-bit words);
- ``weight_scale`` (float32, ``(1,)``): ``step`` (``strategy: "tensor"``, symmetric: no zero point);
- ``weight_shape`` (int64, ``(2,)``): ``(out, in)``.

and the config lists one ``config_groups`` entry per bit width whose ``targets`` are the exact
module names of that width, so one folder holds layers of different widths. The dequantized
weight ``k·scale`` (float32) is bit for bit geta's W_q.

`integer_weights` finds the weights that fit (a ``nn.Linear`` whose only parametrization is a
geta quantizer, float32, codes within 8 signed bits, k·step equal to the computed weight);
`encode` replaces their float tensors in a state dict and returns the ``quantization_config``;
`decode` reverses it (geta's own loader, so that reading a folder needs no compressed-tensors).

>>> codes = torch.tensor([[-3, 0, 2], [1, 1, -1]])
>>> words = pack_rows(codes, 3)
>>> words.dtype, tuple(words.shape), torch.equal(unpack_rows(words, 3, (2, 3)), codes)
(torch.int32, (2, 1), True)
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from geta.export.bitpack import pack_bits, unpack_bits
from geta.export.info import ExportError
from geta.quant.attach import weight_quantizers
from geta.quant.functional import MIN_STEP, integer_codes
from geta.reporting.count import rounded_bits

__all__ = [
    "FORMAT",
    "MAX_BITS",
    "QUANT_METHOD",
    "IntegerWeight",
    "decode",
    "encode",
    "integer_weights",
    "is_integer_config",
    "pack_rows",
    "unpack_rows",
]

QUANT_METHOD = "compressed-tensors"
FORMAT = "pack-quantized"
MAX_BITS = 8  # the widest code compressed-tensors packs
_SUFFIXES = ("weight_packed", "weight_scale", "weight_shape")


@dataclass(frozen=True)
class IntegerWeight:
    """One Linear weight as codes: ``codes.float() * step`` is exactly the weight geta computes with."""

    codes: Tensor  # int32, (out, in)
    step: Tensor  # float32, (1,)
    bits: int  # signed container width, 2..MAX_BITS


def _signed_bits(codes: Tensor, bits: int) -> int:
    """At least ``bits`` (and 2), wide enough for every code in the symmetric signed range."""
    peak = int(codes.abs().max()) if codes.numel() else 0
    need = math.ceil(math.log2(peak + 1)) + 1 if peak else 2
    return max(bits, need, 2)


@torch.no_grad()
def _integer_weight(module: nn.Module) -> IntegerWeight | None:
    """``module``'s weight as codes, or None where the format cannot hold it exactly."""
    q = weight_quantizers(module).get("weight")
    if q is None or not isinstance(module, nn.Linear) or len(module.parametrizations.weight) != 1:
        return None
    original = module.parametrizations.weight.original.detach()
    codes = integer_codes(original, q.step, q.qmax, q.exponent, signed=q.signed)
    bits = _signed_bits(codes, rounded_bits(q))
    step = q.step.detach().float().clamp_min(MIN_STEP).reshape(1)
    value = module.weight
    if bits > MAX_BITS or value.dtype != torch.float32 or not torch.equal(codes.float() * step, value):
        return None
    return IntegerWeight(codes, step, bits)


def integer_weights(model: nn.Module) -> dict[str, IntegerWeight]:
    """Module name -> `IntegerWeight` for every quantized ``nn.Linear`` the format holds exactly.

    Call it on a converted model before its weights are baked (the quantizers give the codes).
    Other quantized weights (wider than `MAX_BITS`, not a Linear, not float32) stay float.
    """
    found = {}
    for name, module in model.named_modules():
        weight = _integer_weight(module)
        if weight is not None:
            found[name] = weight
    return found


def pack_rows(codes: Tensor, bits: int) -> Tensor:
    """Signed b-bit codes ``(rows, cols)`` -> int32 words ``(rows, ceil(cols·b / 32))`` (module docstring)."""
    if sys.byteorder != "little":
        raise ExportError("integer safetensors are written on little-endian machines only")
    rows, cols = codes.shape
    padded = math.ceil(cols / 32) * 32  # 32 values of b bits end on a word boundary
    unsigned = torch.zeros(rows, padded, dtype=torch.int64)
    unsigned[:, :cols] = codes.to(torch.int64) + (1 << (bits - 1))
    words = pack_bits(unsigned, bits).view(torch.int32).reshape(rows, padded * bits // 32)
    return words[:, : math.ceil(cols * bits / 32)].contiguous()


def unpack_rows(words: Tensor, bits: int, shape: tuple[int, int]) -> Tensor:
    """The signed int64 codes of shape ``shape`` packed by `pack_rows`."""
    rows, cols = shape
    padded = math.ceil(cols / 32) * 32
    full = torch.zeros(rows, padded * bits // 32, dtype=torch.int32)
    full[:, : words.shape[1]] = words
    stream = full.reshape(-1).view(torch.uint8)
    unsigned = unpack_bits(stream, bits, rows * padded).reshape(rows, padded)[:, :cols]
    return unsigned - (1 << (bits - 1))


def _group(bits: int, targets: list[str]) -> dict[str, Any]:
    weights = {"num_bits": bits, "type": "int", "symmetric": True, "strategy": "tensor", "dynamic": False}
    return {"targets": targets, "weights": weights, "input_activations": None, "output_activations": None,
            "format": FORMAT}  # fmt: skip


def encode(state: dict[str, Tensor], weights: dict[str, IntegerWeight]) -> dict[str, Any]:
    """Replace each ``<name>.weight`` of ``weights`` in ``state`` (in place) by its packed codes.

    Returns the ``quantization_config`` to put into ``config.json``: one group per bit width,
    targeting its modules by exact name.
    """
    by_bits: dict[int, list[str]] = {}
    for name, w in weights.items():
        state.pop(f"{name}.weight")
        state[f"{name}.weight_packed"] = pack_rows(w.codes, w.bits)
        state[f"{name}.weight_scale"] = w.step.clone()
        state[f"{name}.weight_shape"] = torch.tensor(list(w.codes.shape), dtype=torch.int64)
        by_bits.setdefault(w.bits, []).append(name)
    groups = {f"int{b}": _group(b, sorted(names)) for b, names in sorted(by_bits.items())}
    return {"quant_method": QUANT_METHOD, "format": FORMAT, "quantization_status": "compressed",
            "config_groups": groups, "ignore": [], "kv_cache_scheme": None}  # fmt: skip


def is_integer_config(config: object) -> bool:
    """Whether ``config`` (a ``quantization_config`` dict) is one `encode` writes."""
    if not isinstance(config, dict):
        return False
    return config.get("quant_method") == QUANT_METHOD and config.get("format") == FORMAT


def decode(state: dict[str, Tensor], config: dict[str, Any]) -> dict[str, Tensor]:
    """Replace every packed weight of ``config`` in ``state`` (in place) by its float32 values k·scale."""
    for group in config.get("config_groups", {}).values():
        bits = int(group["weights"]["num_bits"])
        for name in group["targets"]:
            try:
                words, scale, shape = (state.pop(f"{name}.{s}") for s in _SUFFIXES)
            except KeyError as exc:
                missing = exc.args[0]
                raise ExportError(f"the checkpoint lacks {missing!r} (in quantization_config)") from None
            rows, cols = (int(v) for v in shape.tolist())
            state[f"{name}.weight"] = unpack_rows(words, bits, (rows, cols)).float() * scale.float()
    return state
