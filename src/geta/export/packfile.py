"""The packed file: quantized weights at their real bit width, the rest raw, and a JSON manifest.

Layout (all integers little-endian)::

    b"GETAPACK"  u32 version  u64 manifest length  32-byte SHA-256 of the manifest
    manifest (zlib-compressed UTF-8 JSON)  data

Integrity (format version 2): the manifest's SHA-256 sits in the header and every entry
carries the SHA-256 of its bytes (``"sha256"``); `load_packed` checks both, and every size and
byte range against the file's length before it allocates anything, so a flipped byte, a
truncated or an oversized file is a `geta.IntegrityError` naming the file (and the tensor)
instead of a model that computes something else. Version 1 files (no checksums) still load.

The manifest lists every entry of the model's ``state_dict`` once (tied tensors are stored
once; later keys are ``alias`` entries) with its dtype, shape, and byte range in ``data``:

- ``"codes"``: a geta-quantized weight (``<layer>.parametrizations.<name>.original``) as its
  integer codes k (k·step is exactly the fake-quantized weight), offset by ``code_min`` and
  bit-packed at ``bits`` bits (`geta.export.bitpack`), with ``scale`` = step;
- ``"raw"``: any other tensor (biases, norms, buffers, quantizer scalars), bytes in its dtype.

The file is therefore as large as the model really is: Σ numel·bits / 8 for the quantized
weights plus the raw bytes of the rest plus the manifest. It is written atomically (a
temporary file in the same folder, then ``os.replace``).

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
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from geta.errors import ExportError, GetaError, IntegrityError
from geta.export.bitpack import MAX_BITS, pack_bits, packed_nbytes, unpack_bits
from geta.export.skeleton import describe, fit
from geta.quant.attach import weight_quantizers
from geta.quant.functional import integer_codes
from geta.quant.quantizer import LearnableQuantizer
from geta.reporting.count import rounded_bits

__all__ = ["FORMAT_VERSION", "MAGIC", "PackedInfo", "load_packed", "packed", "read_manifest"]

MAGIC = b"GETAPACK"
FORMAT_VERSION = 2
_PREFIX = struct.Struct("<8sIQ32s")  # magic, version, manifest length, SHA-256 of the manifest
_PREFIX_V1 = struct.Struct("<8sIQ")  # version 1: no checksums


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


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _parse_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ExportError(f"packed file: unknown dtype {name!r}")
    return dtype


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
        entry: dict[str, Any] = {"name": key, "dtype": _dtype_name(t.dtype), "shape": list(t.shape)}
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


def _write_atomic(path: str, parts: list[bytes]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".geta-pack-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def packed(model: nn.Module, path: str | os.PathLike[str]) -> PackedInfo:
    """Write ``model``'s tensors to ``path`` with quantized weights bit-packed (module docstring)."""
    entries, chunks, ideal = _encode(model)
    data_bytes = sum(len(c) for c in chunks)
    manifest = json.dumps({
        "format": "geta.packed", "version": FORMAT_VERSION,
        "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "data_bytes": data_bytes, "tensors": entries, "structure": describe(model),
    }, separators=(",", ":")).encode("utf-8")  # fmt: skip
    manifest = zlib.compress(manifest, 9)  # names repeat a lot: ~5x smaller
    target = os.fspath(path)
    digest = hashlib.sha256(manifest).digest()
    _write_atomic(target, [_PREFIX.pack(MAGIC, FORMAT_VERSION, len(manifest), digest), manifest, *chunks])
    return PackedInfo(
        path=target, file_bytes=_PREFIX.size + len(manifest) + data_bytes, manifest_bytes=len(manifest),
        data_bytes=data_bytes, ideal_bytes=ideal,
        packed_tensors=sum(e["encoding"] == "codes" for e in entries),
        raw_tensors=sum(e["encoding"] == "raw" for e in entries),
    )  # fmt: skip


MAX_MANIFEST_BYTES = 1 << 28  # 256 MiB of JSON: far beyond any real model's tensor list


