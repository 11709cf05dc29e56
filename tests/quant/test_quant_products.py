"""Quantizers on activation x activation products (`geta.quant.products`), unit level.

The mechanism: a module's product calls are intercepted during its forward and their operands
fake-quantized; call k of the holder is the k-th product node of the module in the graph, and a
forward whose calls differ from those raises instead of quantizing the wrong operands. How a
call is matched to its call k (its site, or its position) is tested in test_quant_product_calls.py.
"""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geta.errors import GetaError
from geta.quant import LearnableQuantizer
from geta.quant.products import (
    ATTENTION,
    MATMUL,
    attach_product_quantizers,
    detach_product_quantizers,
    product_quantizers,
    quantized_attention,
    record_products,
    restore_product_quantizers,
)


class Scores(nn.Module):
    """A weight product (x @ w) then an attention of the result with itself."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 8) / 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.w  # (B, T, 8): a weight product, call 0
        p = torch.softmax(torch.matmul(h, h.transpose(-2, -1)), -1)  # call 1: (B, T, T)
        return torch.bmm(p, h)  # call 2: (B, T, 8)


class Sdpa(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _quantizers(
    n: int, bits: float = 3, *, signed: tuple[bool, ...] | None = None
) -> list[LearnableQuantizer]:
    out = []
    for i in range(n):
        q = LearnableQuantizer(init_bits=bits, signed=True if signed is None else signed[i])
        q.init_from(torch.tensor(2.0))
        out.append(q)
    return out


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@pytest.mark.parametrize(
    "case",
    ["plain", "causal", "bool_mask", "float_mask", "gqa", "scale", "3d"],
)
def test_quantized_attention_with_identity_quantizers_is_sdpa(case: str) -> None:
    torch.manual_seed(0)
    hq, hk = (4, 2) if case == "gqa" else (2, 2)
    q, k, v = torch.randn(2, hq, 5, 8), torch.randn(2, hk, 6, 8), torch.randn(2, hk, 6, 3)
    if case == "3d":
        q, k, v = q[:, 0], k[:, 0], v[:, 0]  # (B, L, E)
    options: dict[str, object] = {
        "causal": {"is_causal": True},
        "bool_mask": {"attn_mask": torch.rand(5, 6) > 0.3},
        "float_mask": {"attn_mask": torch.randn(2, 1, 5, 6)},
        "gqa": {"enable_gqa": True},
        "scale": {"scale": 0.3},
    }.get(case, {})  # type: ignore[assignment]
    if case == "bool_mask":
        options["attn_mask"][:, 0] = True  # type: ignore[index]  # no row fully masked
    ref = F.scaled_dot_product_attention(q, k, v, **options)  # type: ignore[arg-type]
    out = quantized_attention(q, k, v, [_identity] * 4, **options)  # type: ignore[arg-type]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_matmul_operands_are_quantized_at_their_call_and_weight_products_keep_their_place() -> None:
    torch.manual_seed(0)
    model, x = Scores(), torch.randn(2, 5, 8)
    float_out = model(x)
    a, b, p, v = _quantizers(4, signed=(True, True, False, True))
    holder = attach_product_quantizers(model, (MATMUL, MATMUL, MATMUL), {1: [a, b], 2: [p, v]})
    assert product_quantizers(model) is holder and holder.quantizers() == [a, b, p, v]
    h = x @ model.w
    probs = torch.softmax(torch.matmul(a(h), b(h.transpose(-2, -1))), -1)
    torch.testing.assert_close(model(x), torch.bmm(p(probs), v(h)))  # call 0 (x @ w) untouched
    assert detach_product_quantizers(model) is holder and product_quantizers(model) is None
    torch.testing.assert_close(model(x), float_out)  # hooks gone: float again
    assert not model._forward_pre_hooks and not model._forward_hooks


def test_sdpa_call_becomes_eager_attention_with_p_quantized() -> None:
    torch.manual_seed(0)
    model = Sdpa()
    q, k, v = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4)
    qs = _quantizers(4, signed=(True, True, True, False))
    attach_product_quantizers(model, (ATTENTION,), {0: qs})
    expected = quantized_attention(q, k, v, qs, is_causal=True)
    torch.testing.assert_close(model(q, k, v), expected)
    scores = qs[0](q) @ qs[1](k).transpose(-2, -1) / 2  # scale 1/sqrt(4)
    scores = scores.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(expected, qs[3](scores.softmax(-1)) @ qs[2](v))


def test_record_products_sees_float_operands_and_every_call() -> None:
    model, x = Scores(), torch.randn(2, 5, 8)
    a, b = _quantizers(2, bits=2)
    attach_product_quantizers(model, (MATMUL, MATMUL, MATMUL), {1: [a, b]})
    with record_products([model]) as record:
        out = model(x)
        model(x)
    h = (x @ model.w).detach()
    assert record.kinds[model] == [(MATMUL, MATMUL, MATMUL)] * 2
    assert record.peaks[a] == pytest.approx(float(h.abs().max()))
    torch.testing.assert_close(out, Scores.forward(model, x))  # float while recording...
    assert not torch.allclose(model(x), out)  # ...quantized (2 bits) afterwards


def test_the_mode_is_popped_when_forward_raises() -> None:
    class Fails(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")  # before its product call

    model = Fails()
    attach_product_quantizers(model, (MATMUL,), {0: _quantizers(2, bits=2)})
    with pytest.raises(RuntimeError, match="boom"):
        model(torch.randn(3, 3))
    assert product_quantizers(model)._active == []  # type: ignore[union-attr]
    x = torch.randn(3, 3)
    assert torch.equal(x @ x, torch.mm(x, x))  # a leaked mode would quantize this call 0 to 2 bits


def test_product_quantizers_survive_deepcopy_and_pickle() -> None:
    model, x = Scores(), torch.randn(2, 5, 8)
    attach_product_quantizers(model, (MATMUL, MATMUL, MATMUL), {1: _quantizers(2), 2: _quantizers(2)})
    ref = model(x)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    for other in (copy.deepcopy(model), torch.load(buf, weights_only=False)):
        torch.testing.assert_close(other(x), ref)
        assert len(product_quantizers(other).quantizers()) == 4  # type: ignore[union-attr]


def test_captured_graph_holds_one_fake_quant_node_per_operand() -> None:
    model, x = Scores(), torch.randn(2, 5, 8)
    attach_product_quantizers(model, (MATMUL, MATMUL, MATMUL), {1: _quantizers(2), 2: _quantizers(2)})
    program = torch.export.export(model, (x,), strict=False)
    quants = [n for n in program.graph.nodes if n.target == torch.ops.geta.fake_quant.default]
    assert len(quants) == 4


def test_attach_checks_calls_and_operand_counts() -> None:
    with pytest.raises(Exception, match="out of range"):
        attach_product_quantizers(Scores(), (MATMUL,), {1: _quantizers(2)})
    with pytest.raises(Exception, match="4 operand quantizers"):
        attach_product_quantizers(Sdpa(), (ATTENTION,), {0: _quantizers(2)})
    model = Scores()
    attach_product_quantizers(model, (MATMUL,), {0: [nn.Identity(), _quantizers(1)[0]]})
    with pytest.raises(Exception, match="already has product quantizers"):
        attach_product_quantizers(model, (MATMUL,), {0: _quantizers(2)})


def test_layout_restores_an_equal_holder_and_slots_can_be_replaced() -> None:
    model, x = Scores(), torch.randn(2, 5, 8)
    a, b, p = _quantizers(3, signed=(True, True, False))
    attach_product_quantizers(
        model,
        (MATMUL, MATMUL, MATMUL),
        {1: [a, b], 2: [p, nn.Identity()]},
        {1: ["qk.q", "qk.k"], 2: ["pv.p", "pv.v"]},
    )
    holder = product_quantizers(model)
    assert holder is not None
    ref, layout = model(x), holder.layout()
    fresh = Scores()
    fresh.load_state_dict(model.state_dict(), strict=False)  # the weight w
    restored = restore_product_quantizers(fresh, json.loads(json.dumps(layout)))
    fresh.load_state_dict(model.state_dict())  # now the quantizer scalars too: same names
    torch.testing.assert_close(fresh(x), ref)
    assert restored.layout() == layout and restored.labels == holder.labels
    assert [(c, i, label) for c, i, label, _ in holder.slots()] == [
        (1, 0, "qk.q"), (1, 1, "qk.k"), (2, 0, "pv.p"), (2, 1, "pv.v"),
    ]  # fmt: skip
    assert holder.replace(2, 0, nn.Identity()) is p  # e.g. an export's quantize-dequantize module
    h = x @ model.w
    torch.testing.assert_close(model(x), torch.bmm(torch.softmax(a(h) @ b(h.transpose(-2, -1)), -1), h))


class Branches(nn.Module):
    """Runs one product or two, as told: a forward that can leave the captured order."""

    def forward(self, x: torch.Tensor, twice: bool = False) -> torch.Tensor:
        y = x @ x  # call 0
        return torch.bmm(y, x) if twice else y  # call 1 only when told


def test_a_forward_leaving_the_attached_order_raises_a_clear_error() -> None:
    x = torch.randn(2, 3, 3)
    model = Branches()
    attach_product_quantizers(model, (MATMUL,), {0: _quantizers(2)})
    model(x)  # as attached: fine
    with pytest.raises(GetaError, match=r"Branches: its forward called the products \['matmul', 'matmul'\]"):
        model(x, twice=True)  # one call too many
    fewer = Branches()
    attach_product_quantizers(fewer, (MATMUL, MATMUL), {1: _quantizers(2)})
    with pytest.raises(GetaError, match=r"called the products \['matmul'\] where .* \['matmul', 'matmul'\]"):
        fewer(x)  # one call too few: its quantizers would never run
    sdpa = Sdpa()
    attach_product_quantizers(sdpa, (MATMUL,), {0: _quantizers(2)})
    with pytest.raises(GetaError, match=r"\['attention'\] where .* \['matmul'\]"):
        sdpa(x, x, x)  # a call of another kind
    assert product_quantizers(sdpa)._active == []  # type: ignore[union-attr]  # popped all the same
    with record_products([model, fewer]) as record:  # calibration records, never raises
        model(x, twice=True)
        fewer(x)
    assert record.kinds == {model: [(MATMUL, MATMUL)], fewer: [(MATMUL,)]}


def test_detach_removes_the_hooks_of_a_copy_and_leaves_the_original_quantized() -> None:
    model, x = Scores(), torch.randn(2, 5, 8)
    float_out = model(x)
    attach_product_quantizers(model, (MATMUL, MATMUL, MATMUL), {1: _quantizers(2, bits=2)})
    quantized = model(x)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    for other in (copy.deepcopy(model), torch.load(buf, weights_only=False)):
        assert detach_product_quantizers(other) is not None
        assert not other._forward_pre_hooks and not other._forward_hooks
        torch.testing.assert_close(other(x), float_out)
    assert len(model._forward_pre_hooks) == len(model._forward_hooks) == 1
    torch.testing.assert_close(model(x), quantized)
    assert not torch.allclose(quantized, float_out)
