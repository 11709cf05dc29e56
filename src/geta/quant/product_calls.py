"""One forward's product calls: intercepted, matched to their call, their operands quantized.

`ProductMode` is the ``torch.overrides.TorchFunctionMode`` that `geta.quant.products` pushes
while a module owning product quantizers runs its forward (the module docstring there tells the
whole mechanism). For each call of a product function (`FUNCTIONS`) it decides which of the
owner's calls it is (`ProductMode.call_index`): in an eager forward by its call site
(`geta.quant.call_sites`) once the owner has learned the sites, else (under ``torch.compile``,
where frames cannot be read, or before the sites are known) by its position among the forward's
product calls. It then checks the call's kind and runs the call with that call's operand
quantizers. The owner is any object with the attributes of `CallOwner` (in practice
`geta.quant.products.ProductQuantizers`, which sits above this module).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from geta.errors import GetaError
from geta.ops.traits import ATTENTION, PRODUCT_KINDS
from geta.quant.call_sites import Site, SiteCounter, describe_site
from geta.quant.eager_attention import SDPA_ARGS, quantized_attention
from geta.quant.quantizer import LearnableQuantizer

__all__ = ["FUNCTIONS", "LABELS", "OPERANDS", "CallOwner", "ProductMode", "ProductRecord"]

# The torch functions the mode intercepts, by the kind of node each one leaves in the graph
# (declared with the kinds, `geta.ops.traits.PRODUCT_KINDS`).
FUNCTIONS: dict[Callable[..., Any], str] = {f: k.name for k in PRODUCT_KINDS.values() for f in k.functions}
OPERANDS = {name: len(kind.operands) for name, kind in PRODUCT_KINDS.items()}
LABELS = {name: kind.operands for name, kind in PRODUCT_KINDS.items()}


@dataclass
class ProductRecord:
    """What `record_products` saw: product kinds per forward call, and operand peaks.

    ``kinds[module]`` has one tuple per forward of ``module`` (the kinds of its product calls in
    order); ``peaks[quantizer]`` is the largest magnitude its operand reached (for an unsigned
    quantizer: the largest value), before quantization.
    """

    kinds: dict[nn.Module, list[tuple[str, ...]]] = field(default_factory=dict)
    peaks: dict[LearnableQuantizer, float] = field(default_factory=dict)

    def note(self, quantizer: nn.Module, x: Tensor) -> None:
        if not isinstance(quantizer, LearnableQuantizer) or x.numel() == 0:
            return
        values = x.detach().abs() if quantizer.signed else x.detach().clamp_min(0.0)
        self.peaks[quantizer] = max(float(values.amax()), self.peaks.get(quantizer, 0.0))


class CallOwner(Protocol):
    """What a `ProductMode` reads from the holder of a module's product quantizers."""

    kinds: tuple[str, ...]  # the kind of every product call of one forward, in captured order
    operands: nn.ModuleDict  # str(call) -> its operand quantizers
    sites: dict[Site, int]  # call site -> call index; empty until learned
    _record: ProductRecord | None  # set while `geta.quant.products.record_products` runs


class ProductMode(TorchFunctionMode):
    """Quantizes the operands of the owner's product calls during one forward of it."""

    def __init__(self, owner: CallOwner, module: str) -> None:
        super().__init__()
        self.owner = owner
        self.module = module  # the running module's class name, for errors
        self.seen: list[str] = []  # kinds of the product calls so far
        self.sites: list[Site] = []  # their call sites (eager forwards only)
        self.counter = SiteCounter()

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        kind = FUNCTIONS.get(func)
        if kind is None:
            return func(*args, **kwargs)
        call = self.call_index(kind)
        expected = self.owner.kinds[call] if call < len(self.owner.kinds) else None
        if kind != expected and self.owner._record is None:  # (calibration records it instead)
            raise self.mismatch()
        slots = self.owner.operands[str(call)] if str(call) in self.owner.operands else None
        if slots is None or len(slots) != OPERANDS[kind]:  # not quantized (or not as recorded)
            return func(*args, **kwargs)
        quantizers = [functools.partial(self._quantize, slot) for slot in slots]
        if kind == ATTENTION:
            bound = {**dict(zip(SDPA_ARGS, args, strict=False)), **kwargs}
            q, k, v = (bound.pop(name) for name in SDPA_ARGS[:3])
            return quantized_attention(q, k, v, quantizers, **bound)
        a, b = quantizers[0](args[0]), quantizers[1](args[1])
        return func(a, b, *args[2:], **kwargs)

    def call_index(self, kind: str) -> int:
        """Which of the owner's calls this product call is: by its site in an eager forward once
        the sites are known, else (compiling, or sites not learned yet) by its position."""
        position = len(self.seen)
        self.seen.append(kind)
        if torch.compiler.is_compiling():  # frames cannot be read while dynamo traces
            return position
        site = self.counter.site()
        self.sites.append(site)
        known = self.owner.sites
        if not known:
            return position
        call = known.get(site)
        if call is None:
            if self.owner._record is None:
                raise self.unknown_site(site)
            return len(self.owner.kinds)  # (calibration) none of the calls: it runs in float
        return call

    def learn_sites(self) -> None:
        """After a forward that ran the owner's calls in the captured order (same kinds, same
        count), remember which site each call has, unless known already."""
        if not self.owner.sites and len(self.sites) == len(self.seen) and self.seen == list(self.owner.kinds):
            self.owner.sites = {site: call for call, site in enumerate(self.sites)}

    def mismatch(self) -> GetaError:
        """The error for a forward whose product calls are not the ones quantized."""
        return GetaError(
            f"{self.module}: its forward called the products {self.seen} where its product quantizers "
            f"were attached for {list(self.owner.kinds)} (the calls of the captured graph); "
            "run the forward as it was captured, or detach them with "
            "geta.quant.detach_product_quantizers (the products then run in float)"
        )

    def unknown_site(self, site: Site) -> GetaError:
        """The error for a product call at a site none of the captured calls was made from."""
        known = ", ".join(
            describe_site(s) for s in sorted(self.owner.sites, key=self.owner.sites.__getitem__)
        )
        return GetaError(
            f"{self.module}: its forward called the products {self.seen}, the last at "
            f"{describe_site(site)}, which is none of the sites of the calls its product quantizers "
            f"were attached for: {known} (the forward differs from the one captured); run the forward "
            "as it was captured, or detach them with geta.quant.detach_product_quantizers"
        )

    def _quantize(self, quantizer: nn.Module, x: Tensor) -> Tensor:
        record = self.owner._record
        if record is not None:  # calibration: float statistics, the operand passes unquantized
            record.note(quantizer, x)
            return x
        return quantizer(x)
