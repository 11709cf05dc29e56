"""GGUF files for llama.cpp (and Ollama, LM Studio, ...) from compressed Llama / Qwen2 / Mistral models.

`gguf(model, path, tokenizer=...)` writes one self-contained file:

- every geta-quantized weight as a block-quantized tensor holding its integer codes exactly
  (Q4_0 for 2–4-bit codes, Q5_0 for 5, Q8_0 for 6–8; `geta.export.ggml_blocks`), with the
  step as the fp16 block scale -- the only rounding, reported per tensor in `GgufInfo`;
- everything else (norms, biases, unquantized weights) in float32, or unquantized weights in
  float16 with ``float_type="F16"`` (norms and biases stay float32, as llama.cpp expects);
- the pruned model's sizes, padded with zero units/heads where ggml's 32-value blocks need it
  (exact; `geta.export.gguf_layout`), with the sizes geta kept under ``geta.*`` keys;
- the tokenizer (`geta.export.gguf_vocab`), so that llama.cpp tokenizes by itself.

A dense model exports too (all float): the float GGUF to compare a compressed one against.
Activation quantizers are not part of GGUF: llama.cpp quantizes activations its own way (8 bits
per block of 32 for its integer dot products), so `GgufInfo.dropped_input_quantizers` counts
the layer-input quantizers of geta that the file does not carry.

Needs the ``gguf`` package (``pip install 'torch-geta[gguf]'``); the file is written to a
temporary name in the target folder and renamed, so a failed export leaves nothing behind.

>>> info = geta.export.gguf(small, "model.gguf", tokenizer=tokenizer)  # doctest: +SKIP
>>> info.file_bytes, info.tensors[1].type  # doctest: +SKIP
(268544, 'Q4_0')
"""

from __future__ import annotations

import collections
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from geta.export.ggml_blocks import StepRounding, container, encode_rows, step_rounding
from geta.export.gguf_layout import Hparams, Weight, causal_lm, decoder_tensors
from geta.export.gguf_vocab import tokenizer_metadata
from geta.export.info import ExportError
from geta.quant.attach import input_quantizer

__all__ = ["GgufInfo", "GgufTensor", "gguf"]

FLOAT_TYPES = ("F32", "F16")


@dataclass(frozen=True)
class GgufTensor:
    """One tensor as written: its GGUF name, ggml type, shape (rows, cols) and, when quantized,
    geta's bit width and what fp16 did to its step."""

    name: str
    type: str
    shape: tuple[int, ...]
    bits: float | None = None
    rounding: StepRounding | None = None


@dataclass(frozen=True)
class GgufInfo:
    """What `gguf` wrote."""

    path: str
    file_bytes: int
    arch: str
    tensors: tuple[GgufTensor, ...]
    sizes: dict[str, int]  # heads, kv_heads, ffn as llama.cpp reads them (padded)
    pruned: dict[str, int]  # the same sizes as geta kept them
    dropped_input_quantizers: int

    @property
    def max_step_relative_error(self) -> float:
        """The largest |fp16(step) − step| / step over the quantized tensors."""
        return max((t.rounding.relative_error for t in self.tensors if t.rounding), default=0.0)

    @property
    def max_weight_diff(self) -> float:
        """The largest change of any quantized weight through fp16's rounding of its step."""
        return max((t.rounding.max_weight_diff for t in self.tensors if t.rounding), default=0.0)


def _gguf_module() -> Any:
    try:
        import gguf
    except ImportError as exc:
        raise ExportError(
            f"GGUF export needs the gguf package ({exc}): pip install 'torch-geta[gguf]'"
        ) from None
    return gguf


def _encode(w: Weight, float_type: str, g: Any) -> tuple[np.ndarray, Any, GgufTensor]:
    """(data, raw ggml type or None, record) of one tensor."""
    shape = tuple(w.values.shape)
    qtype = container(w.values) if w.step is not None and w.values.ndim == 2 else None
    if w.step is not None and qtype is not None and shape[1] % 32 == 0:
        data = encode_rows(w.values, w.step, qtype)
        rounding = step_rounding(w.step, w.values)
        return data, g.GGMLQuantizationType[qtype], GgufTensor(w.name, qtype, shape, w.bits, rounding)
    values = w.values.astype(np.float32) * np.float32(w.step) if w.step is not None else w.values
    kind = float_type if values.ndim == 2 else "F32"  # norms and biases stay float32
    data = values.astype(np.float16 if kind == "F16" else np.float32)
    return data, None, GgufTensor(w.name, kind, shape, w.bits)


