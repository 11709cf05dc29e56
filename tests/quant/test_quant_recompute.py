"""`recompute_quantized`: the same gradients bit for bit, without keeping the fake-quant outputs."""

from __future__ import annotations

import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import geta
from geta.quant import LearnableQuantizer, recompute_quantized
from geta.quant.recompute import RECIPE


def _forward(q: LearnableQuantizer, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, weakref.ref]:
    out = q(x)
    return F.linear(out, w).square().sum(), weakref.ref(out)


@pytest.mark.parametrize("rows", [8, 2048], ids=["small", "fused-kernel size"])
def test_the_quantized_tensor_is_not_kept_for_backward(rows: int, device: torch.device) -> None:
    q = LearnableQuantizer(init_bits=4).to(device)
    x, w = torch.randn(rows, 4, device=device), torch.randn(3, 4, device=device, requires_grad=True)
    loss, kept = _forward(q, x, w)
    assert kept() is not None  # linear saved Q(x)
    with recompute_quantized():
        loss2, dropped = _forward(q, x, w)
    assert dropped() is None  # only its recipe (x and the scalars) is saved
    loss2.backward()
    grads = [w.grad.clone(), q.step.grad.clone()]
    w.grad = q.step.grad = None
    loss.backward()
    assert torch.equal(grads[0], w.grad) and torch.equal(grads[1], q.step.grad)


def test_prepared_model_gradients_are_bit_for_bit(device: torch.device) -> None:
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    config = geta.Config(target_sparsity=0.5, weight_bits=(4, 8), act_bits=(4, 8), recompute_quantized=False)
    plan = geta.prepare(model, (torch.randn(4, 6),), config)
    model.to(device)
    x = torch.randn(4, 8, 6, device=device)  # 3-D: the linears save views of Q(x) and Q(W)
    grads = []
    for recompute in (False, True):
        model.zero_grad()
        with recompute_quantized() if recompute else torch.enable_grad():
            loss = model(x).square().mean()
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    assert len(plan.quantizers) >= 6


def test_views_of_the_output_are_saved_as_recipes_too() -> None:
    """A layer saves views (linear: the weight's transpose, a 3-D input reshaped)."""
    from geta.quant import recompute

    q = LearnableQuantizer(init_bits=4)
    x, w = torch.randn(2, 5, 4), torch.randn(3, 4, requires_grad=True)
    out = q(x)
    for saved in (out, out.reshape(10, 4), out.transpose(1, 2), out[1]):
        packed = recompute._pack(saved)
        assert isinstance(packed, recompute._Recipe)
        assert torch.equal(recompute._unpack(packed), saved)
        assert recompute._unpack(packed).stride() == saved.stride()
    assert recompute._pack(w) is w and recompute._pack(x) is x  # anything else is kept as is


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def _entries(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the entries into `recompute_quantized` made by the forward hooks."""
    from geta.quant import recompute

    entered: list[int] = []
    real = recompute.recompute_quantized

    def counting():
        entered.append(1)
        return real()

    monkeypatch.setattr(recompute, "recompute_quantized", counting)
    return entered


def test_a_prepared_model_recomputes_by_default_with_the_same_gradients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entered = _entries(monkeypatch)
    x = torch.randn(4, 8, 6)
    grads = []
    for recompute in (True, False):
        torch.manual_seed(0)
        model = _mlp()
        config = geta.Config(
            target_sparsity=0.5, weight_bits=(4, 8), act_bits=(4, 8), recompute_quantized=recompute
        )
        geta.prepare(model, (torch.randn(4, 6),), config)
        before = len(entered)
        model(x).square().mean().backward()
        assert len(entered) - before == (1 if recompute else 0)
        grads.append([p.grad for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0 and all(torch.equal(a, b) for a, b in zip(*grads))


def test_the_forward_hooks_stand_aside_and_always_leave(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other saved-tensor hooks (offloading) keep every tensor; no grad, no entry; a forward that
    raises still leaves the context; copies and pickles carry the hooks."""
    import copy
    import io

    entered = _entries(monkeypatch)
    model = _mlp()
    geta.prepare(model, (torch.randn(4, 6),), geta.Config(weight_bits=(4, 8), act_bits=(4, 8)))
    seen: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t) or t, lambda t: t):
        model(torch.randn(4, 6)).sum().backward()
    assert not entered and any(hasattr(t, RECIPE) for t in seen)
    with torch.no_grad():
        model(torch.randn(4, 6))
    assert not entered
    with pytest.raises(RuntimeError):
        model(torch.randn(4, 5))  # wrong width: the first linear raises inside the context
    assert len(entered) == 1 and torch._C._autograd._top_saved_tensors_default_hooks(False) is None
    buffer = io.BytesIO()
    torch.save(model, buffer)
    for twin in (copy.deepcopy(model), torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)):
        twin(torch.randn(4, 6)).sum().backward()
    assert len(entered) == 3


def test_config_rejects_a_non_bool_recompute_quantized() -> None:
    with pytest.raises(geta.ConfigError, match="recompute_quantized"):
        geta.Config(recompute_quantized="yes")  # type: ignore[arg-type]
