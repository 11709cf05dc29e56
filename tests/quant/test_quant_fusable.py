"""The fusable fake-quant (`geta.quant.fusable`) is the op's math, and torch.compile uses it.

Eager: `fusable_fake_quant` equals ``torch.ops.geta.fake_quant`` bit for bit, forward and the four
straight-through gradients. Compiled: ``fake_quant`` traces to plain aten ops (no opaque custom op
left for inductor), with no graph break, while ``torch.export`` still keeps the op as one node.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import geta
from geta.config import STE
from geta.quant import functional as F
from geta.quant.fusable import fusable_fake_quant

AS_INT = {torch.float64: torch.int64, torch.float32: torch.int32, torch.bfloat16: torch.int16}


def same_bits(a: Tensor | None, b: Tensor | None) -> bool:
    """Equal bit for bit (NaN equals NaN; -0 differs from +0), dtype and shape included."""
    if a is None or b is None:
        return a is b
    if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a.isnan(), b.isnan()):
        return False
    a, b = a.cpu(), b.cpu()
    keep = ~a.isnan()
    return torch.equal(a.contiguous().view(AS_INT[a.dtype])[keep], b.contiguous().view(AS_INT[b.dtype])[keep])


def sample(dtype: torch.dtype, special: bool) -> tuple[Tensor, Tensor]:
    """x with ±0 and values beyond qmax (``special``: inf/NaN too), and an incoming gradient."""
    gen = torch.Generator().manual_seed(0)
    x, g = torch.randn(6, 5, 7, generator=gen) * 0.8, torch.randn(6, 5, 7, generator=gen)
    flat = x.view(-1)
    flat[:20], flat[20:40], flat[40:80] = 0.0, -0.0, flat[40:80] * 5
    if special:
        flat[-4:] = torch.tensor([float("inf"), float("-inf"), float("nan"), 1e-30])
    return x.to(dtype), g.to(dtype)


def run(fn, x: Tensor, g: Tensor, t: float, signed: bool, ste: STE, wants: tuple[bool, ...]) -> list:
    sdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    values = [x, *(torch.tensor(v, dtype=sdt, device=x.device) for v in (2 / 127, 1.0, t))]
    leaves = [v.detach().clone().requires_grad_(w) for v, w in zip(values, wants)]
    y = fn(*leaves, signed=signed, ste=ste)
    y.backward(g)
    return [y.detach(), *(leaf.grad for leaf in leaves)]


@pytest.mark.parametrize("special", [False, True], ids=["finite", "inf-nan"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("t", [1.0, 1.3])
@pytest.mark.parametrize("ste", list(STE))
@pytest.mark.parametrize("signed", [True, False])
def test_fusable_equals_the_op_bit_for_bit(
    signed: bool, ste: STE, t: float, dtype: torch.dtype, special: bool, device: torch.device
) -> None:
    x, g = (v.to(device) for v in sample(dtype, special))
    wants = (True,) * 4
    got, want = (
        run(fusable_fake_quant, x, g, t, signed, ste, wants),
        run(F.fake_quant, x, g, t, signed, ste, wants),
    )
    assert [same_bits(a, b) for a, b in zip(got, want)] == [True] * 5


@pytest.mark.parametrize(
    "wants", [(True, False, False, False), (False, True, True, True), (True, True, False, True)]
)
def test_fusable_computes_only_the_requested_gradients(wants: tuple[bool, ...]) -> None:
    x, g = sample(torch.float32, False)
    got = run(fusable_fake_quant, x, g, 0.8, True, STE.CLIPPED, wants)
    want = run(F.fake_quant, x, g, 0.8, True, STE.CLIPPED, wants)
    assert [same_bits(a, b) for a, b in zip(got, want)] == [True] * 5


def tiny_plan(learn_exponent: bool = True) -> geta.Plan:
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))
    config = geta.Config(
        target_sparsity=0.5, weight_bits=(4, 8), act_bits=(4, 8), learn_exponent=learn_exponent
    )
    return geta.prepare(model, (torch.randn(4, 6),), config)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("ste", list(STE))
def test_unit_exponent_path_equals_the_general_one_at_t_1(
    signed: bool, ste: STE, device: torch.device
) -> None:
    """With t fixed at 1 the fused math skips pow: the same value and x/step/qmax gradients."""
    x, g = (v.to(device) for v in sample(torch.float32, True))
    wants = (True, True, True, False)
    unit = run(lambda *a, **k: fusable_fake_quant(*a, **k, unit_exponent=True), x, g, 1.0, signed, ste, wants)
    general = run(fusable_fake_quant, x, g, 1.0, signed, ste, wants)
    assert [same_bits(a, b) for a, b in zip(unit, general)] == [True] * 5


def test_unit_exponent_refuses_a_learned_exponent() -> None:
    with pytest.raises(ValueError, match="unit_exponent"):
        run(lambda *a, **k: fusable_fake_quant(*a, **k, unit_exponent=True), *sample(torch.float32, False),
            1.0, True, STE.CLIPPED, (True, True, True, True))  # fmt: skip


@pytest.mark.parametrize("learn", [True, False], ids=["learned-t", "fixed-t"])
def test_compiled_graph_has_powers_only_for_a_learned_exponent(learn: bool) -> None:
    """A fixed exponent (t = 1) compiles to a graph without any power, exp or log; a learned one
    computes m ** t as exp(t ln m) (`geta.quant.fusable._power`)."""
    graphs, got, want, _ = compiled_graphs(tiny_plan(learn_exponent=learn))
    code = "\n".join(graphs)
    assert all((op in code) is learn for op in ("aten.pow", "aten.exp", "aten.log"))
    assert_gradients_close(got, want, learned_exponent=learn)


def grads_of(model: nn.Module, fn, x: Tensor) -> list[Tensor]:
    model.zero_grad()
    fn(x).square().mean().backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def assert_gradients_close(got: list[Tensor], want: list[Tensor], *, learned_exponent: bool) -> None:
    """Compiled vs eager parameter gradients: tensors to float rounding; the quantizers' scalars
    too, except with a learned exponent. Their gradients sum rounding residuals round(u/d) - u/d,
    and the compiled u = exp(t ln m) may differ from eager pow in the last bit, which moves a
    small residual by a large share: they agree to ~1e-3 there."""
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        loose = a.dim() == 0 and learned_exponent
        assert torch.allclose(a, b, rtol=1e-2 if loose else 1e-5, atol=1e-5 if loose else 1e-6)


def compiled_graphs(plan: geta.Plan) -> tuple[list[str], list[Tensor], list[Tensor], nn.Module]:
    """The aten graphs (code) dynamo hands to the backend for ``plan.model``, fullgraph; the
    parameter gradients of one input through the compiled and the eager model; the compiled model."""
    from torch._dynamo.backends.common import aot_autograd

    graphs: list[str] = []

    def keep(gm: torch.fx.GraphModule, _inputs: list) -> torch.fx.GraphModule:
        graphs.append(gm.code)
        return gm

    torch._dynamo.reset()
    backend = aot_autograd(fw_compiler=keep, bw_compiler=keep)
    compiled = torch.compile(plan.model, backend=backend, fullgraph=True)
    x = torch.randn(5, 6)
    return graphs, grads_of(plan.model, compiled, x), grads_of(plan.model, plan.model, x), compiled


def test_compile_traces_plain_ops_without_graph_break() -> None:
    """aot_eager: the aten graphs dynamo hands to inductor hold no geta op, and run the same math."""
    plan = tiny_plan()
    graphs, got, want, compiled = compiled_graphs(plan)
    x = torch.randn(5, 6)
    assert len(graphs) == 2  # one forward, one backward: no graph break
    assert all("geta" not in code for code in graphs)
    assert any("round" in code for code in graphs)  # the quantizers' math is in the graph
    assert_gradients_close(got, want, learned_exponent=True)
    torch.testing.assert_close(compiled(x), plan.model(x), rtol=0, atol=0)


def test_export_keeps_the_registered_op() -> None:
    """torch.export (also a dynamo trace) still sees one geta op per quantizer."""
    plan = tiny_plan()
    program = torch.export.export(plan.model, (torch.randn(4, 6),))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert sum("geta.fake_quant" in t for t in targets) >= 3  # two weights and at least one input


@pytest.mark.slow
def test_inductor_compiled_training_step_matches_eager() -> None:
    plan = tiny_plan()
    torch._dynamo.reset()
    compiled = torch.compile(plan.model, fullgraph=True)
    x = torch.randn(5, 6)
    got, want = grads_of(plan.model, compiled, x), grads_of(plan.model, plan.model, x)
    for a, b in zip(got, want):
        # inductor's own LayerNorm and sum orders may move a value across a rounding boundary in
        # the last bit: a scalar gradient (a sum of rounding residuals over 40 elements) may then
        # move by one element's share; every other gradient agrees to rounding
        tol = 0.1 * float(b.abs().max()) if b.dim() == 0 else 1e-5
        assert torch.allclose(a, b, rtol=1e-4, atol=tol)
    torch.testing.assert_close(compiled(x), plan.model(x), rtol=1e-6, atol=1e-6)
