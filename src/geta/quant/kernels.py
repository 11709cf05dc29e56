"""Fused CPU kernels behind the eager fake-quant op (docs/method.md §1.1, §1.3).

In eager mode each quantizer's plain implementation (`geta.quant.functional`, `geta.quant.ste`)
is a dozen elementwise passes over x, forward and backward, one of them ``pow``: on this CPU a
``pow`` over 1 M floats takes 3 ms, a multiply 0.1 ms, and a geta training step cost 2.4 to 2.7
float steps. So on the CPU, for a tensor of at least `MIN_ELEMENTS` elements, the op runs the
same formulas as *one* generated loop for the forward and one for the backward:
`geta.quant.fusable`'s functions, traced once per variant with a symbolic length
(``make_fx``) and compiled by inductor (``torch._inductor.standalone_compile``). The model
stays in eager mode; only the quantizer's arithmetic is compiled, and a kernel is called
directly, without ``torch.compile``'s guards (about 10 µs a call here, against 60 µs or more).
A learned exponent's u = m ** t is exp(t ln m) there (vectorised), and the backward's sums are
reductions inside its loop. Measured here (1 M floats, learned t, one thread): forward 6.1 ms
-> 2.1 ms, backward 13.7 ms -> 3.6 ms.

What the kernels change, and what they do not:

- Values equal the plain implementation's up to the last bits: exp(t ln m) may differ from
  ``pow`` in the last bit (so a value sitting exactly on a half step may round to the next
  level), and the scalar gradients are sums added in the loop's own order. The input gradient
  is the same bit for bit, and so is the forward for an exponent of exactly 1.
- A run is still deterministic: the same inputs give the same bits, so a resumed run equals
  an uninterrupted one, and ``recompute_quantized`` rebuilds exactly the forward's values.
- Each variant (forward or backward, signed or not, STE, which gradients, dtype) compiles the
  first time it runs in a process: a few seconds, less once inductor's on-disk cache holds it.
- They need what inductor needs on a CPU, a C++ compiler. If compiling fails, geta warns once
  and uses the plain implementation for the rest of the process.

`use_fused_kernels` (a context) and the ``GETA_FUSED_KERNELS=0`` environment variable turn
them off: the plain implementation then runs everywhere, bit for bit as before. It also runs
for tensors below `MIN_ELEMENTS` (the call and its Python costs would outweigh the fusion), for
float64, for tensors whose memory has gaps (a strided slice), and on accelerators (not yet
measured on a GPU).
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from geta.config import STE
from geta.quant.fusable import quantize, ste_grads

__all__ = ["MIN_ELEMENTS", "backward", "enabled", "forward", "use_fused_kernels"]

MIN_ELEMENTS = 1 << 12  # below this a tensor takes the plain implementation
_DTYPES = frozenset({torch.float32, torch.bfloat16, torch.float16})
_PLAIN = (Tensor, torch.nn.Parameter)  # exact types: no subclass (fake, functional, DTensor)

_on = os.environ.get("GETA_FUSED_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")
_broken: str | None = None  # why compiling failed, once it has
_compiled: dict[tuple, Callable] = {}  # variant -> compiled kernel


def enabled() -> bool:
    """Whether the eager op uses the fused kernels (on by default; see the module docstring)."""
    return _on and _broken is None


@contextlib.contextmanager
def use_fused_kernels(on: bool) -> Iterator[None]:
    """Within the block the eager op uses the fused kernels (``on``) or the plain implementation.

    >>> with use_fused_kernels(False):
    ...     enabled()
    False
    """
    global _on
    before, _on = _on, bool(on)
    try:
        yield
    finally:
        _on = before


def _flat(t: Tensor) -> Tensor | None:
    """A 1-d view of ``t`` over its memory in order, if t is dense in some order of its dims
    (row-major, channels-last, a transposed view, ...), else None."""
    if t.is_contiguous():
        return t.detach().view(-1)
    expected = 1  # dims from the innermost out: each stride is the product of the sizes inside
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return None
        expected *= size
    return t.detach().as_strided((t.numel(),), (1,))


def _eligible(x: Tensor) -> bool:
    return (
        _on
        and _broken is None
        and type(x) in _PLAIN
        and x.device.type == "cpu"
        and x.dtype in _DTYPES
        and x.numel() >= MIN_ELEMENTS
    )


def _forward_graph(
    x: Tensor, step: Tensor, qmax: Tensor, exponent: Tensor, *, signed: bool, unit: bool
) -> Tensor:
    return quantize(x, step, qmax, exponent, signed, unit, exp_log=True)


def _backward_graph(
    g: Tensor,
    x: Tensor,
    step: Tensor,
    qmax: Tensor,
    exponent: Tensor,
    *,
    signed: bool,
    ste: STE,
    needs: tuple,
    unit: bool,
) -> list[Tensor]:
    grads = ste_grads(g, x, (step, qmax, exponent), signed, ste, needs, unit, exp_log=True)
    return [gr for gr in grads if gr is not None]


def _compile(fn: Callable, examples: list[Tensor]) -> Callable:
    """``fn`` traced with a symbolic length (one kernel for every size) and compiled by inductor."""
    from torch.fx.experimental.proxy_tensor import make_fx

    # traced outside any autocast region a first call may sit in: the kernel's dtypes are its own
    with torch.inference_mode(False), torch.no_grad(), torch.autocast("cpu", enabled=False):
        graph = make_fx(fn, tracing_mode="symbolic")(*examples)
        return torch._inductor.standalone_compile(graph, examples, dynamic_shapes="from_graph")


def _compile_variant(key: tuple, fn: Callable, like: list[Tensor]) -> Callable | None:
    """Compile the kernel of ``key`` from examples shaped ``like`` and keep it; None (and the
    kernels off for the process) if compiling fails."""
    global _broken
    examples = [
        torch.zeros(2 * MIN_ELEMENTS if t.dim() == 1 else t.shape, dtype=t.dtype) for t in like
    ]  # flat tensors get a length the kernel is not specialised to (any length works)
    try:
        _compiled[key] = _compile(fn, examples)
    except Exception as err:  # no C++ compiler, an inductor limitation: keep the plain path
        _broken = f"{type(err).__name__}: {err}".splitlines()[0]
        warnings.warn(
            f"geta: the fused fake-quant kernels could not be compiled ({_broken}); using the "
            "plain implementation (slower; the same values up to the last bits)",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    return _compiled[key]


def _scalar_key(scalars: tuple[Tensor, Tensor, Tensor]) -> tuple | None:
    """The scalars' dtypes, or None unless all three are 0-dim (the kernels' only shape)."""
    step, qmax, exponent = scalars
    if step.dim() or qmax.dim() or exponent.dim():
        return None
    return (step.dtype, qmax.dtype, exponent.dtype)


def forward(x: Tensor, scalars: tuple[Tensor, Tensor, Tensor], signed: bool, unit: bool) -> Tensor | None:
    """Q(x) by the fused kernel, or None where it does not apply (the caller then runs the plain
    implementation). ``scalars``: the raw (step, qmax, exponent); ``unit``: the exponent is
    exactly 1."""
    flat = _flat(x) if _eligible(x) else None
    dtypes = _scalar_key(scalars)
    if flat is None or dtypes is None:
        return None
    key = ("forward", x.dtype, dtypes, signed, unit)
    kernel = _compiled.get(key) or _compile_variant(
        key, functools.partial(_forward_graph, signed=signed, unit=unit), [flat, *scalars]
    )
    if kernel is None:
        return None
    with torch.no_grad():
        out = kernel(flat, *scalars)
    # x's shape and strides, as a tensor of its own rather than a view of the flat output:
    # `recompute_quantized` recognises a fake-quant output (or a view of one) by its base
    return out.as_strided(x.size(), x.stride()).detach()


def backward(
    g: Tensor,
    x: Tensor,
    scalars: tuple[Tensor, Tensor, Tensor],
    signed: bool,
    ste: STE,
    needs: tuple[bool, ...],
    unit: bool,
) -> tuple[Tensor | None, ...] | None:
    """(dL/dx, dL/dd, dL/dq_m, dL/dt) by the fused kernel, None where ``needs`` says no; or None
    where the kernel does not apply. dL/dx has the layout of x."""
    if not _eligible(x) or type(g) not in _PLAIN or g.dtype != x.dtype or not any(needs):
        return None
    fx, dtypes = _flat(x), _scalar_key(scalars)
    if fx is None or dtypes is None:
        return None
    if g.stride() != x.stride():  # one copy of g into x's layout: both flat in the same order
        g = torch.empty_strided(x.size(), x.stride(), dtype=g.dtype).copy_(g)
    fg = _flat(g)
    needs = tuple(needs[:4])
    key = ("backward", x.dtype, dtypes, signed, STE(ste), needs, unit)
    kernel = _compiled.get(key) or _compile_variant(
        key,
        functools.partial(_backward_graph, signed=signed, ste=STE(ste), needs=needs, unit=unit),
        [fg, fx, *scalars],
    )
    if kernel is None:
        return None
    with torch.no_grad():
        found = iter(kernel(fg, fx, *scalars))
    grads = [next(found) if n else None for n in needs]
    if grads[0] is not None:
        grads[0] = grads[0].as_strided(x.size(), x.stride())
    return tuple(grads)
