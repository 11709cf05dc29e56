"""Multiply-accumulate counts of ATen ops: the `MacRule` an op declares with its handler (docs/method.md §4).

Every op that multiplies activations by weights (or by other activations, as attention does)
declares one `MacRule` in its registration (``register_op(aten.linear, macs=LINEAR)``, see
`geta.ops.registry`): what kind of layer it is, which of its arguments are the multiplied
operands (a weight, if any, is found among them by the caller), and how many MACs one call
performs, computed from the shapes recorded on the captured graph (``node.meta["val"]``).

    conv            N·C_out·H_out·W_out · (C_in/groups)·kh·kw   = numel(out) · prod(W.shape[1:])
    conv-transpose  N·C_in·H_in·W_in · (C_out/groups)·kh·kw     = numel(x) · prod(W.shape[1:])
    linear          tokens·in·out                                = numel(out) · in
    matmul / mm     every output element is a K-long dot product = numel(out) · K
    sdpa            q·kᵀ then softmax·v: L·S·E + L·S·E_v per batch·head
    embedding       a table look-up: 0

This module holds the rules shared by the built-in families; an op with a formula of its own
builds its `MacRule` beside its handler. `geta.reporting` reads them through
`geta.ops.registry.mac_rule`.

>>> import torch
>>> from geta.ops import catalog  # registers the built-in families
>>> from geta.ops.registry import mac_rule
>>> mac_rule(torch.ops.aten.linear.default) is LINEAR
True
>>> mac_rule(torch.ops.aten.relu.default) is None
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import fx

__all__ = [
    "ADDMM",
    "ATTENTION",
    "CONV",
    "CONVOLUTION",
    "CONV_TRANSPOSE",
    "LINEAR",
    "LOOKUP",
    "MATMUL",
    "MacRule",
]


def _shape(arg: Any) -> tuple[int, ...]:
    """The static shape of a graph value (a node carrying ``meta["val"]``)."""
    val = arg.meta["val"] if isinstance(arg, fx.Node) else arg
    return tuple(int(d) for d in val.shape)


def _numel(arg: Any) -> int:
    return math.prod(_shape(arg))


def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


@dataclass(frozen=True)
class MacRule:
    """What geta counts for one op.

    ``operands`` are the argument positions that are multiplied together: the caller looks
    for a weight (a parameter, possibly behind a quantizer or a transpose) among them and
    treats the first other one as the layer's input activation.
    """

    kind: str | Callable[[fx.Node], str]  # 'conv', 'linear', ... or a function of the node
    operands: tuple[int, ...]
    macs: Callable[[fx.Node], int]

    def kind_of(self, node: fx.Node) -> str:
        """The layer kind of ``node``: 'conv', 'conv_transpose', 'linear', 'matmul', ..."""
        return self.kind if isinstance(self.kind, str) else self.kind(node)


# conv: W is (C_out, C_in/groups, *k); every output element is a dot product of length
# prod(W.shape[1:]).
def _conv_macs(node: fx.Node) -> int:
    return _numel(node) * math.prod(_shape(node.args[1])[1:])


# conv-transpose: W is (C_in, C_out/groups, *k); every input element scatters into
# prod(W.shape[1:]) outputs.
def _conv_transpose_macs(node: fx.Node) -> int:
    return _numel(node.args[0]) * math.prod(_shape(node.args[1])[1:])


def _is_transposed(node: fx.Node) -> bool:  # aten.convolution(x, w, b, stride, pad, dil, transposed, ...)
    return bool(_arg(node, 6, "transposed", False))


def _convolution_macs(node: fx.Node) -> int:
    return _conv_transpose_macs(node) if _is_transposed(node) else _conv_macs(node)


def _linear_macs(node: fx.Node) -> int:  # W: (out, in)
    return _numel(node) * _shape(node.args[1])[-1]


def _contraction_macs(first: int) -> Callable[[fx.Node], int]:
    """numel(out) · K, with K the last dim of the left operand at position ``first``."""

    def macs(node: fx.Node) -> int:
        return _numel(node) * _shape(node.args[first])[-1]

    return macs


def _sdpa_macs(node: fx.Node) -> int:
    q, k = _shape(node.args[0]), _shape(node.args[1])  # q: (..., L, E), k: (..., S, E)
    out = _shape(node)  # (..., L, E_v): batch and head dims follow the queries
    rows, s, e = math.prod(out[:-1]), k[-2], q[-1]  # rows = batch·heads·L
    return rows * s * e + rows * s * out[-1]  # scores q·kᵀ, then weights·v


def _zero(node: fx.Node) -> int:
    return 0


CONV = MacRule("conv", (0, 1), _conv_macs)
CONV_TRANSPOSE = MacRule("conv_transpose", (0, 1), _conv_transpose_macs)
CONVOLUTION = MacRule(lambda n: "conv_transpose" if _is_transposed(n) else "conv", (0, 1), _convolution_macs)
LINEAR = MacRule("linear", (0, 1), _linear_macs)
MATMUL = MacRule("matmul", (0, 1), _contraction_macs(0))
ADDMM = MacRule("matmul", (1, 2), _contraction_macs(1))  # addmm(bias, a, b), baddbmm(bias, a, b)
ATTENTION = MacRule("attention", (0, 1, 2), _sdpa_macs)
LOOKUP = MacRule("embedding", (0, 1), _zero)  # a table look-up multiplies nothing
