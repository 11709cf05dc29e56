"""What an export did, as data: `ExportInfo` per file and `TensorExport` per quantized tensor."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from geta.errors import ExportError

__all__ = ["ExportError", "ExportInfo", "TensorExport"]


@dataclass(frozen=True)
class TensorExport:
    """How one quantized tensor was written.

    ``encoding``:
    - ``"int8"``: codes k in int8, zero point 0 (symmetric), the usual QDQ form;
    - ``"uint8"``: codes k + ``zero_point`` in uint8. Unsigned activations use zero point 0;
      weights whose 8-bit codes exceed ±63 use zero point 128 so that onnxruntime picks its
      exact u8u8 integer kernels (see `geta.export.qdq`);
    - ``"float"``: more than 8 bits; the tensor stays float (the fake-quantized values exactly,
      or float Round/Clip ops for an activation).
    """

    name: str  # 'conv1.weight' / 'conv1.input' / 'attn.scores.q'
    kind: str  # 'weight', 'input' (a layer's input) or 'product' (an operand of q·kᵀ, p·v)
    bits: int  # the rounded bit width exported
    encoding: str  # 'int8', 'uint8' or 'float'
    zero_point: int
    scale: float  # the learned step (d)
    code_min: int  # the integer clip range of ``bits`` (and of qmax/step)
    code_max: int
    clipped: int = 0  # weight codes outside [code_min, code_max] (real bits rounded down)
    limited: bool = False  # exported values may differ from the torch model's (bits rounded down)
    note: str = ""


@dataclass(frozen=True)
class ExportInfo:
    """The result of `geta.export.onnx`: where it went, every quantized tensor, and the parity."""

    path: str
    opset: int | None
    tensors: list[TensorExport] = field(default_factory=list)
    max_relative_diff: float | None = None  # max|onnx - torch| / max|torch| (None: not checked)
    argmax_agreement: float | None = None  # fraction of equal argmax over the last dim
    # symbolic axes of the file's inputs, e.g. {"input_ids": {0: "batch", 1: "sequence"}}
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    integer_convolutions: int = 0  # convolutions written as ConvInteger (`geta.export.integer_ops`)

    @property
    def limited(self) -> list[TensorExport]:
        """The tensors whose exported values are not exactly the torch model's."""
        return [t for t in self.tensors if t.limited]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (also stored in the ONNX file's ``metadata_props["geta"]``)."""
        return {
            "path": self.path,
            "opset": self.opset,
            "max_relative_diff": self.max_relative_diff,
            "argmax_agreement": self.argmax_agreement,
            "dynamic_axes": {k: {str(d): n for d, n in v.items()} for k, v in self.dynamic_axes.items()},
            "integer_convolutions": self.integer_convolutions,
            "tensors": [asdict(t) for t in self.tensors],
        }
