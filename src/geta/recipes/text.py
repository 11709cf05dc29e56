"""Language-modelling data: a token stream cut into windows and the tokens that follow them.

Two ways in, one way out (`lm_bundle`):

- byte-level (`load_text`, the built-in recipes' default): every byte of a text is a token
  (vocabulary 256); the default text is the source of a few Python standard-library modules,
  read from the local installation (no download);
- tokenized (`geta.recipes.tokens`): documents encoded with a Hugging Face tokenizer.

The last tenth of the token stream is the test set, so no test window overlaps a training window.

>>> bundle = load_text(None)
>>> bundle.task.value, bundle.num_classes, bundle.input_shape
('lm', 256, (64,))
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor

from geta.recipes.bundle import DataBundle, Task
from geta.recipes.errors import RecipeError

__all__ = ["load_text", "default_corpus", "lm_bundle", "text_files", "SEQ_LEN", "VOCAB_SIZE"]

SEQ_LEN = 64  # bytes per training window of the byte-level data
VOCAB_SIZE = 256  # byte-level tokens
_DEFAULT_MODULES = ("textwrap", "string", "shlex", "fnmatch", "heapq", "bisect", "colorsys", "glob")
_MAX_BYTES = 400_000  # longer byte-level texts are truncated: the recipes are meant to be tiny
_TEST_FRACTION = 0.1
_MIN_BYTE_WINDOWS = 20


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


def text_files(path: str) -> list[Path]:
    """``path`` itself (a file), or every UTF-8 file under it (a directory), sorted; hidden ones skipped."""
    root = Path(path).expanduser()
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise RecipeError(
            f"text {root} does not exist; pass --data text:FILE or text:DIR (a folder of text files)"
        )
    files = []
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in file.relative_to(root).parts):
            continue
        try:
            file.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary files are not text
        files.append(file)
    if not files:
        raise RecipeError(
            f"text folder {root} holds no UTF-8 text files; pass a folder of .txt/.md/.py files"
        )
    return files


def _windows(stream: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping windows (N, seq_len) of ``stream`` and the token that follows each position."""
    n = (len(stream) - 1) // seq_len
    x = stream[: n * seq_len].view(n, seq_len)
    y = stream[1 : n * seq_len + 1].view(n, seq_len)
    return x.clone(), y.clone()


def lm_bundle(name: str, stream: Tensor, vocab_size: int, seq_len: int, *, where: str) -> DataBundle:
    """Windows of the int64 token ``stream``: the first 90 % train, the last 10 % test, in order.

    ``where`` names the data in the error raised when either split gets no window.
    """
    cut = int(len(stream) * (1 - _TEST_FRACTION))
    x_tr, y_tr = _windows(stream[:cut], seq_len)
    x_te, y_te = _windows(stream[cut:], seq_len)
    if len(x_tr) == 0 or len(x_te) == 0:
        need = (seq_len + 1) * 10
        raise RecipeError(
            f"{where} gives {len(stream)} tokens, too few for windows of {seq_len} in both the training "
            f"and the test split (about {need} needed); pass more text or a smaller --seq-len"
        )
    return DataBundle(name, Task.LM, x_tr, y_tr, x_te, y_te, vocab_size)


def load_text(path: str | None, seq_len: int | None = None) -> DataBundle:
    """Byte-level windows of ``path`` (a file or a folder; default: `default_corpus`), split 90/10."""
    seq_len = seq_len or SEQ_LEN
    if path:
        raw = b"\n".join(f.read_bytes() for f in text_files(path))
    else:
        raw = default_corpus()
    raw = raw[:_MAX_BYTES]
    min_bytes = _MIN_BYTE_WINDOWS * (seq_len + 1)
    if len(raw) < min_bytes:
        raise RecipeError(
            f"text {path or '(default)'} has {len(raw)} bytes; language modelling needs at "
            f"least {min_bytes} ({_MIN_BYTE_WINDOWS} windows of {seq_len})"
        )
    stream = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    return lm_bundle("text", stream, VOCAB_SIZE, seq_len, where=f"text {path or '(default)'}")
