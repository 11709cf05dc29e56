"""The ``lm`` task's data: a pretrained model compressed with a little data, as LLM users do.

Three disjoint byte-level texts, all Python standard-library source read from the local
installation (no download):

- *pretraining* (`pretraining_data`): the source of `PRETRAIN_MODULES` (about 270 kB) minus
  the calibration blocks; the shared dense model is trained on it to convergence, once per seed;
- *calibration* (`calibration_data`): every `CALIB_EVERY`-th block of `BLOCK_WINDOWS` windows
  of the same text (about 8 % of its tokens, spread over all its modules); the only data any
  compression method sees;
- *held-out* (`held_out`): `HELD_OUT_MODULES`, modules none of the splits contain; the metric
  is the perplexity on it, against the dense model's.

Windows are `SEQ_LEN` bytes, non-overlapping; window ``i`` covers bytes ``[64 i, 64 i + 64]``
(its input and the byte that follows it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "BLOCK_WINDOWS",
    "CALIB_EVERY",
    "HELD_OUT_MODULES",
    "PRETRAIN_MODULES",
    "SEQ_LEN",
    "calibration_data",
    "calibration_mask",
    "held_out",
    "pretraining_data",
]

SEQ_LEN = 64
PRETRAIN_MODULES = ("textwrap", "string", "shlex", "fnmatch", "heapq", "bisect", "colorsys", "glob",
                    "functools", "contextlib", "random", "fractions", "tokenize", "operator",
                    "gettext")  # fmt: skip
HELD_OUT_MODULES = ("pprint", "calendar")  # about 49 kB, in no split above
BLOCK_WINDOWS = 16  # calibration is taken in runs of 16 windows (1 kB of text)
CALIB_EVERY = 12  # one block in 12 is calibration (352 of the 4299 windows, 8.2 %)


def _source(modules: tuple[str, ...]) -> Tensor:
    """The concatenated source of ``modules`` as an int64 byte stream."""
    parts = []
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise RuntimeError(f"standard-library module {name!r} has no source file here")
        parts.append(Path(spec.origin).read_bytes())
    return torch.frombuffer(bytearray(b"\n".join(parts)), dtype=torch.uint8).long()


def _windows(stream: Tensor) -> tuple[Tensor, Tensor]:
    """Non-overlapping windows (N, SEQ_LEN) and their next-byte targets."""
    n = (len(stream) - 1) // SEQ_LEN
    x = stream[: n * SEQ_LEN].view(n, SEQ_LEN)
    return x.clone(), stream[1 : n * SEQ_LEN + 1].view(n, SEQ_LEN).clone()


def calibration_mask(windows: int, block: int = BLOCK_WINDOWS, every: int = CALIB_EVERY) -> Tensor:
    """True for the windows of the calibration split: the last block of every ``every`` blocks.

    >>> calibration_mask(8, block=2, every=2).tolist()
    [False, False, True, True, False, False, True, True]
    """
    return (torch.arange(windows) // block) % every == every - 1


def _split(calibration: bool) -> tuple[Tensor, Tensor]:
    x, y = _windows(_source(PRETRAIN_MODULES))
    keep = calibration_mask(len(x))
    keep = keep if calibration else ~keep
    return x[keep], y[keep]


def held_out() -> tuple[Tensor, Tensor]:
    """Windows of `HELD_OUT_MODULES`: the text every method is scored on."""
    return _windows(_source(HELD_OUT_MODULES))


def pretraining_data() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x, y) of the pretraining split, then the held-out windows (the dense model's score)."""
    return (*_split(calibration=False), *held_out())


def calibration_data() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x, y) of the calibration split (all any method trains on), then the held-out windows."""
    return (*_split(calibration=True), *held_out())
