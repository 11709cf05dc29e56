"""``F.scaled_dot_product_attention`` in eager form, its operands (q, k, v and the softmax
weights p) quantized: what an attention call becomes under product quantizers
(`geta.quant.products`).

The fused kernel never materialises p, so it cannot be quantized there; the eager form computes
the same function up to float rounding, with p made explicit as eager attention does.

>>> q = k = v = torch.eye(2).reshape(1, 2, 2)
>>> out = quantized_attention(q, k, v, [lambda x: x] * 4)   # identity "quantizers": plain sdpa
>>> torch.allclose(out, F.scaled_dot_product_attention(q, k, v))
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SDPA_ARGS", "quantized_attention"]

# F.scaled_dot_product_attention's arguments in positional order
SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _repeat_heads(x: Tensor, r: int) -> Tensor:
    """(..., H, S, E) -> (..., H*r, S, E): head h serves query heads h*r .. h*r + r - 1."""
    if r == 1:
        return x
    *lead, h, s, e = x.shape
    return x.unsqueeze(-3).expand(*lead, h, r, s, e).reshape(*lead, h * r, s, e)


def quantized_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    quantizers: Sequence[Callable[[Tensor], Tensor]],
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``F.scaled_dot_product_attention`` in eager form, its operands quantized by ``quantizers``.

    ``quantizers`` are four callables (e.g. `LearnableQuantizer` modules) for q, k, v and p.

    softmax(Q(q)·Q(k)ᵀ · scale + mask) = p, then Q(p)·Q(v). Arguments and shapes as in
    ``F.scaled_dot_product_attention`` (q: (..., Hq, L, E), k: (..., Hkv, S, E), v: (..., Hkv,
    S, Ev); with ``enable_gqa`` Hq = r·Hkv and kv head h serves query heads h·r .. h·r + r - 1).
    k and v are quantized before they are repeated for grouped queries; p is quantized before
    dropout (its values lie in [0, 1]).
    """
    quantize_q, quantize_k, quantize_v, quantize_p = quantizers
    q, k, v = quantize_q(query), quantize_k(key), quantize_v(value)
    if enable_gqa and q.dim() >= 3:
        k = _repeat_heads(k, q.shape[-3] // k.shape[-3])
        v = _repeat_heads(v, q.shape[-3] // v.shape[-3])
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (..., L, S)
    if is_causal:
        keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    p = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)  # (..., L, S)
    p = quantize_p(p)
    if dropout_p > 0.0:
        p = F.dropout(p, dropout_p)
    return torch.matmul(p, v)  # (..., L, Ev)
