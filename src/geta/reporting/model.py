"""`LayerReport` and `CompressionReport`: what `geta.report` measures, as plain data.

`DenseCounts` are the counts of the original model that a converted module carries.

Definitions (docs/method.md §4); b_w and b_a are the rounded bit widths of the layer's weight and
input-activation quantizers, or the bit width of the float dtype (32 for float32) when the
tensor is not quantized:

    BOPs            = Σ MACs · b_w · b_a
    relative BOPs   = BOPs / (32 · 32 · MACs of the dense float model)
    weight-only     the same with b_a = 32 (activations left in float)
    size (bits)     = Σ params · b_w + 32 per quantizer scale (+ 32 bits per other parameter)

>>> layer = LayerReport("fc", "linear", macs=80, weight_bits=4, act_bits=8, params=80,
...                     size_bits=80 * 4 + 2 * 32, quantizers=2)
>>> layer.bops, layer.bops_weight_only
(2560, 10240)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from geta.errors import GetaError

__all__ = ["CompressionReport", "DENSE_COUNTS_ATTR", "DenseCounts", "LayerReport", "FP32_BITS"]

FP32_BITS = 32  # the reference precision of "dense FP32" in relative BOPs and sizes
DENSE_COUNTS_ATTR = "geta_dense_counts"  # attribute of a converted module holding its `DenseCounts`


@dataclass(frozen=True)
class DenseCounts:
    """MACs and parameter count of a model before compression: counts, never weights.

    `geta.prepare` records them (``Plan.dense``) from the graph it captures and `geta.convert`
    attaches them to the converted module (attribute `DENSE_COUNTS_ATTR`), so that `geta.report`
    of that module is relative to the original model. MACs depend on the inputs: they were
    counted on inputs of ``input_shapes`` and are rescaled for another batch size only.

    >>> counts = DenseCounts(macs=96, params=36, layers=(("0", 96),), input_shapes=((3, 8),))
    >>> counts.for_inputs(((6, 8),)).macs
    192
    """

    macs: int
    params: int  # every parameter, counted once (quantizer scalars excluded)
    layers: tuple[tuple[str, int], ...]  # (layer name, MACs) of every multiplying op
    input_shapes: tuple[tuple[int, ...], ...]  # shapes of the tensor inputs they were counted on

    def for_inputs(self, shapes: tuple[tuple[int, ...], ...]) -> DenseCounts:
        """The counts for inputs of ``shapes``: the same shapes, or another batch size (dim 0)."""
        if shapes == self.input_shapes:
            return self
        old, new = {s[0] for s in self.input_shapes if s}, {s[0] for s in shapes if s}
        same_rest = [s[1:] for s in shapes] == [s[1:] for s in self.input_shapes]
        if not (same_rest and len(old) == 1 and len(new) == 1):
            raise GetaError(
                f"geta.report: this model's dense reference (recorded by geta.prepare) was counted on "
                f"inputs of shapes {list(self.input_shapes)}, not {list(shapes)}; report on inputs of "
                "those shapes (any batch size), or pass dense= (the dense model or its report)"
            )
        (b_old,), (b_new,) = old, new
        layers = tuple((name, macs * b_new // b_old) for name, macs in self.layers)
        return DenseCounts(sum(m for _, m in layers), self.params, layers, tuple(shapes))


@dataclass(frozen=True)
class LayerReport:
    """One multiplying op of the captured graph (a conv, linear, matmul, attention, embedding)."""

    name: str  # the layer's module name ('layer1.0.conv1'); 'path:op' for weightless ops
    kind: str  # 'conv', 'conv_transpose', 'linear', 'matmul', 'attention', 'embedding'
    macs: int
    weight_bits: int  # b_w: rounded bits of the weight quantizer (dtype bits if unquantized)
    act_bits: int  # b_a: rounded bits of the input quantizer (dtype bits if unquantized)
    params: int  # parameters of this op not already counted by an earlier op (tied weights)
    size_bits: int  # weight · b_w + other params · their dtype bits + 32 per quantizer
    quantizers: int = 0  # quantizer scales counted in size_bits (first use only)
    weighted: bool = True  # multiplies a parameter (False: activation x activation, e.g. q·kᵀ)
    quantized: bool = False  # a quantizer sets b_w or b_a (False: the op runs in float)
    source: str = "rule"  # MACs from geta's table ('rule') or torch's FLOP counter ('flop_counter')

    @property
    def bops(self) -> int:
        """Bit operations: MACs · b_w · b_a."""
        return self.macs * self.weight_bits * self.act_bits

    @property
    def bops_weight_only(self) -> int:
        """Bit operations with float activations: MACs · b_w · 32."""
        return self.macs * self.weight_bits * FP32_BITS

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, with ``bops`` and ``bops_weight_only`` added."""
        return {**asdict(self), "bops": self.bops, "bops_weight_only": self.bops_weight_only}


