"""Tiny Hugging Face transformers for the zoo: random weights from small configs, no downloads.

Each factory imports transformers only when called, so importing this module (and
`geta.testing`) stays free of the optional dependency. Every model has hidden size 32, two
layers, four attention heads (head size 8), vocabulary 64 and dropout 0, and is built with
``use_cache=False`` so that the forward pass returns no key/value cache. Example inputs are
dicts of keyword arguments (``model(**inputs)``).

`SPECS` lists ``(name, factory, tags)``; `geta.testing.zoo` registers them with
``needs="transformers"``.

What each one exercises:
- ``hf_bert``: encoder with absolute positions, post-LayerNorm residual stream, a pooler and
  a classifier, plus an ``attention_mask`` input (eager attention).
- ``hf_gpt2``: GPT-2's fused ``c_attn`` (a ``Conv1D`` with weight (in, 3*hidden): q, k and v
  heads are column blocks of one tensor) and tied input/output embeddings.
- ``hf_llama`` / ``hf_llama_sdpa``: grouped-query attention (4 query heads share 2 key/value
  heads), RMSNorm, rotary positions, a gated SiLU MLP; eager and scaled-dot-product kernels.
- ``hf_qwen2``: grouped-query attention with biases on q/k/v projections.
- ``hf_vit``: patch-embedding Conv2d (stride = kernel = patch size), a CLS token and
  classifier on pixel inputs.
- ``hf_mixtral`` / ``hf_qwen2_moe``: Mixture-of-Experts blocks (4 experts, top-2 routing) whose
  experts are stacked 3-D parameters run by a grouped matmul; the experts' hidden units prune
  alike across experts (in aligned blocks), the router stays whole. Qwen2-MoE adds a shared
  expert behind a sigmoid gate.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["SPECS", "bert", "gpt2", "llama", "llama_sdpa", "qwen2", "vit", "mixtral", "qwen2_moe"]

_VOCAB, _HIDDEN, _LAYERS, _HEADS, _FFN, _SEQ = 64, 32, 2, 4, 64, 8


def _ids() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, _VOCAB, (2, _SEQ))}  # (B, T) long


def _decoder_kwargs() -> dict[str, object]:
    """Shared sizes of the decoder-only (Llama-like) configs: 4 query heads over 2 kv heads."""
    return dict(
        vocab_size=_VOCAB, hidden_size=_HIDDEN, intermediate_size=_FFN, num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS, num_key_value_heads=2, max_position_embeddings=4 * _SEQ,
        use_cache=False, tie_word_embeddings=False,
    )  # fmt: skip


def bert() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """BertForSequenceClassification (3 labels), eager attention, with an attention mask."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=_VOCAB, hidden_size=_HIDDEN, num_hidden_layers=_LAYERS, num_attention_heads=_HEADS,
        intermediate_size=_FFN, max_position_embeddings=4 * _SEQ, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager",
    )  # fmt: skip
    inputs = _ids()
    inputs["attention_mask"] = torch.ones(2, _SEQ, dtype=torch.long)
    return BertForSequenceClassification(cfg).eval(), inputs


def gpt2() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """GPT2LMHeadModel with the fused c_attn projection, eager attention."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=_VOCAB, n_positions=4 * _SEQ, n_embd=_HIDDEN, n_layer=_LAYERS, n_head=_HEADS,
        n_inner=_FFN, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
        bos_token_id=0, eos_token_id=0, attn_implementation="eager",
    )  # fmt: skip
    return GPT2LMHeadModel(cfg).eval(), _ids()


def _llama(attn: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**_decoder_kwargs(), attn_implementation=attn)
    return LlamaForCausalLM(cfg).eval(), _ids()


def llama() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """LlamaForCausalLM with grouped-query attention (4 q heads, 2 kv heads), eager attention."""
    return _llama("eager")


def llama_sdpa() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The same Llama with ``attn_implementation="sdpa"`` (F.scaled_dot_product_attention)."""
    return _llama("sdpa")


def qwen2() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Qwen2ForCausalLM: grouped-query attention with q/k/v biases, eager attention."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**_decoder_kwargs(), attn_implementation="eager")
    return Qwen2ForCausalLM(cfg).eval(), _ids()


def vit() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """ViTForImageClassification on 8x8 images with 4x4 patches (4 patches + CLS token)."""
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_size=_HIDDEN, num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS, intermediate_size=_FFN, num_labels=10, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation="eager",
    )  # fmt: skip
    return ViTForImageClassification(cfg).eval(), {"pixel_values": torch.randn(2, 3, 8, 8)}


def mixtral() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """MixtralForCausalLM: 4 experts of 64 hidden units (stacked 3-D weights), top-2 routing."""
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(
        **_decoder_kwargs(), num_local_experts=4, num_experts_per_tok=2, router_jitter_noise=0.0,
        attn_implementation="eager",
    )  # fmt: skip
    return MixtralForCausalLM(cfg).eval(), _ids()


def qwen2_moe() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Qwen2MoeForCausalLM: 4 routed experts of 32 hidden units, top-2, plus a gated shared expert."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    cfg = Qwen2MoeConfig(
        **_decoder_kwargs(), num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=_FFN, attn_implementation="eager",
    )  # fmt: skip
    return Qwen2MoeForCausalLM(cfg).eval(), _ids()


_HF = frozenset({"hf", "attention", "transformer", "residual"})
_Factory = Callable[[], tuple[nn.Module, dict[str, torch.Tensor]]]

SPECS: tuple[tuple[str, _Factory, frozenset[str]], ...] = (
    ("hf_bert", bert, _HF | {"layernorm", "text", "encoder"}),
    ("hf_gpt2", gpt2, _HF | {"layernorm", "text", "fused-qkv", "causal-lm"}),
    ("hf_llama", llama, _HF | {"gqa", "rmsnorm", "text", "causal-lm"}),
    ("hf_llama_sdpa", llama_sdpa, _HF | {"gqa", "rmsnorm", "text", "causal-lm", "sdpa"}),
    ("hf_qwen2", qwen2, _HF | {"gqa", "rmsnorm", "text", "causal-lm"}),
    ("hf_vit", vit, _HF | {"layernorm", "vision", "encoder"}),
    ("hf_mixtral", mixtral, _HF | {"moe", "rmsnorm", "text", "causal-lm"}),
    ("hf_qwen2_moe", qwen2_moe, _HF | {"moe", "rmsnorm", "text", "causal-lm"}),
)
"""``(name, factory, tags)`` of every Hugging Face zoo entry."""
