"""Hugging Face families for the coverage run: tiny configs, random weights, no downloads.

Every family uses the sizes of `geta.testing.zoo_hf` (hidden 32, two layers, four heads of 8,
feed-forward 64, vocabulary 64, batch 2 x 8 tokens, dropout 0, eager attention, no key/value
cache); the families the zoo already holds are taken from it. ``FAMILIES`` maps a family name
to a factory returning ``(model in eval mode, example inputs)``; transformers is imported by the
factories only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from geta.testing import zoo_hf

__all__ = ["FAMILIES", "FAST"]

_V, _H, _L, _NH, _F, _T = 64, 32, 2, 4, 64, 8  # vocab, hidden, layers, heads, ffn, tokens
_Built = tuple[nn.Module, dict[str, torch.Tensor]]


def _ids(n: int = _T, low: int = 3) -> torch.Tensor:
    return torch.randint(low, _V, (2, n))  # (B, T); ids 0-2 left to special tokens


def _text(**extra: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"input_ids": _ids(), "attention_mask": torch.ones(2, _T, dtype=torch.long), **extra}


def _encoder_kwargs() -> dict[str, Any]:
    """BERT-like encoder sizes (RoBERTa keeps two extra positions for its padding offset)."""
    return dict(
        vocab_size=_V, hidden_size=_H, num_hidden_layers=_L, num_attention_heads=_NH,
        intermediate_size=_F, max_position_embeddings=4 * _T + 2, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager",
    )  # fmt: skip


def _decoder_kwargs(**extra: Any) -> dict[str, Any]:
    """Llama-like decoder sizes: 4 query heads over 2 key/value heads."""
    return dict(
        vocab_size=_V, hidden_size=_H, intermediate_size=_F, num_hidden_layers=_L,
        num_attention_heads=_NH, num_key_value_heads=2, max_position_embeddings=4 * _T,
        use_cache=False, tie_word_embeddings=False, attn_implementation="eager", **extra,
    )  # fmt: skip


def roberta() -> _Built:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    return RobertaForSequenceClassification(RobertaConfig(**_encoder_kwargs())).eval(), _text()


def distilbert() -> _Built:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    cfg = DistilBertConfig(
        vocab_size=_V, dim=_H, n_layers=_L, n_heads=_NH, hidden_dim=_F, max_position_embeddings=4 * _T,
        dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0, num_labels=3,
        attn_implementation="eager",
    )  # fmt: skip
    return DistilBertForSequenceClassification(cfg).eval(), _text()


def albert() -> _Built:
    """ALBERT: one layer's weights shared by both layers, a factorised 16-wide embedding."""
    from transformers import AlbertConfig, AlbertForSequenceClassification

    cfg = AlbertConfig(**{**_encoder_kwargs(), "embedding_size": 16, "num_hidden_groups": 1})
    return AlbertForSequenceClassification(cfg).eval(), _text()


def gpt_neox() -> _Built:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(
        vocab_size=_V, hidden_size=_H, num_hidden_layers=_L, num_attention_heads=_NH,
        intermediate_size=_F, max_position_embeddings=4 * _T, rotary_pct=0.5, use_cache=False,
        tie_word_embeddings=False, attn_implementation="eager",
    )  # fmt: skip
    return GPTNeoXForCausalLM(cfg).eval(), {"input_ids": _ids()}


def opt() -> _Built:
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(
        vocab_size=_V, hidden_size=_H, num_hidden_layers=_L, ffn_dim=_F, num_attention_heads=_NH,
        max_position_embeddings=4 * _T, word_embed_proj_dim=_H, dropout=0.0, attention_dropout=0.0,
        use_cache=False, attn_implementation="eager",
    )  # fmt: skip
    return OPTForCausalLM(cfg).eval(), {"input_ids": _ids()}


def mistral() -> _Built:
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(**_decoder_kwargs())).eval(), {"input_ids": _ids()}


def phi3() -> _Built:
    """Phi-3: fused ``qkv_proj`` and ``gate_up_proj`` projections."""
    from transformers import Phi3Config, Phi3ForCausalLM

    cfg = Phi3Config(**_decoder_kwargs(pad_token_id=0))
    return Phi3ForCausalLM(cfg).eval(), {"input_ids": _ids()}


