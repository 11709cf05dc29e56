"""Byte-level language-modelling data: windows of a text file's bytes and their next bytes.

The default text is the source of a few Python standard-library modules, read from the local
installation (no download). The last tenth of the byte stream is the test set, so no test
window overlaps a training window.

>>> bundle = load_text(None)
>>> bundle.task.value, bundle.num_classes, bundle.input_shape
('lm', 256, (64,))
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from geta.recipes.bundle import DataBundle, Task
from geta.recipes.errors import RecipeError

__all__ = ["load_text", "default_corpus", "SEQ_LEN", "VOCAB_SIZE"]

SEQ_LEN = 64  # tokens per training window
VOCAB_SIZE = 256  # byte-level tokens
_DEFAULT_MODULES = ("textwrap", "string", "shlex", "fnmatch", "heapq", "bisect", "colorsys", "glob")
_MAX_BYTES = 400_000  # longer texts are truncated: the recipes are meant to be tiny
_TEST_FRACTION = 0.1


def default_corpus() -> bytes:
    """The concatenated source of a few standard-library modules (about 100 kB)."""
    parts: list[bytes] = []
    for name in _DEFAULT_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            parts.append(Path(spec.origin).read_bytes())
    if not parts:
        raise RecipeError("no standard-library source found for the default text; pass --data text:FILE")
    return b"\n".join(parts)


def _windows(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows (N, SEQ_LEN) of ``data`` and the byte that follows each position."""
    n = (len(data) - 1) // SEQ_LEN
    x = data[: n * SEQ_LEN].view(n, SEQ_LEN)
    y = data[1 : n * SEQ_LEN + 1].view(n, SEQ_LEN)
    return x.clone(), y.clone()


def load_text(path: str | None) -> DataBundle:
    """Byte-level windows of ``path`` (default: `default_corpus`), split 90/10 in order."""
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise RecipeError(f"text file {file} does not exist; pass --data text:FILE with a readable file")
        raw = file.read_bytes()
    else:
        raw = default_corpus()
    raw = raw[:_MAX_BYTES]
    min_bytes = 20 * (SEQ_LEN + 1)
    if len(raw) < min_bytes:
        raise RecipeError(
            f"text {path or '(default)'} has {len(raw)} bytes; language modelling needs at "
            f"least {min_bytes} (20 windows of {SEQ_LEN})"
        )
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    cut = int(len(data) * (1 - _TEST_FRACTION))
    x_tr, y_tr = _windows(data[:cut])
    x_te, y_te = _windows(data[cut:])
    return DataBundle("text", Task.LM, x_tr, y_tr, x_te, y_te, VOCAB_SIZE)
