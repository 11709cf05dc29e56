"""geta's integer codes as llama.cpp's block-quantized tensors (Q4_0, Q5_0, Q8_0), bit for bit.

A geta-quantized weight is W = k·step: integer codes k and one float32 step per tensor
(`geta.quant.functional.integer_codes`). ggml's "legacy" quantized types store a row in blocks
of 32 values, each block one fp16 scale d and 32 small integers q, and mean W = d·q:

======  ============  =====================================================  ===========
type    q range       block layout (bytes)                                   bits/value
======  ============  =====================================================  ===========
Q4_0    −8 … 7        d (2) · 16 bytes: value j in the low nibble of byte j,  4.5
                      value j+16 in its high nibble; stored q + 8
Q5_0    −16 … 15      d (2) · 4 bytes: bit j = 5th bit of value j (little-    5.5
                      endian u32) · 16 bytes of low nibbles as in Q4_0;
                      stored q + 16
Q8_0    −128 … 127    d (2) · 32 int8                                         8.5
======  ============  =====================================================  ===========

So a code k fits the first type whose range holds every code of the tensor (a signed b-bit
code of geta, |k| ≤ 2^(b−1) − 1: Q4_0 for 2–4 bits, Q5_0 for 5, Q8_0 for 6–8) and goes in
unchanged, q = k, with d = step in every block. The one rounding is d itself: fp16 keeps 11
significant bits, so d = fp16(step) differs from step by at most 2^−11 relative (about
0.05 %) for a step in fp16's normal range (≥ 6.1e−5), and each weight then differs from geta's
by |k|·|d − step| -- the same relative factor for every weight of the tensor.
`step_rounding` reports both. Smaller steps fall into fp16's subnormals and lose more: the
export reports it, it does not hide it.

Rows whose length is not a multiple of 32 cannot be stored in these types; the GGUF writer
pads the pruned widths first (`geta.export.gguf_layout`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BLOCK", "QTYPES", "StepRounding", "container", "encode_rows", "step_rounding"]

BLOCK = 32  # values per block of Q4_0, Q5_0 and Q8_0
QTYPES: dict[str, tuple[int, int]] = {"Q4_0": (-8, 7), "Q5_0": (-16, 15), "Q8_0": (-128, 127)}
"""ggml type -> (lowest, highest) integer a block holds, smallest container first."""


@dataclass(frozen=True)
class StepRounding:
    """What fp16 does to one tensor's step (the block scale d of every block)."""

    step: float  # geta's float32 step
    stored: float  # fp16(step), what llama.cpp multiplies by
    relative_error: float  # |stored − step| / step
    max_weight_diff: float  # max |k|·|stored − step|: the largest change of any weight


def container(codes: np.ndarray) -> str | None:
    """The smallest ggml type whose q range holds every code, or None when none does (|k| > 128)."""
    lo = int(codes.min()) if codes.size else 0
    hi = int(codes.max()) if codes.size else 0
    for name, (low, high) in QTYPES.items():
        if low <= lo and hi <= high:
            return name
    return None


def step_rounding(step: float, codes: np.ndarray) -> StepRounding:
    """How far fp16 moves ``step`` and, through the largest code, the weights (see module doc)."""
    stored = float(np.float16(step))
    peak = int(np.abs(codes).max()) if codes.size else 0
    diff = abs(stored - step)
    return StepRounding(step, stored, diff / step if step else 0.0, peak * diff)


def _nibbles(low: np.ndarray) -> np.ndarray:
    """(blocks, 32) values 0..15 -> (blocks, 16) bytes: j in the low nibble, j+16 in the high."""
    return (low[:, :16] | (low[:, 16:] << 4)).astype(np.uint8)


def _pack(q: np.ndarray, qtype: str) -> np.ndarray:
    """(blocks, 32) int codes -> (blocks, payload bytes) of ``qtype`` without the scale."""
    if qtype == "Q8_0":
        return q.astype(np.int8).view(np.uint8)
    if qtype == "Q4_0":
        return _nibbles((q + 8).astype(np.uint8))
    stored = (q + 16).astype(np.uint32)  # Q5_0: 5-bit values
    high = ((stored >> 4) & 1) << np.arange(BLOCK, dtype=np.uint32)
    qh = np.bitwise_or.reduce(high, axis=1).astype("<u4").view(np.uint8).reshape(-1, 4)
    return np.concatenate([qh, _nibbles((stored & 0xF).astype(np.uint8))], axis=1)


def encode_rows(codes: np.ndarray, step: float, qtype: str) -> np.ndarray:
    """(rows, cols) integer codes with one step -> (rows, bytes per row) uint8 of ``qtype``.

    ``cols`` must be a multiple of `BLOCK` and every code within the type's range (`container`).
    The result is what a GGUF file stores for the tensor (gguf's ``add_tensor(..., raw_dtype=)``).
    """
    rows, cols = codes.shape
    low, high = QTYPES[qtype]
    if cols % BLOCK:
        raise ValueError(f"encode_rows: a row of {cols} values is not a whole number of {BLOCK}-value blocks")
    if codes.size and (codes.min() < low or codes.max() > high):
        raise ValueError(
            f"encode_rows: codes {codes.min()}..{codes.max()} do not fit {qtype} ({low}..{high})"
        )
    blocks = codes.reshape(-1, BLOCK).astype(np.int32)
    scale = np.full((blocks.shape[0], 1), step, dtype=np.float16).view(np.uint8)
    return np.concatenate([scale, _pack(blocks, qtype)], axis=1).reshape(rows, -1)