def gemma() -> _Built:
    from transformers import GemmaConfig, GemmaForCausalLM

    cfg = GemmaConfig(**_decoder_kwargs(head_dim=_H // _NH))
    return GemmaForCausalLM(cfg).eval(), {"input_ids": _ids()}


def t5() -> _Built:
    """T5 encoder-decoder with relative position buckets, a separate decoder input."""
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(
        vocab_size=_V, d_model=_H, d_kv=_H // _NH, d_ff=_F, num_layers=_L, num_heads=_NH,
        dropout_rate=0.0, decoder_start_token_id=0, use_cache=False, tie_word_embeddings=False,
        attn_implementation="eager",
    )  # fmt: skip
    return T5ForConditionalGeneration(cfg).eval(), {"input_ids": _ids(), "decoder_input_ids": _ids()}


def swin() -> _Built:
    """HF Swin: 16x16 images, 2x2 patches, windows of 4 (shifted), two stages of two blocks."""
    from transformers import SwinConfig, SwinForImageClassification

    cfg = SwinConfig(
        image_size=16, patch_size=2, num_channels=3, embed_dim=_H, depths=[2, 2], num_heads=[4, 8],
        window_size=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0,
        num_labels=10,
    )  # fmt: skip
    return SwinForImageClassification(cfg).eval(), {"pixel_values": torch.randn(2, 3, 16, 16)}


def clip() -> _Built:
    """CLIP: a text and a vision tower, projections and the image-text logits."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(
        vocab_size=_V, hidden_size=_H, intermediate_size=_F, num_hidden_layers=_L,
        num_attention_heads=_NH, max_position_embeddings=4 * _T, projection_dim=16,
    )  # fmt: skip
    vision = dict(
        image_size=16, patch_size=4, hidden_size=_H, intermediate_size=_F, num_hidden_layers=_L,
        num_attention_heads=_NH, projection_dim=16,
    )  # fmt: skip
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    cfg._attn_implementation = "eager"
    inputs = _text(pixel_values=torch.randn(2, 3, 16, 16))
    return CLIPModel(cfg).eval(), inputs


def whisper() -> _Built:
    """Whisper: a convolutional audio encoder (16 frames of 8 mel bins) and a text decoder."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(
        vocab_size=_V, num_mel_bins=8, d_model=_H, encoder_layers=_L, decoder_layers=_L,
        encoder_attention_heads=_NH, decoder_attention_heads=_NH, encoder_ffn_dim=_F,
        decoder_ffn_dim=_F, max_source_positions=8, max_target_positions=4 * _T, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, dropout=0.0, use_cache=False,
        begin_suppress_tokens=None, suppress_tokens=None, attn_implementation="eager",
    )  # fmt: skip
    inputs = {"input_features": torch.randn(2, 8, 16), "decoder_input_ids": _ids()}
    return WhisperForConditionalGeneration(cfg).eval(), inputs


FAMILIES: dict[str, Callable[[], _Built]] = {
    "bert": zoo_hf.bert,
    "roberta": roberta,
    "distilbert": distilbert,
    "albert": albert,
    "gpt2": zoo_hf.gpt2,
    "gpt_neox": gpt_neox,
    "opt": opt,
    "llama": zoo_hf.llama,
    "mistral": mistral,
    "qwen2": zoo_hf.qwen2,
    "phi3": phi3,
    "gemma": gemma,
    "t5": t5,
    "vit": zoo_hf.vit,
    "swin": swin,
    "clip": clip,
    "whisper": whisper,
    "mixtral": zoo_hf.mixtral,
    "qwen2_moe": zoo_hf.qwen2_moe,
}
"""Family name -> factory of a tiny random model and its example inputs."""

FAST = ("distilbert", "gpt_neox", "mistral", "phi3", "t5")
"""Families checked in ``make test`` by `check_model` (tests/testing/test_coverage.py; a few
seconds each, transformers only): ones the zoo's own invariance matrix does not run, among them
those whose heads needed a fixer (Whisper's are tested in tests/ops/test_ops_hf.py)."""
