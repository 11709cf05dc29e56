"""Pruning heads and widths of ``nn.MultiheadAttention``.

Torch's ``nn.MultiheadAttention`` ties three widths to one ``embed_dim``: its input, the inner
width of q/k/v (heads x head_dim) and its output, and checks them in its forward. Once heads or
model channels are removed they differ, so `convert` turns such a module into a
`PrunedMultiheadAttention`: the same parameters and attributes (it *is* an
``nn.MultiheadAttention``), a forward that computes the same attention from whatever widths the
weights have. Variants geta cannot express (``add_bias_kv``, ``add_zero_attn``) stay frozen.

`eager_multihead_attention` gives the same class to every such module before `geta.prepare`
quantizes activations: torch's forward runs q·kᵀ and p·v inside one call of
``F.multi_head_attention_forward`` (or a fused kernel), out of reach of the product quantizers
(`geta.quant.products`), while `PrunedMultiheadAttention` calls ``@`` for each of them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from geta.graph.context import Analysis
from geta.ops.modules import ModuleSpec, freeze_tensor_dims, register_module_spec

__all__ = ["PrunedMultiheadAttention", "eager_layer_inputs", "eager_multihead_attention"]


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True = masked out) as an additive float mask; float masks pass through."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose input, inner (heads x head_dim) and output widths may differ.

    ``head_dim`` keeps its original value (the softmax scale depends on it); ``num_heads`` is the
    number of surviving heads; ``embed_dim`` is the output width.
    """

    def _projections(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.in_proj_weight is not None:
            wq, wk, wv = self.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        bq = bk = bv = None
        if self.in_proj_bias is not None:
            bq, bk, bv = self.in_proj_bias.chunk(3)
        return F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)

    def _mask(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        b: int,
        l_q: int,
        l_k: int,
        is_causal: bool,
        dtype: torch.dtype,
        device: torch.device,
    ) -> torch.Tensor | None:
        mask = _additive(attn_mask, dtype)
        if mask is None and is_causal:
            causal = torch.ones(l_q, l_k, dtype=torch.bool, device=device).triu(1)
            mask = _additive(causal, dtype)
        if mask is not None:
            mask = mask.reshape(b, -1, l_q, l_k) if mask.dim() == 3 else mask  # (B*H, L, S) -> (B, H, L, S)
        pad = _additive(key_padding_mask, dtype)
        if pad is not None:
            pad = pad.reshape(b, 1, 1, l_k)
            mask = pad if mask is None else mask + pad
        return mask

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if not batched:  # (L, E) -> (1, L, E)
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        if not self.batch_first or not batched:  # (L, B, E) -> (B, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, l_q, l_k = query.shape[0], query.shape[1], key.shape[1]
        q, k, v = self._projections(query, key, value)
        h, hd = self.num_heads, self.head_dim
        q = q.view(b, l_q, h, hd).transpose(1, 2)  # (B, H, L, hd)
        k = k.view(b, l_k, h, hd).transpose(1, 2)  # (B, H, S, hd)
        v = v.view(b, l_k, h, -1).transpose(1, 2)  # (B, H, S, hd_v)
        scores = q @ k.transpose(-2, -1) / math.sqrt(hd)  # (B, H, L, S)
        mask = self._mask(attn_mask, key_padding_mask, b, l_q, l_k, is_causal, scores.dtype, scores.device)
        if mask is not None:
            scores = scores + mask
        probs = F.dropout(scores.softmax(-1), self.dropout, self.training)
        out = (probs @ v).transpose(1, 2).reshape(b, l_q, -1)  # (B, L, H*hd_v)
        out = self.out_proj(out)
        if not self.batch_first or not batched:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
        weights = None
        if need_weights:
            weights = probs.mean(1) if average_attn_weights else probs
            if not batched:
                weights = weights.squeeze(0)
        return out, weights


