"""Quantizers on activation x activation products (attention's q·kᵀ and p·v).

A layer's input quantizer is a pre-hook on the layer (`geta.quant.attach`), but the operands of
attention's products are made *inside* a module's forward (q and k after the head split and the
rotary embedding, p after the softmax), where no hook can reach. geta quantizes them at the
call: while a module that owns product quantizers runs its forward, a
``torch.overrides.TorchFunctionMode`` (pushed by a forward pre-hook, popped by an
``always_call`` forward hook) sees the module's calls of

- ``torch.matmul`` / ``@`` / ``torch.mm`` / ``torch.bmm``: operand quantizers ``[a, b]``, the
  call becomes ``matmul(Q_a(a), Q_b(b))``;
- ``F.scaled_dot_product_attention``: operand quantizers ``[q, k, v, p]``. p, the softmax
  weights, exist only inside the fused kernel, so the call is computed in its eager form
  (`quantized_attention`: scores, mask, softmax, ``Q_p(p)``, p·v); the same function up to
  float rounding, with p materialised as eager attention does.

Which calls to quantize is decided once, from the captured graph (`geta.prepare`): call k of
the holder is the k-th product node of the module in the graph (an op registered with a product
kind, `geta.ops.registry.product_kind`, leaves one node per call of the kind's functions,
`geta.ops.traits.PRODUCT_KINDS`). Every call is counted, quantized or not, so weight products
(``x @ self.w``) keep their place.

At run time (`geta.quant.product_calls`) a call is found by its **call site**
(`geta.quant.call_sites`): the line of the innermost frame outside torch and ``geta.quant``
that made it, with its occurrence number at that line within the forward (a loop running one
line twice makes occurrences 0 and 1). The holder learns which site is which call on an eager
forward that runs the calls in the graph's order, checked kind by kind: the calibration forward
(`record_products`, which `geta.prepare` runs on every fresh holder), or else the holder's first
eager forward (a holder restored by `restore_product_quantizers`, or unpickled: pickling drops
the sites, since file names differ between installations; ``copy.deepcopy`` keeps them). From
then on an eager forward quantizes each call with the quantizers of its site, whatever order
the forward runs them in (a forward that computes one branch's ``p @ v`` before another's
``q @ k`` still gets each product's own quantizers). A call at a site the holder never saw
raises a `GetaError` naming the module, the site and the known sites.

While ``torch.compile`` traces (and ``torch.export``: `torch.compiler.is_compiling` is true in
both) frames cannot be read, so there the k-th product call of the forward gets the quantizers
of call k, as captured. Either way the calls are checked: a call of another kind than its
call's, one call too many or too few, raises a `GetaError` naming the module and both
sequences, instead of quantizing the wrong operands.
While `record_products` runs (calibration) a mismatch is recorded, not raised: the caller
detaches the module's quantizers (`geta.prepare` does, with a warning).

The two hooks are registered through torch's public API and removed through their handles
(kept on the holder; `copy.deepcopy` and pickling carry them over to the copy's hook tables).

Quantizers stay ordinary ``torch.ops.geta.fake_quant`` nodes in captured graphs (the mode runs
while ``torch.export`` traces), so reports and exports see them like any other. A model with
product quantizers survives ``copy.deepcopy`` and pickling (hooks are module-level functions,
quantizers are submodules).

>>> from torch import nn
>>> class Scores(nn.Module):
...     def forward(self, q, k):
...         return q @ k.transpose(-2, -1)  # (B, L, E) @ (B, E, S) -> (B, L, S)
>>> m = Scores()
>>> a, b = LearnableQuantizer(init_bits=2), LearnableQuantizer(init_bits=2)
>>> _ = attach_product_quantizers(m, (MATMUL,), {0: [a, b]})
>>> q, k = torch.tensor([[[0.4, 1.0]]]), torch.tensor([[[1.0, 0.2]]])
>>> m(q, k).detach()              # 2 bits: q -> (0, 1), k -> (1, 0); float: 0.6
tensor([[[0.]]])
>>> [(function, call) for (_, function, _, _), call in m.geta_product_quantizers.sites.items()]
[('forward', 0)]
>>> with record_products([m]) as seen:    # calibration: float operands, their peaks recorded
...     m(q, k).detach()
tensor([[[0.6000]]])
>>> seen.kinds[m], seen.peaks[a], seen.peaks[b]
([('matmul',)], 1.0, 1.0)
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from geta.config import STE
from geta.errors import GetaError
from geta.ops.traits import ATTENTION, MATMUL
from geta.quant.call_sites import Site
from geta.quant.eager_attention import quantized_attention
from geta.quant.product_calls import LABELS, OPERANDS, ProductMode, ProductRecord
from geta.quant.quantizer import LearnableQuantizer

__all__ = [
    "ATTENTION",
    "MATMUL",
    "PRODUCT_QUANTIZERS_ATTR",
    "ProductQuantizers",
    "ProductRecord",
    "attach_product_quantizers",
    "detach_product_quantizers",
    "product_quantizers",
    "quantized_attention",
    "record_products",
    "restore_product_quantizers",
]

PRODUCT_QUANTIZERS_ATTR = "geta_product_quantizers"  # submodule name on the module running them


class ProductQuantizers(nn.Module):
    """The operand quantizers of the products one module runs (a submodule of that module).

    ``kinds`` lists every product call of one forward, in call order (`MATMUL` or `ATTENTION`);
    ``operands[str(k)]`` holds the quantizers of call k when it is quantized: ``[a, b]`` for a
    matmul, ``[q, k, v, p]`` for attention. A slot may hold any module (``nn.Identity`` leaves
    that operand in float; an export may put its own quantize-dequantize module there).
    ``sites`` maps each call's `Site` to its index once an eager forward has shown them (empty
    until then; transient: not in `layout`, dropped by pickling, kept by ``copy.deepcopy``).
    """

    def __init__(self, kinds: Sequence[str]) -> None:
        super().__init__()
        unknown = sorted(set(kinds) - set(OPERANDS))
        if unknown:
            raise GetaError(f"unknown product kinds {unknown}; use {MATMUL!r} or {ATTENTION!r}")
        self.kinds = tuple(kinds)
        self.operands = nn.ModuleDict()
        self.labels: dict[str, tuple[str, ...]] = {}  # str(call) -> a display label per operand
        self.sites: dict[Site, int] = {}  # call site -> call index (learned on an eager forward)
        self._active: list[ProductMode] = []  # modes of the forwards running now (innermost last)
        self._record: ProductRecord | None = None  # set by `record_products`
        self._hooks: tuple[RemovableHandle, ...] = ()  # the owner's two hooks (`attach_product_quantizers`)

    def quantizers(self) -> list[LearnableQuantizer]:
        """Every geta quantizer held, in call order then operand order."""
        return [q for slots in self.operands.values() for q in slots if isinstance(q, LearnableQuantizer)]

    def slots(self) -> list[tuple[int, int, str, nn.Module]]:
        """(call, operand position, label, module) of every operand slot, in call order.

        Exports replace a slot (`replace`) by their own quantize-dequantize module; the call
        runs whatever module the slot holds.
        """
        return [
            (int(call), i, self.labels[call][i], module)
            for call, modules in self.operands.items()
            for i, module in enumerate(modules)
        ]

    def replace(self, call: int, position: int, module: nn.Module) -> nn.Module:
        """Put ``module`` into slot ``position`` of product call ``call``; return the old one."""
        old = self.operands[str(call)][position]
        self.operands[str(call)][position] = module
        return old

    def layout(self) -> dict[str, Any]:
        """What `restore_product_quantizers` needs to rebuild this holder (JSON-ready).

        ``{"kinds": [...], "calls": {"1": {"labels": [...], "quantizers": [{...}, null]}}}``: per
        quantized call, each slot's label and its quantizer's settings (``signed``, ``ste``,
        ``learn_exponent``; null for a slot left in float). The scalars are in the module's
        ``state_dict``.
        """
        calls = {
            call: {"labels": list(self.labels[call]), "quantizers": [_settings(m) for m in modules]}
            for call, modules in self.operands.items()
        }
        return {"kinds": list(self.kinds), "calls": calls}

    def extra_repr(self) -> str:
        return f"kinds={list(self.kinds)}, quantized_calls={[int(k) for k in self.operands]}"

    def __getstate__(self) -> dict[str, Any]:
        # transient: never copied or pickled; sites name files of this installation: re-learned
        return {**self.__dict__, "_active": [], "_record": None, "sites": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__({"sites": {}, **state})  # (pickled by a version without sites)

    def __deepcopy__(self, memo: dict[int, Any]) -> ProductQuantizers:
        """A copy in this process keeps the sites (pickling drops them, `__getstate__`)."""
        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        copied.__setstate__(copy.deepcopy({**self.__getstate__(), "sites": dict(self.sites)}, memo))
        return copied


def _settings(slot: nn.Module) -> dict[str, Any] | None:
    if not isinstance(slot, LearnableQuantizer):
        return None
    return {"signed": slot.signed, "ste": slot.ste.value, "learn_exponent": slot.learn_exponent}


# ---------------------------------------------------------------------------------------------
# Attaching: a submodule and two hooks
# ---------------------------------------------------------------------------------------------


def _enter(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Forward pre-hook: push the mode of ``module``'s product quantizers."""
    owner = product_quantizers(module)
    if owner is None:
        return
    mode = ProductMode(owner, type(module).__name__)
    mode.__enter__()
    owner._active.append(mode)