@dataclass(frozen=True)
class CompressionReport:
    """Costs of a (compressed) model: per layer and in total; see the module docstring."""

    layers: list[LayerReport]
    other_params: int  # parameters of no counted op (norms, gates, ...), stored as float
    other_size_bits: int  # their size in bits (their dtype's bits each)
    dense_macs: int  # MACs of the dense reference (this model's own when none was given)
    dense_params: int  # parameters of the dense reference
    unknown_ops: list[str] = field(default_factory=list)  # ops with parameters but no MAC rule

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def float_layers(self) -> list[LayerReport]:
        """Layers with a weight and MACs that run in float although the model is quantized.

        They are counted at their float bits (32 · 32 for float32) in the BOPs; a model without
        any quantizer has none (it is float everywhere, nothing was left out).
        """
        if not any(layer.quantized for layer in self.layers):
            return []
        return [r for r in self.layers if r.weighted and r.macs and not r.quantized]

    def headline(self) -> list[str]:
        """What the totals rest on, one line each: layers left in float (with their share of the
        BOPs) and ops whose cost nobody knows (not in the BOPs at all). Empty when neither."""
        lines = []
        if self.float_layers:
            bops = self.bops or 1
            parts = [f"{r.name} ({r.kind}, {r.params:,} params, {r.bops / bops:.2%} of the BOPs)"
                     for r in self.float_layers]  # fmt: skip
            lines.append(f"left in float, counted at {FP32_BITS} bits: {', '.join(parts)}")
        if self.unknown_ops:
            lines.append(
                f"NOT counted in MACs or BOPs (no MAC rule, no FLOP count): {', '.join(self.unknown_ops)}"
            )
        return lines

    @property
    def bops(self) -> int:
        return sum(layer.bops for layer in self.layers)

    @property
    def bops_weight_only(self) -> int:
        return sum(layer.bops_weight_only for layer in self.layers)

    @property
    def params(self) -> int:
        """All parameters: the layers' and the others'."""
        return sum(layer.params for layer in self.layers) + self.other_params

    @property
    def size_bits(self) -> int:
        """Model size in bits: quantized weights at their bits, the rest at their dtype's."""
        return sum(layer.size_bits for layer in self.layers) + self.other_size_bits

    @property
    def dense_bops(self) -> int:
        """BOPs of the dense FP32 reference: 32 · 32 · its MACs."""
        return FP32_BITS * FP32_BITS * self.dense_macs

    @property
    def relative_bops(self) -> float:
        """BOPs / dense FP32 BOPs (weights and activations)."""
        return self.bops / self.dense_bops if self.dense_bops else 0.0

    @property
    def relative_bops_weight_only(self) -> float:
        """BOPs with float activations / dense FP32 BOPs."""
        return self.bops_weight_only / self.dense_bops if self.dense_bops else 0.0

    @property
    def relative_size(self) -> float:
        """size_bits / (32 · parameters of the dense reference)."""
        return self.size_bits / (FP32_BITS * self.dense_params) if self.dense_params else 0.0

    def totals(self) -> dict[str, int | float]:
        """The totals as a flat dict (also the ``"totals"`` entry of `to_dict`)."""
        names = ("macs", "bops", "bops_weight_only", "params", "size_bits", "dense_macs",
                 "dense_bops", "dense_params", "relative_bops", "relative_bops_weight_only",
                 "relative_size", "other_params", "other_size_bits")  # fmt: skip
        return {name: getattr(self, name) for name in names}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"layers": [...], "totals": {...}, "float_layers": [names],
        "unknown_ops": [...]}``."""
        return {
            "layers": [layer.to_dict() for layer in self.layers],
            "totals": self.totals(),
            "float_layers": [r.name for r in self.float_layers],
            "unknown_ops": list(self.unknown_ops),
        }

    def to_markdown(self, widths: Mapping[str, str] | None = None) -> str:
        """The `headline` (layers left in float, ops not counted), a per-layer table, the totals,
        as GitHub-flavoured markdown.

        ``widths`` (layer name -> text, e.g. ``'24/32 out, 8/8 in'``) adds a "kept width" column
        next to the bits: what pruning kept of each layer (layers not in it show nothing).
        """
        extra = widths is not None
        cols = 9 if extra else 8
        kept_col = " kept width |" if extra else ""
        head = f"| layer | kind | MACs |{kept_col} W bits | A bits | BOPs | params | size (bits) |"
        rows = [f"**{line}**" for line in self.headline()]
        rows += ["", head, "|" + "---|" * cols] if rows else [head, "|" + "---|" * cols]
        for r in self.layers:
            kept = f" {widths.get(r.name, '')} |" if widths is not None else ""
            rows.append(
                f"| {r.name} | {r.kind} | {r.macs:,} |{kept} {r.weight_bits} | {r.act_bits} "
                f"| {r.bops:,} | {r.params:,} | {r.size_bits:,} |"
            )
        empty = " |" * (cols - 3)
        rows.append(f"| other parameters |{empty} {self.other_params:,} | {self.other_size_bits:,} |")
        rows += [
            "",
            f"- MACs: {self.macs:,} (dense reference: {self.dense_macs:,})",
            f"- BOPs: {self.bops:,}; relative to dense FP32: {self.relative_bops:.4%} "
            f"(weight-only: {self.relative_bops_weight_only:.4%})",
            f"- parameters: {self.params:,}; size: {self.size_bits / 8:,.0f} bytes "
            f"({self.relative_size:.2%} of dense FP32)",
        ]
        return "\n".join(rows)
