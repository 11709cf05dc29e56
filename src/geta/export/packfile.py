"""The packed file: quantized weights at their real bit width, the rest raw, and a JSON manifest.

`packed(model, path)` writes one; its container (header, compressed manifest, SHA-256
checksums, the checks that run before anything is allocated, the atomic write) is
`geta.export.packformat`. The manifest lists every entry of the model's ``state_dict`` once
(tied tensors are stored once; later keys are ``alias`` entries) with its dtype, shape, and
byte range in ``data``:

- ``"codes"``: a geta-quantized weight (``<layer>.parametrizations.<name>.original``) as its
  integer codes k (k·step is exactly the fake-quantized weight), offset by ``code_min`` and
  bit-packed at ``bits`` bits (`geta.export.bitpack`), with ``scale`` = step;
- ``"raw"``: any other tensor (biases, norms, buffers, quantizer scalars), bytes in its dtype.

The file is therefore as large as the model really is: Σ numel·bits / 8 for the quantized
weights plus the raw bytes of the rest plus the manifest.

The manifest also records, under ``"structure"``, which weights and layer inputs carry
quantizers, every module's class and integer size attributes (`geta.export.skeleton`).

`load_packed(path, model)` restores the file into ``model``, a module of the saved class. The
simplest one is the model exactly as your code builds it before ``prepare`` (dense, without
quantizers, even on the ``meta`` device): geta attaches the recorded quantizers, shrinks the
tensors and size attributes to the saved ones, and loads the values::

    small = geta.export.load_packed("model.geta", MyNet())

A copy of the compressed model, or the same pipeline (``prepare`` + ``convert``) run again,
works too. Each quantized weight is restored to a value whose fake-quant gives exactly k·step
(k·step itself when the exponent is 1), so the restored module's outputs equal the saved
module's bit for bit. Its float weights before rounding are gone: that is the compression.
The file holds no code (nothing is unpickled): the architecture always comes from your class.
A damaged, truncated or oversized file is a `geta.IntegrityError` naming the file (and the
tensor); version 1 files (no checksums) still load.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from geta.errors import ExportError, GetaError
from geta.export.bitpack import pack_bits, unpack_bits
from geta.export.packformat import (
    FORMAT_VERSION,
    HEADER,
    MAGIC,
    check_entries,
    dtype_name,
    parse_dtype,
    read_container,
    read_manifest,
    write_container,
)
from geta.export.packformat import MAX_MANIFEST_BYTES as MAX_MANIFEST_BYTES  # importable here as before
from geta.export.skeleton import describe, fit
from geta.quant.attach import weight_quantizers
from geta.quant.functional import integer_codes
from geta.quant.quantizer import LearnableQuantizer
from geta.reporting.count import rounded_bits

__all__ = ["FORMAT_VERSION", "MAGIC", "PackedInfo", "load_packed", "packed", "read_manifest"]


@dataclass(frozen=True)
class PackedInfo:
    """What `packed` wrote: sizes in bytes, and the ideal size it is measured against."""

    path: str
    file_bytes: int
    manifest_bytes: int
    data_bytes: int
    ideal_bytes: float  # Σ quantized numel·bits / 8 + raw bytes of every other tensor
    packed_tensors: int
    raw_tensors: int


def _raw_bytes(t: Tensor) -> bytes:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def _code_bits(codes: Tensor, bits: int, signed: bool) -> tuple[int, int]:
    """(stored bits, code_min): at least ``bits``, wide enough for every code (lossless)."""
    peak = int(codes.abs().max()) if codes.numel() else 0
    need = math.ceil(math.log2(peak + 1)) + (1 if signed else 0) if peak else 1
    b = max(bits, need, 2 if signed else 1)
    return b, (-(2 ** (b - 1) - 1) if signed else 0)


def _quantized_originals(model: nn.Module) -> dict[str, tuple[LearnableQuantizer, str]]:
    """state_dict key of each quantized weight's original -> (quantizer, key prefix of it)."""
    found = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for attr, q in weight_quantizers(module).items():
            index = list(module.parametrizations[attr]).index(q)
            found[f"{prefix}parametrizations.{attr}.original"] = (
                q,
                f"{prefix}parametrizations.{attr}.{index}",
            )
    return found


