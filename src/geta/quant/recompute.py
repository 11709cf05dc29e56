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

`geta.prepare` makes this the default for the model it prepares (``Config.recompute_quantized``):
`recompute_in_forward` runs each eager forward of a module inside the context, unless other
saved-tensor hooks are already active (then they are left to do their job), grad is off, or
the forward is being compiled or exported.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["RECIPE", "recompute_in_forward", "recompute_quantized"]

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


_HANDLES = "_geta_recompute_handles"  # attribute of a module whose forwards recompute


class _ForwardRecompute:
    """A forward pre-hook that enters `recompute_quantized` and a forward hook that leaves it.

    Per thread, a stack says whether each running forward entered it (a module shared by threads,
    as ``nn.DataParallel``'s replicas are, or called inside itself)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:  # copies and pickles start with no forward running
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._local = threading.local()

    def _stack(self) -> list[contextlib.AbstractContextManager | None]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def enter(self, module: nn.Module, args: Any) -> None:
        if torch.compiler.is_compiling():  # the partitioner decides; nothing to undo in `leave`
            return
        busy = torch._C._autograd._top_saved_tensors_default_hooks(False) is not None
        if busy or not torch.is_grad_enabled() or torch.compiler.is_exporting():
            self._stack().append(None)
            return
        context = recompute_quantized()
        context.__enter__()
        self._stack().append(context)

    def leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if torch.compiler.is_compiling():
            return
        stack = self._stack()
        context = stack.pop() if stack else None
        if context is not None:
            context.__exit__(None, None, None)


def recompute_in_forward(module: nn.Module, on: bool = True) -> None:
    """Run every eager forward of ``module`` inside `recompute_quantized` (``on``), or stop.

    Idempotent; the hooks travel with copies of the module. Skipped, forward by forward, where
    saved-tensor hooks are already active (offloading, an explicit `recompute_quantized`), grad
    is off, or the forward is compiled or exported.

    >>> layer = torch.nn.Linear(4, 3)
    >>> recompute_in_forward(layer); len(layer._forward_pre_hooks)
    1
    >>> recompute_in_forward(layer, on=False); len(layer._forward_pre_hooks)
    0
    """
    for handle in module.__dict__.pop(_HANDLES, ()):
        handle.remove()
    if on:
        hooks = _ForwardRecompute()
        module.__dict__[_HANDLES] = (
            module.register_forward_pre_hook(hooks.enter),
            module.register_forward_hook(hooks.leave, always_call=True),
        )