def eager_multihead_attention(model: nn.Module) -> list[nn.Module]:
    """Make every ``nn.MultiheadAttention`` in ``model`` a `PrunedMultiheadAttention`; return them.

    Same parameters (same objects), same function: its forward computes the attention in eager
    form, two ``@`` calls (q·kᵀ, p·v) that geta can quantize, and the fused fast paths of torch
    (which would skip geta's hooks) are no longer taken. Variants geta cannot express
    (``add_bias_kv``, ``add_zero_attn``) are left as they are.
    """
    return [mod for mod in model.modules() if _make_eager(mod)]


def _make_eager(mod: nn.Module) -> bool:
    """Give one plain ``nn.MultiheadAttention`` the class `PrunedMultiheadAttention`; True if done."""
    cls = type(mod)
    base = cls.__bases__[0] if parametrize.is_parametrized(mod) else cls  # Parametrized<MHA>
    if base is not nn.MultiheadAttention or mod.bias_k is not None or mod.add_zero_attn:
        return False  # a user's subclass keeps its own forward
    mod._qkv_same_embed_dim = False  # keeps TransformerEncoderLayer off its fused fast path
    mod.__class__ = _pruned_class(cls)
    return True


def eager_layer_inputs(mod: PrunedMultiheadAttention) -> list[nn.Module]:
    """The modules whose first positional input feeds a linear layer in the eager form.

    The attention itself (its query feeds the q projection, and the k and v projections too when
    key and value are the same tensor, as in self-attention) and its ``out_proj``, which the
    eager forward calls as a module (torch's forward only reads its weight).
    """
    return [mod, mod.out_proj]


def _mha_constraint(analysis: Analysis, mod: nn.Module) -> None:
    if mod.bias_k is None and not mod.add_zero_attn:
        return
    reason = "nn.MultiheadAttention with add_bias_kv/add_zero_attn cannot be pruned by geta"
    for t in (
        mod.in_proj_weight,
        mod.q_proj_weight,
        mod.k_proj_weight,
        mod.v_proj_weight,
        mod.in_proj_bias,
        mod.out_proj.weight,
        mod.out_proj.bias,
        mod.bias_k,
        mod.bias_v,
    ):
        if t is not None:
            freeze_tensor_dims(analysis, t, tuple(range(t.dim())), reason)


def _mha_fixer(mod: nn.Module) -> None:
    inner = mod.in_proj_weight.shape[0] // 3 if mod.in_proj_weight is not None else mod.q_proj_weight.shape[0]
    out_w = mod.out_proj.weight
    mod.out_proj.in_features, mod.out_proj.out_features = out_w.shape[1], out_w.shape[0]
    if inner == mod.num_heads * mod.head_dim and out_w.shape[0] == mod.embed_dim:
        if mod.in_proj_weight is None or mod.in_proj_weight.shape[1] == mod.embed_dim:
            return  # nothing removed
    mod.num_heads = inner // mod.head_dim
    mod.embed_dim = out_w.shape[0]
    mod._qkv_same_embed_dim = False  # keeps TransformerEncoderLayer off its fused fast path
    mod.__class__ = _pruned_class(type(mod))


def _pruned_class(cls: type) -> type:
    """PrunedMultiheadAttention, or a copy of a parametrized class rebased on it."""
    if issubclass(cls, PrunedMultiheadAttention):
        return cls
    if cls is nn.MultiheadAttention:
        return PrunedMultiheadAttention
    # torch.nn.utils.parametrize made ``cls`` = Parametrized<MHA> holding the weight properties
    body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    return type(f"Parametrized{PrunedMultiheadAttention.__name__}", (PrunedMultiheadAttention,), body)


register_module_spec(
    ModuleSpec(
        nn.MultiheadAttention,
        constraint=_mha_constraint,
        fixer=_mha_fixer,
        rebuild=_make_eager,  # load_packed: a fresh module saved as a PrunedMultiheadAttention
    )
)