def _encode(model: nn.Module) -> tuple[list[dict[str, Any]], list[bytes], float]:
    """Manifest entries, data chunks and the ideal size in bytes."""
    state = model.state_dict(keep_vars=True)
    quantized = _quantized_originals(model)
    keys_of: dict[int, list[str]] = {}
    for key, t in state.items():
        keys_of.setdefault(id(t), []).append(key)
    first: dict[int, str] = {}
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    offset, ideal = 0, 0.0
    for key, t in state.items():
        if id(t) in first:
            entries.append({"name": key, "encoding": "alias", "of": first[id(t)]})
            continue
        first[id(t)] = key
        entry: dict[str, Any] = {"name": key, "dtype": dtype_name(t.dtype), "shape": list(t.shape)}
        # a tied tensor also read unquantized elsewhere must keep its float values
        shared_raw = any(k not in quantized for k in keys_of[id(t)])
        if key in quantized and not shared_raw:
            q, qprefix = quantized[key]
            codes = integer_codes(t.detach(), q.step, q.qmax, q.exponent, signed=q.signed)
            bits, code_min = _code_bits(codes, rounded_bits(q), q.signed)
            data = pack_bits(codes.to(torch.int64) - code_min, bits).numpy().tobytes()
            entry.update(encoding="codes", bits=bits, code_min=code_min, signed=q.signed,
                         scale=float(q.step.detach()), quantizer=qprefix)  # fmt: skip
            ideal += t.numel() * bits / 8
        else:
            data = _raw_bytes(t)
            entry["encoding"] = "raw"
            ideal += len(data)
        entry.update(offset=offset, nbytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        offset += len(data)
        entries.append(entry)
        chunks.append(data)
    return entries, chunks, ideal


def packed(model: nn.Module, path: str | os.PathLike[str]) -> PackedInfo:
    """Write ``model``'s tensors to ``path`` with quantized weights bit-packed (module docstring)."""
    entries, chunks, ideal = _encode(model)
    data_bytes = sum(len(c) for c in chunks)
    manifest = {
        "format": "geta.packed", "version": FORMAT_VERSION,
        "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "data_bytes": data_bytes, "tensors": entries, "structure": describe(model),
    }  # fmt: skip
    target = os.fspath(path)
    manifest_bytes = write_container(target, manifest, chunks)
    return PackedInfo(
        path=target, file_bytes=HEADER.size + manifest_bytes + data_bytes, manifest_bytes=manifest_bytes,
        data_bytes=data_bytes, ideal_bytes=ideal,
        packed_tensors=sum(e["encoding"] == "codes" for e in entries),
        raw_tensors=sum(e["encoding"] == "raw" for e in entries),
    )  # fmt: skip


def _fit_checked(skeleton: nn.Module, structure: Any, shapes: dict[str, Any], path: str) -> None:
    """`fit` the skeleton to the manifest's structure record; a malformed record is one `ExportError`."""
    try:
        fit(skeleton, structure, shapes)
    except GetaError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        raise ExportError(
            f"{path}: the structure record of the manifest is damaged ({type(exc).__name__}: {exc})"
        ) from None


def _decode_raw(entry: dict[str, Any], data: bytes) -> Tensor:
    dtype, shape = parse_dtype(entry["dtype"]), entry["shape"]
    chunk = data[entry["offset"] : entry["offset"] + entry["nbytes"]]
    if not chunk:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(chunk), dtype=torch.uint8).view(dtype).reshape(shape).clone()


