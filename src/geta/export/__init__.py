"""Write compressed models for deployment: ONNX (QDQ) and a packed low-bit file.

- `onnx(model, example_inputs, path)`: an ONNX graph with QuantizeLinear/DequantizeLinear per
  quantized tensor, checked against the torch model in onnxruntime (`geta.export.onnx_export`);
- `packed(model, path)` / `load_packed(path, skeleton)`: integer codes at their real bit width,
  per-tensor scales, the other tensors raw, and a JSON manifest (`geta.export.packfile`);
- `deployable(model)`: the QDQ form of a model as an ``nn.Module`` (`geta.export.qdq`).

Importing this package does not import onnx, onnxruntime or onnxscript.
"""

from __future__ import annotations

from geta.export.info import ExportError, ExportInfo, TensorExport
from geta.export.onnx_export import check_parity, onnx
from geta.export.packfile import PackedInfo, load_packed, packed, read_manifest
from geta.export.pretrained import load_pretrained, pretrained
from geta.export.qdq import deployable

__all__ = [
    "ExportError",
    "ExportInfo",
    "PackedInfo",
    "TensorExport",
    "check_parity",
    "deployable",
    "load_packed",
    "load_pretrained",
    "onnx",
    "packed",
    "pretrained",
    "read_manifest",
]