def _exit(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    """Forward hook (``always_call``): pop the mode pushed by `_enter`, even if forward raised;
    a forward that completed with fewer product calls than attached for raises (`ProductMode`)."""
    owner = product_quantizers(module)
    if owner is None or not owner._active:
        return
    mode = owner._active.pop()
    mode.__exit__(None, None, None)
    if owner._record is not None:
        owner._record.kinds.setdefault(module, []).append(tuple(mode.seen))
    elif len(mode.seen) != len(owner.kinds) and not _raising():
        raise mode.mismatch()
    if not torch.compiler.is_compiling() and not _raising():
        mode.learn_sites()


def _raising() -> bool:
    """Is an exception of the forward being handled? (torch runs ``always_call`` hooks then;
    a compiled forward does not.)"""
    return not torch.compiler.is_compiling() and sys.exc_info()[0] is not None


def attach_product_quantizers(
    module: nn.Module,
    kinds: Sequence[str],
    operands: dict[int, Sequence[nn.Module]],
    labels: dict[int, Sequence[str]] | None = None,
) -> ProductQuantizers:
    """Quantize the operands of ``module``'s product calls; return the holder submodule.

    ``kinds`` are the kinds of all product calls one forward of ``module`` runs, in order;
    ``operands`` maps a call index to its operand quantizers (``[a, b]`` for `MATMUL`,
    ``[q, k, v, p]`` for `ATTENTION`); ``labels`` names them for display (default: those
    letters). The quantizers are moved to the device of the module's parameters; initialise
    them afterwards (e.g. from `record_products` peaks).
    """
    if product_quantizers(module) is not None:
        raise GetaError(f"{type(module).__name__} already has product quantizers")
    holder = ProductQuantizers(kinds)
    for call, slots in sorted(operands.items()):
        if not 0 <= call < len(holder.kinds):
            raise GetaError(f"product call {call} is out of range: the module runs {len(holder.kinds)}")
        want = OPERANDS[holder.kinds[call]]
        if len(slots) != want:
            raise GetaError(f"a {holder.kinds[call]} call has {want} operand quantizers, got {len(slots)}")
        holder.operands[str(call)] = nn.ModuleList(slots)
        names = (labels or {}).get(call, LABELS[holder.kinds[call]])
        if len(names) != want:
            raise GetaError(f"a {holder.kinds[call]} call needs {want} labels, got {list(names)}")
        holder.labels[str(call)] = tuple(names)
    device = next((p.device for p in module.parameters()), None)
    if device is not None:
        holder.to(device=device)
    module.add_module(PRODUCT_QUANTIZERS_ATTR, holder)
    holder._hooks = (
        module.register_forward_pre_hook(_enter),
        module.register_forward_hook(_exit, always_call=True),
    )
    return holder


def product_quantizers(module: nn.Module) -> ProductQuantizers | None:
    """The product quantizers attached to ``module``, or None."""
    found = getattr(module, PRODUCT_QUANTIZERS_ATTR, None)
    return found if isinstance(found, ProductQuantizers) else None


def detach_product_quantizers(module: nn.Module) -> ProductQuantizers | None:
    """Remove ``module``'s product quantizers and their hooks (products run in float); return them.

    The hooks are removed through the handles the holder keeps. (A holder unpickled from a
    version that kept none leaves its hooks behind, inert: they act only while the module has
    product quantizers.)
    """
    holder = product_quantizers(module)
    if holder is None:
        return None
    delattr(module, PRODUCT_QUANTIZERS_ATTR)
    for handle in getattr(holder, "_hooks", ()):
        handle.remove()
    holder._hooks = ()
    return holder


def restore_product_quantizers(module: nn.Module, layout: dict[str, Any]) -> ProductQuantizers:
    """Attach product quantizers to ``module`` as `ProductQuantizers.layout` describes them.

    The quantizers are fresh (``init_bits`` 16, qmax 1); load their scalars afterwards, e.g. with
    ``model.load_state_dict``: the holder has the same parameter names as the one described.
    """
    operands: dict[int, list[nn.Module]] = {}
    labels: dict[int, list[str]] = {}
    for call, entry in layout["calls"].items():
        operands[int(call)] = [
            nn.Identity()
            if q is None
            else LearnableQuantizer(signed=q["signed"], learn_exponent=q["learn_exponent"], ste=STE(q["ste"]))
            for q in entry["quantizers"]
        ]
        labels[int(call)] = list(entry["labels"])
    return attach_product_quantizers(module, layout["kinds"], operands, labels)


@contextlib.contextmanager
def record_products(modules: Sequence[nn.Module]) -> Iterator[ProductRecord]:
    """Record the product calls of ``modules`` (and their operand peaks) while the block runs.

    Use it around a forward on real inputs: ``peaks`` calibrate the quantizers (docs/method.md §1.4),
    ``kinds`` show whether each module ran the products its quantizers were attached for.
    """
    record = ProductRecord()
    holders = [h for h in (product_quantizers(m) for m in modules) if h is not None]
    for holder in holders:
        holder._record = record
    try:
        yield record
    finally:
        for holder in holders:
            holder._record = None
