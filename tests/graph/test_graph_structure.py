"""Groups have the structure the architecture implies (heads, GQA, concat, flatten, depthwise)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import geta
from geta.graph.prune_group import PruneGroup
from geta.testing import zoo


def _w(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The parameter object itself (a quantized layer returns a computed tensor for .weight)."""
    if parametrize.is_parametrized(module, name):
        return getattr(module.parametrizations, name).original
    return getattr(module, name)


def _group_of(plan: geta.Plan, tensor: torch.Tensor, dim: int) -> list[tuple[PruneGroup, object]]:
    return [(g, s) for g in plan.groups for s in g.slices if s.tensor is tensor and s.dim == dim]


def test_gqa_kv_head_takes_its_query_heads() -> None:
    model, inputs = zoo.build("hf_llama")
    cfg = model.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = cfg.hidden_size // heads
    plan = geta.prepare(model, inputs)
    attn = model.model.layers[0].self_attn
    ((g, k_slice),) = [(g, s) for g, s in _group_of(plan, _w(attn.k_proj), 0) if g.prunable]
    assert g.size == kv and k_slice.index.shape == (kv, hd)
    (q_slice,) = [s for s in g.slices if s.tensor is _w(attn.q_proj)]
    r = heads // kv
    assert q_slice.index.shape == (kv, r * hd)
    # kv head j owns query heads j*r .. j*r + r - 1 (rows of q_proj)
    for j in range(kv):
        assert sorted(q_slice.index[j].tolist()) == list(range(j * r * hd, (j + 1) * r * hd))
    (o_slice,) = [s for s in g.slices if s.tensor is _w(attn.o_proj)]
    assert o_slice.dim == 1 and o_slice.index.shape == (kv, r * hd)


def test_mlp_hidden_units_are_prunable_and_residual_stream_is_not() -> None:
    model, inputs = zoo.build("hf_llama")
    plan = geta.prepare(model, inputs)
    mlp = model.model.layers[0].mlp
    ((g, _),) = _group_of(plan, _w(mlp.gate_proj), 0)
    assert g.prunable and g.size == model.config.intermediate_size
    assert {id(t) for t in g.params} >= {id(_w(mlp.up_proj)), id(_w(mlp.down_proj))}
    ((stream, _),) = _group_of(plan, _w(model.model.embed_tokens), 1)
    assert not stream.prunable and stream.reason


def test_concat_places_branches_at_offsets() -> None:
    model, inputs = zoo.build("inception")
    plan = geta.prepare(model, inputs)
    consumers = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # the conv after the concat: its input columns are covered exactly once by the branch groups
    for conv in consumers:
        found = _group_of(plan, _w(conv), 1)
        if len(found) > 1:
            cols = torch.cat([s.index.flatten() for _, s in found])
            assert sorted(cols.tolist()) == list(range(conv.in_channels))
            return
    pytest.fail("no conv consumes a concatenation")


def test_flatten_into_linear_expands_columns() -> None:
    model, inputs = zoo.build("vgg")
    plan = geta.prepare(model, inputs)
    linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    ((g, s),) = _group_of(plan, _w(linear), 1)
    channels = convs[-1].out_channels
    assert g.size == channels and s.index.shape == (channels, linear.in_features // channels)


def test_depthwise_conv_shares_the_group_of_its_input() -> None:
    model, inputs = zoo.build("mobilenet")
    plan = geta.prepare(model, inputs)
    dw = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
    ((g, _s),) = _group_of(plan, _w(dw), 0)
    producers = [t for t in g.params if t is not _w(dw) and t.dim() == 4]
    assert g.size == dw.groups and producers, "depthwise rows go with the channels they filter"


@pytest.mark.parametrize("name,needle", [("lstm", "lstm"), ("unknown_op", "cumsum")])
def test_unknown_or_mixing_ops_freeze_what_they_touch(name: str, needle: str) -> None:
    model, inputs = zoo.build(name)
    plan = geta.prepare(model, inputs)
    assert any(needle in (g.reason or "") for g in plan.groups)


def test_output_groups_are_frozen() -> None:
    model, inputs = zoo.build("plain_cnn")
    plan = geta.prepare(model, inputs)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    ((g, _),) = _group_of(plan, _w(head), 0)
    assert not g.prunable and "output" in (g.reason or "")


def test_user_exclusion_freezes_groups() -> None:
    model, inputs = zoo.build("mlp")
    free = geta.prepare(model, inputs)
    model2, _ = zoo.build("mlp")
    first = next(n for n, m in model2.named_modules() if isinstance(m, nn.Linear))
    plan = geta.prepare(model2, inputs, geta.Config(exclude_prune=(first,)))
    assert len(plan.prunable_groups) == len(free.prunable_groups) - 1
    assert any("excluded" in (g.reason or "") for g in plan.groups)


def test_llama_on_meta_device_is_analysed_without_weights() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        use_cache=False,
    )
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    ids = torch.zeros(1, 8, dtype=torch.long, device="meta")
    plan = geta.prepare(model, {"input_ids": ids}, geta.Config(act_bits=(4, 8)))
    sizes = sorted(g.size for g in plan.prunable_groups)
    assert sizes == [2, 2, 128, 128]  # kv heads and MLP hidden units of each layer
    assert all(p.is_meta for p in model.parameters())


def test_causal_lm_with_kv_cache_called_with_input_ids_only() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    assert model.config.use_cache  # the default: forward returns a cache object
    plan = geta.prepare(model, {"input_ids": torch.randint(0, 64, (2, 8))})
    assert sorted(g.size for g in plan.prunable_groups) == [2, 64]


def test_multihead_attention_heads_are_pruned_in_a_subclass() -> None:
    from geta.ops.mha import PrunedMultiheadAttention
    from geta.testing import max_relative_error, model_outputs

    model, inputs = zoo.build("mha")
    mha = next(m for m in model.modules() if isinstance(m, nn.MultiheadAttention))
    plan = geta.prepare(model, inputs, geta.Config(act_bits=(4, 8)))
    (g,) = [g for g in plan.prunable_groups if g.size == mha.num_heads]
    g.zero_(torch.tensor([0, 2]))
    ref = model_outputs(model, inputs)
    small = geta.convert(model, plan)
    new = next(m for m in small.modules() if isinstance(m, nn.MultiheadAttention))
    assert isinstance(new, PrunedMultiheadAttention) and new.num_heads == mha.num_heads - 2
    assert max_relative_error(model_outputs(small, inputs), ref) <= 1e-4


def test_opt_attention_heads_follow_q_proj_after_convert() -> None:
    transformers = pytest.importorskip("transformers")
    from geta.testing import max_relative_error, model_outputs

    cfg = transformers.OPTConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        ffn_dim=64,
        word_embed_proj_dim=32,
    )
    model = transformers.OPTForCausalLM(cfg).eval()
    inputs = {"input_ids": torch.randint(0, 64, (2, 8))}
    plan = geta.prepare(model, inputs)
    (heads,) = [g for g in plan.prunable_groups if g.size == cfg.num_attention_heads]
    heads.zero_(torch.tensor([1, 3]))
    ref = model_outputs(model, inputs)
    small = geta.convert(model, plan)
    assert small.model.decoder.layers[0].self_attn.num_heads == 2
    assert max_relative_error(model_outputs(small, inputs), ref) <= 1e-4
