"""The vocabulary of op facts: what an op does to values, declared once with its handler.

An op's handler (`geta.ops.registry.register_op`) states how channels flow through it; the
same registration declares what the rest of geta must know about the op's *values*, as
traits. Every other layer asks the registry (`geta.ops.registry.has_trait`, `ops_with`,
`mac_rule`, `product_kind`) instead of keeping a table of its own:

- `Trait.SAME_VALUES`: the output holds the input's values (a cast, a copy, a fake-quant). A
  weight seen through it is still the weight (quantizer binding, MAC counting);
- `Trait.RESHAPES`: the output holds the input's elements in another layout (view, transpose,
  expand). Weights and signs are followed through it;
- `Trait.PART`: the output is a part of the input (slice, split, select, a tuple item);
- `Trait.KEEPS_SIGN`: a non-negative input gives a non-negative output, though values change
  (pools, mean, dropout, cat). Signs are followed through it;
- `Trait.NONNEGATIVE`: the output is never negative (relu, sigmoid, softmax): a quantizer
  reading it needs no sign;
- `Trait.SOFTMAX`: a softmax; the products before and after it are named attention's scores and
  weights·values in reports (`geta.reporting.naming`).

A *product* op multiplies two activations (attention's q·kᵀ and p·v): its registration names
its `ProductKind` (`MATMUL` or `ATTENTION`), which lists the torch functions whose calls leave
such a node in a captured graph and the operands quantized at the call (`geta.quant.products`).

This module imports nothing from geta: every layer may read it.

>>> Trait.NONNEGATIVE in SIGN_THROUGH
False
>>> PRODUCT_KINDS[MATMUL].operands
('a', 'b')
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ATTENTION",
    "MATMUL",
    "PRODUCT_KINDS",
    "SIGN_THROUGH",
    "VALUES_THROUGH",
    "ProductKind",
    "Trait",
]


class Trait(enum.Enum):
    """A fact about an op's values, declared with ``register_op(..., traits=...)``."""

    SAME_VALUES = "passes its input's values through (a cast, a copy, a fake-quant)"
    RESHAPES = "rearranges its input's elements only (view, transpose, expand)"
    PART = "returns a part of its input (slice, split, select, tuple item)"
    KEEPS_SIGN = "a non-negative input gives a non-negative output (pool, mean, dropout)"
    NONNEGATIVE = "its output is never negative (relu, sigmoid, softmax)"
    SOFTMAX = "normalises along a dim into weights (softmax): products beside it are attention's"


VALUES_THROUGH = frozenset({Trait.SAME_VALUES, Trait.RESHAPES, Trait.PART})
"""Ops an operand is traced back through to the tensor it comes from (first input)."""

SIGN_THROUGH = VALUES_THROUGH | {Trait.KEEPS_SIGN}
"""Ops a sign (or a parameter origin) is followed back through, first input to output."""


MATMUL = "matmul"  # a two-operand product: operands [a, b]
ATTENTION = "attention"  # scaled dot-product attention: operands [q, k, v, p]


@dataclass(frozen=True)
class ProductKind:
    """A kind of product call: its operands and the torch functions that make one.

    ``functions`` are the Python-level calls whose one call leaves one node of this kind in a
    captured graph (``torch.matmul``, ``x @ y``, ...): `geta.quant.products` intercepts them.
    """

    name: str
    operands: tuple[str, ...]
    functions: tuple[Callable[..., Any], ...]


PRODUCT_KINDS: dict[str, ProductKind] = {
    MATMUL: ProductKind(
        MATMUL,
        ("a", "b"),
        (torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.mm, Tensor.mm, torch.bmm, Tensor.bmm),
    ),
    ATTENTION: ProductKind(ATTENTION, ("q", "k", "v", "p"), (F.scaled_dot_product_attention,)),
}
"""Kind name -> `ProductKind`; a product op's registration names one of these."""
