"""Which call a product call is (`geta.quant.product_calls`): found by its call site
(`geta.quant.call_sites`) in eager forwards once the holder has learned the sites, by its
position while torch.compile traces.

Each test checks that a call gets the quantizers of its own captured call, against a reference
that applies the intended quantizers by hand; by position alone, the swapped and looped forwards
here would get each other's quantizers.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
from torch import nn

import geta
from geta.errors import GetaError
from geta.quant import LearnableQuantizer
from geta.quant.products import MATMUL, attach_product_quantizers, product_quantizers, record_products
from geta.testing import model_outputs, zoo


def _quantizers(peaks: tuple[float, ...], bits: float = 3) -> list[LearnableQuantizer]:
    out = []
    for peak in peaks:
        q = LearnableQuantizer(init_bits=bits)
        q.init_from(torch.tensor(peak))
        out.append(q)
    return out


class TwoProducts(nn.Module):
    """Two activation products of one kind (equal counts) whose order a flag decides."""

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return x @ x.transpose(-2, -1)  # site "scores": call 0 as captured

    def gram(self, y: torch.Tensor) -> torch.Tensor:
        return torch.matmul(y.transpose(-2, -1), y)  # site "gram": call 1 as captured

    def other(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x, x.transpose(-2, -1))  # a site never captured

    def forward(self, x: torch.Tensor, y: torch.Tensor, order: str = "captured") -> tuple[torch.Tensor, ...]:
        if order == "swapped":
            g = self.gram(y)
            return self.scores(x), g
        if order == "other":
            return self.other(x), self.gram(y)
        return self.scores(x), self.gram(y)


def _two_products() -> tuple[TwoProducts, list[LearnableQuantizer], torch.Tensor, torch.Tensor]:
    """TwoProducts with 3-bit quantizers on both calls, of very different grids (peak 4 for call
    0, 0.25 for call 1): quantizing one call with the other's quantizers changes its result."""
    torch.manual_seed(0)
    model, qs = TwoProducts(), _quantizers((4.0, 4.0, 0.25, 0.25))
    attach_product_quantizers(model, (MATMUL, MATMUL), {0: qs[:2], 1: qs[2:]})
    return model, qs, torch.randn(2, 3, 4) * 2, torch.randn(2, 3, 4) / 8


