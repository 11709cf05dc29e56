"""Checksums of the files geta writes, verified when geta reads them back, and safe member paths.

Every file geta writes and later reads carries SHA-256 digests, so a flipped byte is one clear
`geta.IntegrityError` naming the file (and the tensor) instead of a model that silently computes
something else:

- a tensor's digest covers its dtype, shape and bytes (`tensor_digest`); a nested structure of
  tensors and plain values (a run checkpoint) gets one digest per tensor, keyed by its path
  (``"model/fc.weight"``), plus one over every other value (`structure_digests`,
  `check_structure`);
- a folder of files gets a sidecar JSON (`write_sidecar`): per file its SHA-256 and size, and
  per tensor its digest where the file holds tensors. `verify_file` checks one file against it
  and `verify_tensors` names the tensor that changed.

Paths read from a manifest or an index (a shard name, a file listed in a sidecar) must stay in
their folder: `member_path` resolves them and refuses ``../x``, absolute paths and links out.

>>> import torch
>>> digests, values = structure_digests({"w": torch.ones(2), "epoch": 3})
>>> check_structure({"w": torch.ones(2), "epoch": 3}, digests, values, where="state.pt")
>>> sorted(digests)
['w']
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from geta.errors import IntegrityError

__all__ = [
    "SIDECAR_FORMAT",
    "check_structure",
    "file_digest",
    "member_path",
    "read_sidecar",
    "structure_digests",
    "tensor_digest",
    "verify_file",
    "verify_tensors",
    "write_sidecar",
]

SIDECAR_FORMAT = "geta.checksums"
_CHUNK = 1 << 20


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 (hex) of a tensor's dtype, shape and bytes (its device and strides do not count)."""
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel():
        h.update(memoryview(flat.view(torch.uint8).numpy()))
    return h.hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _walk(obj: Any, path: str, tensors: dict[str, torch.Tensor], h: Any) -> None:
    """Feed every non-tensor value of ``obj`` into ``h`` (canonically) and collect its tensors."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj
        h.update(f"T{path};".encode())
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}{{".encode())
        for key, value in obj.items():
            h.update(f"{type(key).__name__}:{key!r}=".encode())
            _walk(value, f"{path}/{key}" if path else str(key), tensors, h)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}[".encode())
        for i, value in enumerate(obj):
            _walk(value, f"{path}/{i}" if path else str(i), tensors, h)
        h.update(b"]")
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def structure_digests(obj: Any) -> tuple[dict[str, str], str]:
    """(digest of every tensor by its path, one digest over every other value) of ``obj``.

    ``obj`` is a nesting of dicts, lists and tuples over tensors and plain values (what
    ``torch.load(weights_only=True)`` returns); lists and tuples count alike.
    """
    tensors: dict[str, torch.Tensor] = {}
    h = hashlib.sha256()
    _walk(obj, "", tensors, h)
    return {path: tensor_digest(t) for path, t in tensors.items()}, h.hexdigest()


def check_structure(obj: Any, digests: Mapping[str, str], values: str, *, where: str) -> None:
    """Raise `IntegrityError` unless ``obj`` has the `structure_digests` ``digests`` and ``values``."""
    found, found_values = structure_digests(obj)
    for path in sorted(set(found) | set(digests)):
        if found.get(path) != digests.get(path):
            raise IntegrityError(
                f"{where} is damaged: tensor {path!r} does not match its recorded SHA-256 checksum"
            )
    if found_values != values:
        raise IntegrityError(
            f"{where} is damaged: its non-tensor values (options, counters, history) do not match "
            "their recorded SHA-256 checksum"
        )


def member_path(folder: str | os.PathLike[str], name: str, *, what: str) -> Path:
    """``folder/name`` resolved; `IntegrityError` if it leaves ``folder`` (``../x``, ``/x``, links).

    ``what`` says where the name was read, e.g. ``"the shard list of model.safetensors.index.json"``.
    """
    root = Path(folder).resolve()
    if not isinstance(name, str) or not name or os.path.isabs(name):
        raise IntegrityError(f"{what} names {name!r}; only file names inside {root} are allowed")
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise IntegrityError(f"{what} names {name!r}, which lies outside {root}; refusing to read it")
    return target


def _file_entry(path: Path, tensors: Mapping[str, torch.Tensor] | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"sha256": file_digest(path), "bytes": path.stat().st_size}
    if tensors is not None:
        entry["tensors"] = {name: tensor_digest(t) for name, t in tensors.items()}
    return entry


def write_sidecar(
    folder: str | os.PathLike[str],
    sidecar: str,
    files: Mapping[str, Mapping[str, torch.Tensor] | None],
) -> Path:
    """Write ``folder/sidecar``: per file (a path relative to ``folder``) its digest and size.

    ``files`` maps each name to its tensors by name (recorded one digest each, so that a
    damaged file names the tensor) or to None (the file's digest only).
    """
    root = Path(folder)
    entries = {name: _file_entry(root / name, tensors) for name, tensors in sorted(files.items())}
    record = {"format": SIDECAR_FORMAT, "version": 1, "files": entries}
    out = root / sidecar
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out


def read_sidecar(folder: str | os.PathLike[str], sidecar: str) -> dict[str, Any] | None:
    """The file entries of ``folder/sidecar``, or None if there is none (written before checksums)."""
    path = Path(folder) / sidecar
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        files = record["files"] if record.get("format") == SIDECAR_FORMAT else None
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        files = None
    if not isinstance(files, dict):
        raise IntegrityError(f"{path} is damaged or not a geta checksum file; it cannot vouch for {folder}")
    return files


def verify_file(
    folder: str | os.PathLike[str],
    name: str,
    sidecar: str,
    *,
    load_tensors: Callable[[Path], Mapping[str, torch.Tensor]] | None = None,
) -> dict[str, Any] | None:
    """Check ``folder/name`` against ``folder/sidecar``; return its entry (None: nothing recorded).

    A file whose bytes differ raises `IntegrityError`; with ``load_tensors`` (how to read the
    file's tensors safely) and tensors recorded, the message names the tensor that changed.
    """
    files = read_sidecar(folder, sidecar)
    entry = files.get(name) if files is not None else None
    if not isinstance(entry, dict):
        return None
    path = member_path(folder, name, what=f"{Path(folder) / sidecar}")
    if not path.is_file():
        raise IntegrityError(f"{path} is missing; {sidecar} records it as part of {folder}")
    if file_digest(path) == entry.get("sha256"):
        return entry
    recorded = entry.get("tensors")
    if load_tensors is not None and isinstance(recorded, dict):
        try:
            tensors = load_tensors(path)
        except Exception:  # too damaged to load: the file-level message below says enough
            tensors = None
        if tensors is not None:
            verify_tensors(tensors, recorded, where=str(path))
    raise IntegrityError(
        f"{path} is damaged: its bytes do not match the SHA-256 checksum recorded in {sidecar}"
    )


def verify_tensors(tensors: Mapping[str, torch.Tensor], recorded: Mapping[str, str], *, where: str) -> None:
    """Raise `IntegrityError` naming the first tensor of ``tensors`` whose digest is not ``recorded``."""
    for name in _names(tensors, recorded):
        t = tensors.get(name)
        if t is None or tensor_digest(t) != recorded.get(name):
            raise IntegrityError(
                f"{where} is damaged: tensor {name!r} does not match its recorded SHA-256 checksum"
            )


def _names(tensors: Mapping[str, torch.Tensor], recorded: Mapping[str, str]) -> Iterator[str]:
    yield from recorded
    yield from (n for n in tensors if n not in recorded)
