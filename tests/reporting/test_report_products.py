"""`geta.report` with activation products quantized: every multiply of a transformer carries its
bits (attention's q·kᵀ and p·v included), so relative BOPs reflect every multiply; embeddings
count in the size at their bits and cost no BOPs (a look-up multiplies nothing)."""

from __future__ import annotations

import warnings

import pytest
import torch

import geta
from geta.reporting import report
from geta.reporting.count import layer_costs
from geta.testing import zero_random_groups, zoo

ATTENTION_MODELS = ["mha", "transformer_pre_ln", "hf_llama", "hf_llama_sdpa", "hf_bert", "hf_gpt2", "hf_vit"]


def _build(name: str) -> tuple[torch.nn.Module, object]:
    entry = zoo.ZOO[name]
    if not entry.available:
        pytest.skip(f"{name} needs {entry.needs}")
    return zoo.build(name)


@pytest.mark.parametrize("name", ATTENTION_MODELS)
def test_every_multiply_has_its_bits_attention_products_included(name: str) -> None:
    model, inputs = _build(name)
    plan = geta.prepare(model, inputs, geta.Config(weight_bits=(4, 8), act_bits=(4, 8)))
    for q in plan.quantizers.values():
        q.set_bits(5)
    layers = report(model, inputs).layers
    assert sum(layer.kind == "matmul" for layer in layers) >= 2  # q·kᵀ and p·v of each attention
    rows = [layer for layer in layers if layer.kind != "embedding"]  # every multiply, not only those
    assert all((r.weight_bits, r.act_bits) == (5, 5) for r in rows), [
        (r.name, r.weight_bits, r.act_bits) for r in rows
    ]
    products = {id(q) for n, q in plan.quantizers.items() if ".qk." in n or ".pv." in n}
    costs = [c for c in layer_costs(model, inputs) if c.weight is None]  # activation x activation
    assert costs and all({id(c.weight_quantizer), id(c.act_quantizer)} <= products for c in costs)


def test_llama_recipe_at_4_4_bits_reports_every_multiply_and_relative_bops_below_1_6_percent() -> None:
    pytest.importorskip("transformers")
    from geta.recipes.data import load_data
    from geta.recipes.models import build_model

    data = load_data("text")
    model, x = build_model("llama", data).eval(), data.example(2)[:1]
    plan = geta.prepare(model, x, geta.Config(weight_bits=(4, 4), act_bits=(4, 4)))
    for q in plan.quantizers.values():
        q.set_bits(4)
    zero_random_groups(plan, fraction=0.6, seed=0)  # the CLI's default sparsity
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = report(geta.convert(model, plan), x)
    multiplies = [layer for layer in r.layers if layer.kind != "embedding"]
    assert sum(layer.kind == "matmul" for layer in multiplies) == 4  # q·kᵀ and p·v of 2 layers
    assert all((layer.weight_bits, layer.act_bits) == (4, 4) for layer in multiplies)
    assert r.relative_bops <= 0.016, r.relative_bops


@pytest.mark.parametrize("quantize_embeddings", [False, True])
def test_embeddings_count_in_size_at_their_bits_and_cost_no_bops(quantize_embeddings: bool) -> None:
    model, inputs = zoo.build("text_classifier")  # nn.Embedding(64, 16) -> mean -> MLP
    config = geta.Config(weight_bits=(4, 8), act_bits=(4, 8), quantize_embeddings=quantize_embeddings)
    plan = geta.prepare(model, inputs, config)
    for q in plan.quantizers.values():
        q.set_bits(6)
    r = report(model, inputs)
    emb = r.layers[0]
    bits = 6 if quantize_embeddings else 32
    assert (emb.kind, emb.macs, emb.bops, emb.params) == ("embedding", 0, 0, 64 * 16)
    assert emb.weight_bits == bits and emb.size_bits == 64 * 16 * bits + 32 * quantize_embeddings
    assert ("emb.weight" in plan.quantizers) == quantize_embeddings
    assert r.size_bits == sum(layer.size_bits for layer in r.layers) + r.other_size_bits
