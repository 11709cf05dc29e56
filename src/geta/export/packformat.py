"""The container of a packed file: header, manifest, and the checks that run before any tensor.

Layout (all integers little-endian)::

    b"GETAPACK"  u32 version  u64 manifest length  32-byte SHA-256 of the manifest
    manifest (zlib-compressed UTF-8 JSON)  data

Integrity (format version 2): the manifest's SHA-256 sits in the header and every entry
carries the SHA-256 of its bytes (``"sha256"``); `read_container` checks the header and the
manifest, `check_entries` every size and byte range against the file's length and every
entry's checksum, before anything is allocated, so a flipped byte, a truncated or an oversized
file is a `geta.IntegrityError` naming the file (and the tensor) instead of a model that
computes something else. Version 1 files (no checksums) still load. `write_container` writes a
file atomically (a temporary file in the same folder, then ``os.replace``).

What the entries mean (integer codes or raw bytes of a model's tensors) is
`geta.export.packfile`'s business; this module only knows their byte ranges and sizes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
import zlib
from typing import Any

import torch

from geta.errors import ExportError, GetaError, IntegrityError
from geta.export.bitpack import MAX_BITS, packed_nbytes

__all__ = [
    "FORMAT_VERSION",
    "HEADER",
    "HEADER_V1",
    "MAGIC",
    "MAX_MANIFEST_BYTES",
    "check_entries",
    "dtype_name",
    "parse_dtype",
    "read_container",
    "read_manifest",
    "write_container",
]

MAGIC = b"GETAPACK"
FORMAT_VERSION = 2
HEADER = struct.Struct("<8sIQ32s")  # magic, version, manifest length, SHA-256 of the manifest
HEADER_V1 = struct.Struct("<8sIQ")  # version 1: no checksums
MAX_MANIFEST_BYTES = 1 << 28  # 256 MiB of JSON: far beyond any real model's tensor list


def dtype_name(dtype: torch.dtype) -> str:
    """The manifest's name of ``dtype`` (``"float32"``)."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    """The torch dtype a manifest names; an unknown name is an `ExportError`."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ExportError(f"packed file: unknown dtype {name!r}")
    return dtype


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


def write_container(path: str, manifest: dict[str, Any], chunks: list[bytes]) -> int:
    """Write header, ``manifest`` (JSON, zlib-compressed) and ``chunks`` to ``path`` atomically;
    returns the manifest's size in the file (bytes)."""
    raw = json.dumps(manifest, separators=(",", ":")).encode("utf-8")
    raw = zlib.compress(raw, 9)  # names repeat a lot: ~5x smaller
    digest = hashlib.sha256(raw).digest()
    _write_atomic(path, [HEADER.pack(MAGIC, FORMAT_VERSION, len(raw), digest), raw, *chunks])
    return len(raw)


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
    if len(blob) < HEADER_V1.size:
        raise ExportError(f"{path} is not a geta packed file (too short)")
    magic, version, length = HEADER_V1.unpack_from(blob)
    if magic != MAGIC:
        raise ExportError(f"{path} is not a geta packed file (magic {magic!r})")
    if version not in (1, FORMAT_VERSION):
        raise ExportError(
            f"{path} has packed format version {version}; this geta reads 1 and {FORMAT_VERSION}"
        )
    if version == 1:
        return HEADER_V1.size, length, None
    if len(blob) < HEADER.size:
        raise IntegrityError(f"{path} is truncated: its header is incomplete")
    return HEADER.size, length, HEADER.unpack_from(blob)[3]


def read_container(path: str) -> tuple[dict[str, Any], bytes]:
    """(manifest, data) of the packed file at ``path``: header and manifest checked, the
    entries not yet (`check_entries`)."""
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
        itemsize = parse_dtype(str(e.get("dtype"))).itemsize
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


def check_entries(path: str, manifest: dict[str, Any], data: bytes) -> None:
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


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON manifest of a packed file (format, version, model class, tensor entries)."""
    return read_container(os.fspath(path))[0]