def _write_hparams(writer: Any, hp: Hparams) -> None:
    writer.add_context_length(hp.context)
    writer.add_embedding_length(hp.hidden)
    writer.add_block_count(hp.layers)
    writer.add_feed_forward_length(hp.ffn)
    writer.add_head_count(hp.heads)
    writer.add_head_count_kv(hp.kv_heads)
    writer.add_key_length(hp.head_dim)
    writer.add_value_length(hp.head_dim)
    writer.add_rope_dimension_count(hp.head_dim)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    writer.add_vocab_size(hp.vocab)
    for key, value in hp.pruned.items():  # what geta kept; the standard keys say the padded sizes
        writer.add_uint32(f"geta.pruned.{key}", value)


def _write_tokenizer(writer: Any, tokenizer: Any, lm: Any, hp: Hparams, pre: str | None) -> None:
    if tokenizer is None:
        writer.add_tokenizer_model("none")  # llama.cpp then runs on token ids only
        return
    meta = tokenizer_metadata(tokenizer, hp.vocab, pre=pre)
    writer.add_tokenizer_model(meta["model"])
    writer.add_tokenizer_pre(meta["pre"])
    writer.add_token_list(meta["tokens"])
    writer.add_token_types(meta["token_type"])
    writer.add_token_merges(meta["merges"])
    writer.add_add_bos_token(meta["add_bos_token"])
    writer.add_add_eos_token(meta["add_eos_token"])
    config = lm.config
    for attr, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                      ("pad_token_id", writer.add_pad_token_id)):  # fmt: skip
        value = getattr(config, attr, None)
        value = value[0] if isinstance(value, list) else value
        if isinstance(value, int) and 0 <= value < hp.vocab:
            add(value)


def _file_type(records: list[GgufTensor], float_type: str, g: Any) -> int:
    counts = collections.Counter(r.type for r in records if r.rounding is not None)
    name = counts.most_common(1)[0][0] if counts else float_type
    member = {"F32": "ALL_F32", "F16": "MOSTLY_F16"}.get(name, f"MOSTLY_{name}")
    return int(g.LlamaFileType[member])


def _write(path: str, hp: Hparams, tensors: list[tuple[str, np.ndarray, Any]], meta: Any) -> None:
    """Write the file under a temporary name in its folder, then rename it (atomic)."""
    g = _gguf_module()
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".geta-gguf-", dir=folder)
    os.close(fd)
    try:
        writer = g.GGUFWriter(tmp, hp.arch)
        meta(writer)
        for name, data, raw in tensors:
            writer.add_tensor(name, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def gguf(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    float_type: str = "F32",
    name: str | None = None,
    pre: str | None = None,
) -> GgufInfo:
    """Write the Llama/Qwen2/Mistral causal LM in ``model`` as a GGUF file for llama.cpp.

    ``model``: a transformers ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` /
    ``MistralForCausalLM``, dense or compressed by geta (pruned with ``uniform_layers``), or
    a module wrapping one (what ``geta compress`` saves). ``tokenizer``: its byte-level BPE
    tokenizer (a transformers fast tokenizer, or the folder of its ``tokenizer.json``);
    without one the file holds no vocabulary and llama.cpp runs on token ids only.
    ``float_type``: "F32" (exact) or "F16" for unquantized weights. ``name``: ``general.name``.
    ``pre``: llama.cpp's pre-tokenizer name, for tokenizers other than GPT-2's byte-level split.

    Raises `ExportError` for another model family, layers pruned to different sizes, a
    hidden size that is not a multiple of 32, or a tokenizer GGUF cannot describe.
    """
    if float_type not in FLOAT_TYPES:
        raise ExportError(f"float_type={float_type!r}; allowed: {', '.join(FLOAT_TYPES)}")
    g = _gguf_module()
    lm = causal_lm(model)
    weights, hp = decoder_tensors(lm)
    encoded = [_encode(w, float_type, g) for w in weights]
    records = [r for _, _, r in encoded]

    def meta(writer: Any) -> None:
        writer.add_name(name or type(lm).__name__)
        writer.add_file_type(_file_type(records, float_type, g))
        writer.add_quantization_version(g.GGML_QUANT_VERSION)
        _write_hparams(writer, hp)
        _write_tokenizer(writer, tokenizer, lm, hp, pre)

    target = os.fspath(path)
    _write(target, hp, [(r.name, data, raw) for data, raw, r in encoded], meta)
    dropped = sum(input_quantizer(m) is not None for m in lm.modules())
    sizes = {"heads": hp.heads, "kv_heads": hp.kv_heads, "ffn": hp.ffn}
    return GgufInfo(target, os.path.getsize(target), hp.arch, tuple(records), sizes, dict(hp.pruned), dropped)