def _by_hand(qs: list[LearnableQuantizer], x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The intended result: scores with call 0's quantizers, gram with call 1's."""
    return qs[0](x) @ qs[1](x.transpose(-2, -1)), torch.matmul(qs[2](y.transpose(-2, -1)), qs[3](y))


def test_calls_in_another_order_get_the_quantizers_of_their_own_site() -> None:
    model, qs, x, y = _two_products()
    want = _by_hand(qs, x, y)
    wrong = _by_hand([qs[2], qs[3], qs[0], qs[1]], x, y)  # what quantizing by position would give
    assert not torch.equal(want[0], wrong[0]) and not torch.equal(want[1], wrong[1])
    holder = product_quantizers(model)
    assert holder is not None and holder.sites == {}
    for got in (model(x, y), model(x, y, "swapped"), model(x, y)):  # learned on the first forward
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert sorted((fn, occ, call) for (_, fn, _, occ), call in holder.sites.items()) == [
        ("gram", 0, 1), ("scores", 0, 0),
    ]  # fmt: skip


def test_the_sites_are_learned_while_recording_then_used() -> None:
    model, qs, x, y = _two_products()
    with record_products([model]) as record:  # the calibration forward, in the captured order
        model(x, y)
    assert record.kinds[model] == [(MATMUL, MATMUL)]
    assert {fn for _, fn, _, _ in product_quantizers(model).sites} == {"scores", "gram"}  # type: ignore[union-attr]
    got = model(x, y, "swapped")  # the first forward after calibration already runs swapped
    assert all(torch.equal(g, w) for g, w in zip(got, _by_hand(qs, x, y), strict=True))


def test_one_line_run_twice_is_two_calls_told_apart_by_their_occurrence() -> None:
    class Loop(nn.Module):
        def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
            out = []
            for x in xs:
                out.append(x @ x.transpose(-2, -1))  # one line: call 0, then call 1
            return out

    torch.manual_seed(0)
    model, qs = Loop(), _quantizers((4.0, 4.0, 0.25, 0.25))
    holder = attach_product_quantizers(model, (MATMUL, MATMUL), {0: qs[:2], 1: qs[2:]})
    xs = [torch.randn(3, 4) * 2, torch.randn(3, 4) / 8]
    want = [qs[2 * i](x) @ qs[2 * i + 1](x.transpose(-2, -1)) for i, x in enumerate(xs)]
    for _ in range(2):  # occurrences count again from 0 in every forward
        assert all(torch.equal(g, w) for g, w in zip(model(xs), want, strict=True))
    (line,) = {line for _, _, line, _ in holder.sites}
    assert sorted((occ, call) for (_, _, _, occ), call in holder.sites.items()) == [(0, 0), (1, 1)]
    with pytest.raises(GetaError, match=rf":{line} \(forward, occurrence 2\), which is none of the sites"):
        model([*xs, xs[0]])  # a third run of the line: a site never captured


def test_a_call_at_a_site_never_captured_raises_naming_the_site() -> None:
    model, _, x, y = _two_products()
    model(x, y)  # learns the sites
    line = TwoProducts.other.__code__.co_firstlineno + 1
    with pytest.raises(
        GetaError, match=rf"TwoProducts: .*{Path(__file__).name}:{line} \(other\), .*\(scores\), .*\(gram\)"
    ):
        model(x, y, "other")
    assert product_quantizers(model)._active == []  # type: ignore[union-attr]  # popped all the same


def test_deepcopy_keeps_the_sites_and_pickling_relearns_them() -> None:
    model, qs, x, y = _two_products()
    want = _by_hand(qs, x, y)
    model(x, y)
    copied = copy.deepcopy(model)
    assert product_quantizers(copied).sites == product_quantizers(model).sites  # type: ignore[union-attr]
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert product_quantizers(loaded).sites == {}  # type: ignore[union-attr]  # file names may differ
    loaded(x, y)  # its first eager forward, in the captured order, learns them again
    for other in (copied, loaded):
        assert all(torch.equal(g, w) for g, w in zip(other(x, y, "swapped"), want, strict=True))


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, -1)
        return torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, -1) @ v


def test_fullgraph_compile_keeps_one_graph_and_equals_eager() -> None:
    """Frames cannot be read while dynamo traces: the compiled forward goes by position."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    torch.manual_seed(0)
    model, x = Attention(), torch.randn(2, 5, 8)
    qs = _quantizers((2.0, 2.0, 1.0, 2.0), bits=4)
    holder = attach_product_quantizers(model, (MATMUL, MATMUL), {0: qs[:2], 1: qs[2:]})
    eager = model(x)
    assert len(holder.sites) == 2
    graphs: list[str] = []

    def keep(gm: torch.fx.GraphModule, _inputs: list) -> object:
        graphs.append(gm.code)
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=aot_autograd(fw_compiler=keep, bw_compiler=keep), fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    assert len(graphs) == 2  # one forward, one backward: no graph break
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    assert not torch.allclose(eager, Attention.forward(model, x))  # (the products are quantized)
    torch._dynamo.reset()


@pytest.mark.parametrize(
    ("name", "function"),
    [("hf_llama", "eager_attention_forward"), ("hf_llama_sdpa", "sdpa_attention_forward")],
)
def test_hf_llama_products_found_by_site_equal_those_found_by_position(name: str, function: str) -> None:
    """transformers' attention functions make the calls: their lines are the sites, one per
    product of each layer's own holder; a forward by site equals one by position exactly."""
    if not zoo.ZOO[name].available:
        pytest.skip(f"{name} needs {zoo.ZOO[name].needs}")
    model, inputs = zoo.build(name)
    geta.prepare(model, inputs, geta.Config(weight_bits=(4, 8), act_bits=(4, 8)))
    holders = [h for h in map(product_quantizers, model.modules()) if h is not None]
    assert len(holders) == 2  # one per layer, sites learned by the calibration forward
    for h in holders:
        assert len(set(h.sites.values())) == len(h.kinds) and {f for _, f, _, _ in h.sites} == {function}
    learned = [dict(h.sites) for h in holders]
    by_site = model_outputs(model, inputs).logits  # type: ignore[attr-defined]
    for h in holders:
        h.sites = {}  # unknown: the next forward goes by position (and learns them again)
    by_position = model_outputs(model, inputs).logits  # type: ignore[attr-defined]
    assert [h.sites for h in holders] == learned
    assert torch.equal(by_site, by_position)