def _decode_codes(entry: dict[str, Any], data: bytes, state: dict[str, Tensor]) -> Tensor:
    """A weight whose fake-quant is exactly k·step: sign(k)·(|k|·step)**(1/t), k·step if t = 1."""
    shape, count = entry["shape"], math.prod(entry["shape"])
    raw = bytearray(data[entry["offset"] : entry["offset"] + entry["nbytes"]])
    chunk = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.zeros(0, dtype=torch.uint8)
    k = (unpack_bits(chunk, entry["bits"], count) + entry["code_min"]).reshape(shape)
    step, qmax, t = (state[f"{entry['quantizer']}.{n}"] for n in LearnableQuantizer.SCALARS)
    if float(t) == 1.0:
        value = k.to(torch.float32) * step.to(torch.float32)
    else:
        value = torch.sign(k) * (k.abs().double() * step.double()) ** (1.0 / t.double())
    value = value.to(parse_dtype(entry["dtype"]))
    again = integer_codes(value, step, qmax, t, signed=entry["signed"])
    if not torch.equal(again.to(torch.int64), k):
        raise ExportError(f"packed file: the codes of {entry['name']} do not survive the round trip")
    return value


def _decode(path: str, entries: dict[str, dict[str, Any]], data: bytes) -> dict[str, Tensor]:
    """Every tensor of the file: raw ones first (the codes read their quantizer's scalars)."""
    state: dict[str, Tensor] = {}
    try:
        for name, e in entries.items():
            if e["encoding"] == "raw":
                state[name] = _decode_raw(e, data)
        for name, e in entries.items():
            if e["encoding"] == "codes":
                state[name] = _decode_codes(e, data, state)
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(
            f"{path}: a tensor entry of its manifest is damaged ({type(exc).__name__}: {exc})"
        ) from None
    for name, e in entries.items():
        if e["encoding"] == "alias":
            state[name] = state[e["of"]]
    return state


def load_packed(path: str | os.PathLike[str], skeleton: nn.Module) -> nn.Module:
    """Load a packed file into ``skeleton``, a model of the saved class, and return it (changed in place).

    ``skeleton`` may be built exactly as before ``prepare`` (dense, no quantizers): the
    recorded quantizers are attached and its tensors and size attributes shrunk to the saved
    ones first (module docstring). A skeleton on the ``meta`` device is materialised on the
    CPU (``load_state_dict(assign=True)``); otherwise tensors stay on their device. Raises
    `geta.ExportError` for a file that does not fit (another architecture) and
    `geta.IntegrityError` (an `ExportError` too) for one that is damaged, truncated or
    oversized (checked before anything is allocated).

    >>> model = MyNet()  # doctest: +SKIP
    >>> small = geta.export.load_packed("model.geta", model)  # doctest: +SKIP
    >>> small is model  # doctest: +SKIP
    True
    """
    manifest, data = read_container(os.fspath(path))
    check_entries(os.fspath(path), manifest, data)  # every entry against the file, before allocating
    entries = {e["name"]: e for e in manifest["tensors"]}
    if "structure" in manifest:
        shapes = {n: e["shape"] for n, e in entries.items() if "shape" in e}
        _fit_checked(skeleton, manifest["structure"], shapes, os.fspath(path))
    expected = skeleton.state_dict(keep_vars=True)
    if set(entries) != set(expected):
        missing, extra = sorted(set(expected) - set(entries)), sorted(set(entries) - set(expected))
        raise ExportError(
            f"{os.fspath(path)} does not fit the skeleton {type(skeleton).__name__}: "
            f"missing {missing[:5]}, unexpected {extra[:5]}; build the skeleton the way "
            "the saved model was built (same class, convert of the same plan)"
        )
    state = _decode(os.fspath(path), entries, data)
    for name, t in state.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise ExportError(
                f"{name}: the file has shape {tuple(t.shape)}, the skeleton "
                f"{tuple(expected[name].shape)}; convert the skeleton with the same plan"
            )
    meta = any(t.is_meta for t in expected.values())
    skeleton.load_state_dict(state, strict=True, assign=meta)
    return skeleton
