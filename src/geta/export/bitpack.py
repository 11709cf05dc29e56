"""Pure bit packing: b-bit unsigned integers to and from a dense uint8 byte stream.

Value i occupies bits [i·b, (i+1)·b) of the stream, least significant bit first, and bit j of
the stream is bit (j mod 8) of byte j // 8. n values take exactly ceil(n·b / 8) bytes. Work is
done in chunks (a multiple of 8 values, so every chunk but the last ends on a byte boundary),
which bounds the temporary memory for large tensors.

>>> data = pack_bits(torch.tensor([1, 2, 3, 0, 5]), 3)
>>> data.tolist(), unpack_bits(data, 3, 5).tolist()
([209, 80], [1, 2, 3, 0, 5])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["MAX_BITS", "pack_bits", "packed_nbytes", "unpack_bits"]

MAX_BITS = 32
_CHUNK = 8 * 65536  # values per chunk: a multiple of 8


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that ``count`` values of ``bits`` bits take: ceil(count·bits / 8)."""
    return math.ceil(count * bits / 8)


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits={bits!r} must be an integer in [1, {MAX_BITS}]")


def _pack_chunk(values: Tensor, bits: int) -> Tensor:
    shifts = torch.arange(bits, dtype=torch.int64)
    stream = ((values.unsqueeze(1) >> shifts) & 1).to(torch.uint8).reshape(-1)  # (n·b,) bits
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    weights = torch.tensor([1 << j for j in range(8)], dtype=torch.int64)
    return (stream.reshape(-1, 8).to(torch.int64) * weights).sum(1).to(torch.uint8)


def pack_bits(values: Tensor, bits: int) -> Tensor:
    """Pack non-negative integers below 2**bits (any shape, flattened) into uint8 bytes."""
    _check_bits(bits)
    flat = values.detach().reshape(-1).to(torch.int64).cpu()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ValueError(
            f"pack_bits: values must lie in [0, {(1 << bits) - 1}] for bits={bits}, got "
            f"[{int(flat.min())}, {int(flat.max())}]"
        )
    chunks = [_pack_chunk(flat[i : i + _CHUNK], bits) for i in range(0, flat.numel(), _CHUNK)]
    return torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.uint8)


def _unpack_chunk(data: Tensor, bits: int, count: int) -> Tensor:
    stream = (data.to(torch.int64).unsqueeze(1) >> torch.arange(8, dtype=torch.int64)) & 1
    stream = stream.reshape(-1)[: count * bits].reshape(count, bits)  # (n, b) bits, LSB first
    return (stream << torch.arange(bits, dtype=torch.int64)).sum(1)


def unpack_bits(data: Tensor, bits: int, count: int) -> Tensor:
    """The ``count`` int64 values packed by `pack_bits` (flat)."""
    _check_bits(bits)
    if data.numel() < packed_nbytes(count, bits):
        raise ValueError(f"unpack_bits: {data.numel()} bytes cannot hold {count} values of {bits} bits")
    step = _CHUNK * bits // 8  # bytes per full chunk
    parts = []
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        offset = start // _CHUNK * step
        parts.append(_unpack_chunk(data[offset : offset + packed_nbytes(n, bits)], bits, n))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
