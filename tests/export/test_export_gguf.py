"""``geta.export.gguf``: llama.cpp's file, read back with the gguf package (no llama.cpp needed).

Three kinds of evidence, each independent of the writer's own code paths:

- the block encoders against gguf's reference dequantizer (every code of every container);
- a compressed tiny Llama / Qwen2 (weights only, ``uniform_layers``): its projections are
  quantized types whose values are integer multiples of fp16(step), with exactly geta's
  codes (padding adds zeros only); metadata and vocabulary as written;
- a small re-implementation of llama.cpp's graph (adjacent-pair rotary for ``llama``, halves
  for ``qwen2``, grouped-query heads, RMSNorm, gated SiLU MLP) on the file's tensors gives
  transformers' logits -- also for head counts and MLP widths that need zero padding.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import geta
from geta.export import ExportError
from geta.export.ggml_blocks import QTYPES, container, encode_rows, step_rounding
from geta.quant.attach import weight_quantizers
from geta.quant.functional import integer_codes
from geta.testing import max_relative_error

gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")

VOCAB, SEQ = 300, 16


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from geta.recipes.tiny import train_tokenizer

    return train_tokenizer(vocab_size=VOCAB)


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, str]]:
    """(float tensors as (rows, cols) arrays, metadata, ggml type names) of a GGUF file."""
    reader = gguf.GGUFReader(path)
    tensors, types = {}, {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists ne0 (the row length) first
        tensors[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        types[t.name] = t.tensor_type.name
    meta = {k: f.contents() for k, f in reader.fields.items()}
    return tensors, meta, types


def _rms(x: torch.Tensor, w: np.ndarray, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * torch.from_numpy(w)


def _rope(x: torch.Tensor, theta: float, pairs: bool) -> torch.Tensor:
    """Rotary positions on (T, heads, hd): adjacent pairs (llama.cpp's llama) or halves (neox)."""
    seq, _, hd = x.shape
    angle = torch.arange(seq)[:, None] * theta ** (-torch.arange(0, hd, 2) / hd)  # (T, hd/2)
    cos, sin = angle.cos()[:, None], angle.sin()[:, None]
    a, b = (x[..., 0::2], x[..., 1::2]) if pairs else (x[..., : hd // 2], x[..., hd // 2 :])
    ra, rb = a * cos - b * sin, a * sin + b * cos
    return torch.stack([ra, rb], -1).flatten(-2) if pairs else torch.cat([ra, rb], -1)


def _attention(x: torch.Tensor, t: dict[str, torch.Tensor], i: int, m: dict[str, Any]) -> torch.Tensor:
    arch = m["general.architecture"]
    heads, kv, hd = (m[f"{arch}.attention.{k}"] for k in ("head_count", "head_count_kv", "key_length"))

    def proj(name: str, n: int) -> torch.Tensor:
        y = x @ t[f"blk.{i}.attn_{name}.weight"].T + t.get(f"blk.{i}.attn_{name}.bias", 0)
        return y.view(len(x), n, hd)

    theta = m[f"{arch}.rope.freq_base"]
    q = _rope(proj("q", heads), theta, arch == "llama")
    k = _rope(proj("k", kv), theta, arch == "llama").repeat_interleave(heads // kv, 1)
    v = proj("v", kv).repeat_interleave(heads // kv, 1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
    scores = scores.masked_fill(torch.ones(len(x), len(x)).triu(1).bool(), -torch.inf)
    out = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(len(x), heads * hd)
    return out @ t[f"blk.{i}.attn_output.weight"].T


def _llama_cpp_graph(tensors: dict[str, np.ndarray], m: dict[str, Any], ids: torch.Tensor) -> torch.Tensor:
    """The logits llama.cpp's graph computes from the file (float, no activation quantization)."""
    t = {k: torch.from_numpy(v) for k, v in tensors.items()}
    arch = m["general.architecture"]
    eps = m[f"{arch}.attention.layer_norm_rms_epsilon"]
    x = t["token_embd.weight"][ids]
    for i in range(m[f"{arch}.block_count"]):
        x = x + _attention(_rms(x, tensors[f"blk.{i}.attn_norm.weight"], eps), t, i, m)
        h = _rms(x, tensors[f"blk.{i}.ffn_norm.weight"], eps)
        gate, up = h @ t[f"blk.{i}.ffn_gate.weight"].T, h @ t[f"blk.{i}.ffn_up.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ t[f"blk.{i}.ffn_down.weight"].T
    x = _rms(x, tensors["output_norm.weight"], eps)
    return x @ t.get("output.weight", t["token_embd.weight"]).T


def _compressed(family: str, tokenizer: Any) -> nn.Module:
    """A tiny checkpoint compressed by a short QASSO run: weights only, uniform layers, 3-8 bits."""
    import transformers

    from geta.recipes.tiny import tiny_config

    torch.manual_seed(0)
    config = tiny_config(family, len(tokenizer), attn_implementation="eager")
    config.tie_word_embeddings = True  # the quantized head is then written apart from the embedding
    model = transformers.AutoModelForCausalLM.from_config(config)
    ids = torch.randint(0, len(tokenizer), (8, SEQ))
    plan = geta.prepare(model, {"input_ids": ids[:2]}, geta.Config(target_sparsity=0.4, weight_bits=(3, 8),
                                                                    uniform_layers=True))  # fmt: skip
    schedule = geta.Schedule(warmup=1, projection=2, joint=3, cooldown=1, projection_periods=1,
                             pruning_periods=2)  # fmt: skip
    opt = geta.QASSO(plan, 1e-3, lr_quant=1e-3, variant="adamw", schedule=schedule)
    model.train()
    for _ in range(7):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return geta.convert(model.eval(), plan).eval()


@pytest.mark.parametrize("qtype", list(QTYPES))
def test_blocks_decode_to_the_codes_times_the_fp16_step(qtype: str) -> None:
    low, high = QTYPES[qtype]
    codes = np.concatenate([np.arange(low, high + 1), np.random.default_rng(0).integers(low, high + 1, 320)])
    codes = codes[: len(codes) // 32 * 32].reshape(-1, 32)
    step = 0.01234
    blocks = encode_rows(codes, step, qtype)
    decoded = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[qtype])
    assert np.array_equal(decoded, codes * np.float32(np.float16(step)))
    assert container(codes) == qtype
    assert blocks.shape[1] == {"Q4_0": 18, "Q5_0": 22, "Q8_0": 34}[qtype] * codes.shape[1] // 32


def test_container_and_step_rounding() -> None:
    assert container(np.array([-7, 7])) == "Q4_0" and container(np.array([-15, 3])) == "Q5_0"
    assert container(np.array([-127, 127])) == "Q8_0" and container(np.array([200])) is None
    r = step_rounding(0.01234, np.array([-7, 5]))
    assert 0 < r.relative_error <= 2**-11 and r.max_weight_diff == pytest.approx(7 * abs(r.stored - r.step))
    with pytest.raises(ValueError, match="not a whole number"):
        encode_rows(np.zeros((2, 40), dtype=np.int32), 0.1, "Q8_0")


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_compressed_model_writes_its_codes_in_quantized_blocks(
    family: str, tokenizer: Any, tmp_path: Path
) -> None:
    import transformers

    small = _compressed(family, tokenizer)
    info = geta.export.gguf(small, tmp_path / "m.gguf", tokenizer=tokenizer)
    tensors, meta, types = _read(tmp_path / "m.gguf")
    projections = [
        n for n in types if n.endswith("weight") and ("attn_" in n or "ffn_" in n) and "norm" not in n
    ]
    assert projections and all(types[n] in QTYPES for n in projections)
    assert types["output.weight"] in QTYPES and types["token_embd.weight"] == "F32"  # head quantized, untied
    by_name = {t.name: t for t in info.tensors}
    geta_codes = _codes_by_gguf_name(small)
    for name in projections + ["output.weight"]:
        stored = by_name[name].rounding.stored
        k = tensors[name] / np.float32(stored)
        assert np.array_equal(k, np.round(k))  # integer multiples of the fp16 step
        nonzero = np.sort(k[k != 0].astype(np.int64))
        assert np.array_equal(
            nonzero, np.sort(geta_codes[name][geta_codes[name] != 0])
        )  # exactly geta's codes
    assert 0 < info.max_step_relative_error <= 2**-11
    arch = meta["general.architecture"]
    assert arch == family and meta["geta.pruned.ffn"] == info.pruned["ffn"] < 128
    assert meta[f"{arch}.feed_forward_length"] == info.sizes["ffn"] and info.sizes["ffn"] % 32 == 0
    assert meta["tokenizer.ggml.pre"] == "gpt-2" and meta["tokenizer.ggml.tokens"][:2] == [
        "<|endoftext|>",
        "<pad>",
    ]
    assert len(meta["tokenizer.ggml.merges"]) > 0 and meta["tokenizer.ggml.token_type"][0] == 3
    hf = geta.export.gguf_layout.causal_lm(small)
    ids = torch.randint(0, VOCAB, (SEQ,))
    with torch.no_grad():
        expected = hf(input_ids=ids[None]).logits[0]
    assert isinstance(hf, transformers.PreTrainedModel)
    assert max_relative_error(_llama_cpp_graph(tensors, meta, ids), expected) <= 2e-3  # fp16 steps only


def _codes_by_gguf_name(model: nn.Module) -> dict[str, np.ndarray]:
    """geta's integer codes of the quantized projections, under their GGUF names."""
    short = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}  # fmt: skip
    found = {}
    for name, module in model.named_modules():
        q = weight_quantizers(module).get("weight")
        if q is None:
            continue
        w = module.parametrizations.weight.original.detach()
        codes = integer_codes(w, q.step, q.qmax, q.exponent, signed=q.signed).numpy()
        parts = name.split(".")
        if parts[-1] == "lm_head":
            found["output.weight"] = codes
        elif parts[-1] in short:
            found[f"blk.{parts[-3]}.{short[parts[-1]]}.weight"] = codes
    return found


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_padded_heads_and_units_compute_what_transformers_computes(family: str, tmp_path: Path) -> None:
    """6 query heads over 3 kv heads of width 8 (48 columns) and 40 MLP units need zero padding."""
    import transformers

    from geta.recipes.tiny import tiny_config

    torch.manual_seed(1)
    sizes = dict(num_attention_heads=8, num_key_value_heads=4, attn_implementation="eager")
    if family == "mistral":  # written as llama.cpp's llama graph
        fields = {k: v for k, v in tiny_config("llama", 80, **sizes).to_dict().items() if k != "model_type"}
        config = transformers.MistralConfig(**fields | {"sliding_window": 128})
    else:
        config = tiny_config(family, 80, **sizes)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    for layer in model.model.layers:  # keep the first 3 kv heads with their 6 query heads, 40 units
        _keep(layer.self_attn, {"q_proj": (0, 48), "k_proj": (0, 24), "v_proj": (0, 24), "o_proj": (1, 48)})
        _keep(layer.mlp, {"gate_proj": (0, 40), "up_proj": (0, 40), "down_proj": (1, 40)})
    info = geta.export.gguf(model, tmp_path / "m.gguf")
    assert info.sizes["ffn"] == 64 and (info.sizes["heads"] * 8) % 32 == 0
    assert info.sizes["heads"] // info.sizes["kv_heads"] >= 2 and info.pruned == {
        "heads": 6,
        "kv_heads": 3,
        "ffn": 40,
    }
    tensors, meta, _ = _read(tmp_path / "m.gguf")
    assert meta["general.architecture"] == ("qwen2" if family == "qwen2" else "llama")
    assert meta[f"{meta['general.architecture']}.context_length"] == (128 if family == "mistral" else 256)
    ids = torch.randint(0, 80, (SEQ,))
    with torch.no_grad():
        expected = model(input_ids=ids[None]).logits[0]
    assert max_relative_error(_llama_cpp_graph(tensors, meta, ids), expected) <= 1e-5


def _keep(parent: nn.Module, cuts: dict[str, tuple[int, int]]) -> None:
    """Replace each named Linear by its first ``n`` rows (axis 0) or columns (axis 1), as pruning would."""
    for name, (axis, n) in cuts.items():
        old = getattr(parent, name)
        w = old.weight.detach()[:n] if axis == 0 else old.weight.detach()[:, :n]
        new = nn.Linear(w.shape[1], w.shape[0], bias=old.bias is not None)
        with torch.no_grad():
            new.weight.copy_(w)
            if old.bias is not None:
                new.bias.copy_(old.bias[:n] if axis == 0 else old.bias)
        setattr(parent, name, new)


def test_layers_of_different_sizes_are_refused_with_their_sizes(tmp_path: Path) -> None:
    import transformers

    from geta.recipes.tiny import tiny_config

    model = transformers.AutoModelForCausalLM.from_config(tiny_config("llama", 80))
    mlp = model.model.layers[1].mlp
    mlp.gate_proj, mlp.up_proj, mlp.down_proj = (
        nn.Linear(64, 96, False),
        nn.Linear(64, 96, False),
        nn.Linear(96, 64, False),
    )
    with pytest.raises(ExportError, match=r"ffn per layer \[128, 96\].*uniform_layers"):
        geta.export.gguf(model, tmp_path / "m.gguf")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_other_models_and_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="causal LM of the families"):
        geta.export.gguf(nn.Linear(2, 2), tmp_path / "m.gguf")
    with pytest.raises(ExportError, match="float_type='F8'; allowed: F32, F16"):
        geta.export.gguf(nn.Linear(2, 2), tmp_path / "m.gguf", float_type="F8")


def test_the_pre_tokenizer_is_the_one_transformers_applies(tmp_path: Path, tokenizer: Any) -> None:
    """AutoTokenizer gives a qwen2 folder Qwen2's split: the GGUF must name that one, not tokenizer.json's."""
    from tokenizers import pre_tokenizers

    from geta.export.gguf_vocab import tokenizer_metadata
    from geta.recipes.tiny import save_tiny_checkpoint

    for family, pre in (("qwen2", "qwen2"), ("llama", "gpt-2")):
        folder = save_tiny_checkpoint(tmp_path / family, family, tokenizer=tokenizer)
        meta = tokenizer_metadata(folder, VOCAB + 4)
        assert (
            meta["pre"] == pre and meta["token_type"][-1] == 5 and meta["tokens"][-1] == f"[PAD{VOCAB + 3}]"
        )
    tokenizer = copy.deepcopy(tokenizer)  # the fixture is shared
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ExportError, match=r"not GPT-2's byte-level split; name llama\.cpp's pre-tokenizer"):
        tokenizer_metadata(tokenizer, VOCAB)
    assert tokenizer_metadata(tokenizer, VOCAB, pre="gpt-2")["pre"] == "gpt-2"
    with pytest.raises(ExportError, match="300 tokens, more than the model's 200 rows"):
        tokenizer_metadata(tokenizer, 200, pre="gpt-2")