def _inflate(raw: bytes, path: str) -> bytes:
    """Decompress the manifest, refusing one that inflates past `MAX_MANIFEST_BYTES` (a zip bomb)."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(raw, MAX_MANIFEST_BYTES)
    if inflater.unconsumed_tail:
        raise ExportError(
            f"{path}: the manifest of this packed file inflates past {MAX_MANIFEST_BYTES} bytes"
        )
    return out + inflater.flush()


def _header(path: str, blob: bytes) -> tuple[int, int, bytes | None]:
    """(manifest start, manifest length, the manifest's SHA-256 or None for version 1)."""
    if len(blob) < _PREFIX_V1.size:
        raise ExportError(f"{path} is not a geta packed file (too short)")
    magic, version, length = _PREFIX_V1.unpack_from(blob)
    if magic != MAGIC:
        raise ExportError(f"{path} is not a geta packed file (magic {magic!r})")
    if version not in (1, FORMAT_VERSION):
        raise ExportError(
            f"{path} has packed format version {version}; this geta reads 1 and {FORMAT_VERSION}"
        )
    if version == 1:
        return _PREFIX_V1.size, length, None
    if len(blob) < _PREFIX.size:
        raise IntegrityError(f"{path} is truncated: its header is incomplete")
    return _PREFIX.size, length, _PREFIX.unpack_from(blob)[3]


def _read(path: str) -> tuple[dict[str, Any], bytes]:
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as exc:
        raise ExportError(f"{path} cannot be read as a packed file ({exc.strerror or exc})") from None
    start, length, digest = _header(path, blob)
    if start + length > len(blob):
        raise IntegrityError(
            f"{path} is truncated or damaged: its header announces a {length}-byte manifest, "
            f"the file holds {len(blob) - start} bytes after the header"
        )
    raw = blob[start : start + length]
    if digest is not None and hashlib.sha256(raw).digest() != digest:
        raise IntegrityError(f"{path} is damaged: its manifest does not match its SHA-256 checksum")
    try:
        manifest = json.loads(_inflate(raw, path).decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: the manifest of this packed file is damaged ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tensors"), list):
        raise ExportError(f"{path}: the manifest of this packed file has no tensor list")
    return manifest, blob[start + length :]


def _fail(path: str, name: object, why: str) -> IntegrityError:
    return IntegrityError(f"{path} is damaged: tensor {name!r} {why}")


def _entry_bytes(path: str, e: dict[str, Any]) -> int:
    """The byte count a raw or codes entry must have, from its dtype, shape (and bits)."""
    shape = e.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _fail(path, e["name"], f"has an invalid shape {shape!r}")
    count = math.prod(shape)
    try:
        itemsize = _parse_dtype(str(e.get("dtype"))).itemsize
    except GetaError:
        raise _fail(path, e["name"], f"has an unknown dtype {e.get('dtype')!r}") from None
    if e["encoding"] == "raw":
        return count * itemsize
    bits = e.get("bits")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise _fail(path, e["name"], f"has an invalid bit width {bits!r}")
    if isinstance(e.get("code_min"), bool) or not isinstance(e.get("code_min"), int):
        raise _fail(path, e["name"], f"has an invalid code offset {e.get('code_min')!r}")
    return packed_nbytes(count, bits)


def _check_entries(path: str, manifest: dict[str, Any], data: bytes) -> None:
    """Every entry's sizes and byte range against the file, and its checksum, before any allocation."""
    declared = manifest.get("data_bytes")
    if declared != len(data):
        raise IntegrityError(
            f"{path} is truncated or damaged: its manifest lists {declared} bytes of tensor data, "
            f"the file holds {len(data)}"
        )
    names = set()
    for e in manifest["tensors"]:
        if not isinstance(e, dict) or not isinstance(e.get("name"), str):
            raise IntegrityError(f"{path} is damaged: a manifest entry has no name")
        names.add(e["name"])
        if e.get("encoding") == "alias":
            continue
        if e.get("encoding") not in ("raw", "codes"):
            raise _fail(path, e["name"], f"has an unknown encoding {e.get('encoding')!r}")
        offset, nbytes = e.get("offset"), e.get("nbytes")
        if not (isinstance(offset, int) and isinstance(nbytes, int) and 0 <= offset and 0 <= nbytes):
            raise _fail(path, e["name"], f"has an invalid byte range ({offset!r}, {nbytes!r})")
        if offset + nbytes > len(data) or nbytes != _entry_bytes(path, e):
            raise _fail(path, e["name"], "has a byte range that does not fit its shape or the file")
        digest = e.get("sha256")
        if digest is not None and hashlib.sha256(data[offset : offset + nbytes]).hexdigest() != digest:
            raise _fail(path, e["name"], "does not match its SHA-256 checksum")
        if digest is None and manifest.get("version", 1) >= 2:
            raise _fail(path, e["name"], "has no checksum")
    for e in manifest["tensors"]:
        if e.get("encoding") == "alias" and (e.get("of") not in names or e.get("of") == e["name"]):
            raise _fail(path, e["name"], f"is an alias of {e.get('of')!r}, which the file does not hold")


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


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON manifest of a packed file (format, version, model class, tensor entries)."""
    return _read(os.fspath(path))[0]


def _decode_raw(entry: dict[str, Any], data: bytes) -> Tensor:
    dtype, shape = _parse_dtype(entry["dtype"]), entry["shape"]
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
    value = value.to(_parse_dtype(entry["dtype"]))
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
    manifest, data = _read(os.fspath(path))
    _check_entries(os.fspath(path), manifest, data)  # every entry against the file, before allocating
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
