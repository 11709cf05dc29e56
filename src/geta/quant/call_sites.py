"""Call sites: which line of the user's code made a call that reached a torch function mode.

A product call (`geta.quant.products`) is identified by where it comes from, not by how many
product calls came before it. Its *site* is the innermost Python frame outside torch and outside
this package (``geta.quant``: the mode and the quantizers themselves) at the moment of the call:
the code object's file name, its function name and the line being run. A line run twice in one
forward (a loop, or a helper called twice from one line) makes two calls at one site; their
*occurrence* numbers 0, 1, ... tell them apart (`SiteCounter`).

Frames cannot be read while ``torch.compile`` traces (``sys._getframe`` is not traceable), so
callers ask `torch.compiler.is_compiling` first.

>>> def caller() -> tuple[str, str, int]:
...     return call_site()
>>> _, function, line = caller()
>>> function, line > 0
('caller', True)
>>> counter = SiteCounter()
>>> [counter.occurrence(("f.py", "g", 3)) for _ in range(2)], counter.occurrence(("f.py", "g", 4))
([0, 1], 0)
"""

from __future__ import annotations

import os
import sys

import torch

__all__ = ["Site", "SiteCounter", "call_site", "describe_site"]

Site = tuple[str, str, int, int]  # (file name, function name, line, occurrence in one forward)

# Frames in these directories are never a call's site: torch's Python wrappers (Tensor.__matmul__,
# overrides, module call machinery) and geta's own quantization code.
_SKIPPED = (
    os.path.dirname(torch.__file__) + os.sep,
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
)


def call_site() -> tuple[str, str, int]:
    """(file name, function name, line) of the innermost frame of the caller's stack that is
    neither in torch nor in ``geta.quant``; ``("<unknown>", "<unknown>", 0)`` if there is none."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_SKIPPED):
        frame = frame.f_back
    if frame is None:
        return ("<unknown>", "<unknown>", 0)
    return (frame.f_code.co_filename, frame.f_code.co_name, frame.f_lineno)


class SiteCounter:
    """Numbers the calls made at each site during one forward (0 for the first, 1, ...)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}

    def occurrence(self, where: tuple[str, str, int]) -> int:
        """The occurrence number of a call at ``where``, counting it."""
        n = self.counts.get(where, 0)
        self.counts[where] = n + 1
        return n

    def site(self) -> Site:
        """The `Site` of the call being made now (its frame, then its occurrence number)."""
        where = call_site()
        return (*where, self.occurrence(where))


def describe_site(site: Site) -> str:
    """``file:line (function)``, with the occurrence when it is not the first at that line."""
    filename, function, line, occurrence = site
    more = f", occurrence {occurrence}" if occurrence else ""
    return f"{filename}:{line} ({function}{more})"
