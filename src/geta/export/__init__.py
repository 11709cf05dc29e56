"""Write compressed models for deployment: ONNX (QDQ), a packed low-bit file, a plain torch module.

- `onnx(model, example_inputs, path)`: an ONNX graph with QuantizeLinear/DequantizeLinear per
  quantized tensor, dynamic batch and (token inputs) sequence axes and named outputs, checked
  against the torch model in onnxruntime, written only if it passes (`geta.export.onnx_export`,
  `geta.export.interface`, `geta.export.parity`; ``ConvInteger`` on request:
  `geta.export.integer_ops`);
- `packed(model, path)` / `load_packed(path, model)`: integer codes at their real bit width,
  per-tensor scales, the other tensors raw, and a JSON manifest; loads into a freshly built
  model of the same class (`geta.export.packfile`, `geta.export.skeleton`);
- `baked(model)`: a plain eval-mode ``nn.Module`` for fast PyTorch inference: weights baked to
  their quantized values, activation quantizers removed, BatchNorm optionally folded into the
  preceding convolution (`geta.export.bake`);
- `deployable(model)`: the QDQ form of a model as an ``nn.Module``, what `onnx` exports
  (`geta.export.qdq`);
- `pretrained(model, path)` / `load_pretrained(path)`: Hugging Face ``save_pretrained`` folders;
- `gguf(model, path, tokenizer=...)`: a GGUF file for llama.cpp from a Llama / Qwen2 / Mistral
  causal LM, the learned integer codes in Q4_0 / Q5_0 / Q8_0 blocks (`geta.export.gguf_export`);
- `export(name, model, path, *, example_inputs=None, tokenizer=None, **options)`: any
  registered format by name, with one signature; `register_exporter` adds a format, which
  ``geta export --format`` then offers (`geta.export.registry`, built-ins in
  `geta.export.formats`, docs/contributing.md).

Every exporter raises `ExportError` (`geta.IntegrityError`, a damaged file, is one too).

docs/deploy.md shows each in use. Importing this package does not import onnx, onnxruntime,
onnxscript or gguf.
"""

from __future__ import annotations

from geta.export import formats as _formats  # noqa: F401  (registers onnx, packed, hf, gguf)
from geta.export.bake import baked
from geta.export.gguf_export import GgufInfo, gguf
from geta.export.info import ExportError, ExportInfo, TensorExport
from geta.export.onnx_export import ORT_SESSION_CONFIG, check_parity, onnx
from geta.export.packfile import PackedInfo, load_packed, packed, read_manifest
from geta.export.pretrained import load_pretrained, pretrained
from geta.export.qdq import deployable
from geta.export.registry import Exporter, export, exporters, get_exporter, register_exporter

__all__ = [
    "ORT_SESSION_CONFIG",
    "ExportError",
    "ExportInfo",
    "Exporter",
    "GgufInfo",
    "PackedInfo",
    "TensorExport",
    "baked",
    "check_parity",
    "deployable",
    "export",
    "exporters",
    "get_exporter",
    "gguf",
    "load_packed",
    "load_pretrained",
    "onnx",
    "packed",
    "pretrained",
    "read_manifest",
    "register_exporter",
]
