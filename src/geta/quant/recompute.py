"""`recompute_quantized`: keep a fake-quantized tensor for backward as its recipe, not its values.

A layer that reads a fake-quantized tensor Q(x) (a weight's Q(W), an input quantizer's Q(x))
saves Q(x) for its backward, while the fake-quant op itself saves x: two full-size copies of
the same data. Inside ``with recompute_quantized():`` autograd keeps, instead of Q(x), a recipe
(x, which the op holds anyway, and the three scalars) and recomputes Q(x) when the backward
needs it: one elementwise pass per quantized tensor, bit for bit the forward's values (the op is
deterministic, and autograd's version counters still guard x and the scalars against in-place
changes). This removes the second copy of every quantized weight and layer input, the memory
difference between geta training and float training (docs/benchmarks.md).

Only the forward needs to run inside the context (that is where tensors are saved):

>>> import torch, geta
>>> layer = torch.nn.Linear(4, 3)
>>> q = geta.quant.LearnableQuantizer(init_bits=4)
>>> x = torch.randn(2, 4)
>>> with geta.quant.recompute_quantized():
...     loss = torch.nn.functional.linear(q(x), layer.weight).sum()
>>> loss.backward()

Eager mode only: under ``torch.compile`` the partitioner already decides what to recompute.
The context shadows saved-tensor hooks of an enclosing context (CPU offloading, for example)
for the tensors saved inside it; do not nest it inside such a context.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["RECIPE", "recompute_quantized"]

RECIPE = "_geta_fake_quant_recipe"  # attribute of an eager fake-quant output: (x, d, q_m, t, signed)


class _Recipe:
    """What a saved fake-quant output (or a view of one) is rebuilt from: no tensor data of its
    own beyond x, which the op keeps anyway."""

    __slots__ = ("args", "view")

    def __init__(self, args: tuple, view: tuple | None) -> None:
        self.args = args
        self.view = view  # (size, stride, storage offset) of a view of the output, or None


def _pack(t: Tensor) -> Tensor | _Recipe:
    if type(t) is not Tensor:
        return t
    base = t if t._base is None else t._base  # layers save views: linear's weight.t(), reshapes
    recipe = getattr(base, RECIPE, None)
    if recipe is None:
        return t
    return _Recipe(recipe, None if base is t else (t.size(), t.stride(), t.storage_offset()))


def _unpack(saved: Tensor | _Recipe) -> Tensor:
    if not isinstance(saved, _Recipe):
        return saved
    with torch.no_grad():  # the STE choice does not change the forward
        out = torch.ops.geta.fake_quant(*saved.args, "clipped")
    return out if saved.view is None else out.as_strided(*saved.view)


@contextlib.contextmanager
def recompute_quantized() -> Iterator[None]:
    """Within the block, tensors saved for backward that are fake-quant outputs are kept as
    recipes and recomputed in the backward (see the module docstring)."""
    with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
        yield
