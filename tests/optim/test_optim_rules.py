"""The pure rules of QASSO against slow, obvious references (loops over units and blocks)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from geta.optim import rules
from geta.quant.functional import bits, fake_quant, step_for_bits

F64 = torch.float64


# --------------------------------------------------------------------------- references


def ref_forget_rate(g: list[float], c: list[float], *, lr: float, T: int, t: int, eta: float) -> float:
    gn = math.sqrt(sum(v * v for v in g))
    cn = math.sqrt(sum(v * v for v in c))
    if cn <= rules.ZERO_NORM:
        return 0.0
    cos = 0.0 if gn == 0 else max(-1.0, min(1.0, sum(a * b for a, b in zip(c, g)) / (cn * gn)))
    if cos >= 0:
        return 1.0 / (T - t)
    return min(-(1 - eta) * lr * gn / (cos * cn), 1.0 / (T - t))


def ref_forget_steps(gamma: float, grad_sq: float, rdots: list[float], smin: list[float], smax: list[float],
                     *, lr: float, eta: float, zeta: float) -> tuple[float, list[float]]:  # fmt: skip
    """The paper's loop: shrink γ by 0.8 until no step of a layer is below its b_hi bound."""
    neg = [i for i, v in enumerate(rdots) if v < 0 and gamma > 0]
    while True:
        steps = list(smax)
        for i in neg:
            steps[i] = -zeta * eta * lr * grad_sq / len(neg) / (gamma * rdots[i])
        if all(steps[i] >= smin[i] * (1 - 1e-12) for i in neg):
            break
        gamma *= rules.SHRINK
    return gamma, [min(max(s, lo), hi) for s, lo, hi in zip(steps, smin, smax)]


# --------------------------------------------------------------------------- clipped value / residual


@pytest.mark.parametrize("signed", [True, False])
def test_forget_parts_rebuild_the_fake_quant(signed: bool) -> None:
    w = torch.randn(200, dtype=F64) * 2
    step, qmax, expo = (
        torch.tensor(0.07, dtype=F64),
        torch.tensor(1.5, dtype=F64),
        torch.tensor(0.9, dtype=F64),
    )
    c, r = rules.forget_parts(w, step, qmax, expo, signed=signed)
    torch.testing.assert_close(c + step * r, fake_quant(w, step, qmax, expo, signed=signed))
    for i in range(0, 200, 17):  # element by element, from the definitions
        x = float(w[i]) if signed else max(float(w[i]), 0.0)
        s = (x > 0) - (x < 0)
        u = min(abs(x), 1.5) ** 0.9
        assert float(c[i]) == pytest.approx(s * u, abs=1e-12)
        assert float(r[i]) == pytest.approx(s * (round(u / 0.07) - u / 0.07), abs=1e-9)


# --------------------------------------------------------------------------- forget rate


def test_forget_rate_matches_reference() -> None:
    rng = random.Random(0)
    for _ in range(50):
        n, m = rng.randint(1, 6), rng.randint(1, 5)
        gs = [[rng.gauss(0, 1) for _ in range(m)] for _ in range(n)]
        cs = [[rng.gauss(0, 1) if rng.random() > 0.2 else 0.0 for _ in range(m)] for _ in range(n)]
        T = rng.randint(1, 9)
        t, lr = rng.randrange(T), rng.uniform(1e-3, 1)
        got = rules.forget_rate(
            torch.tensor([sum(v * v for v in g) for g in gs], dtype=F64),
            torch.tensor([sum(v * v for v in c) for c in cs], dtype=F64),
            torch.tensor([sum(a * b for a, b in zip(c, g)) for c, g in zip(cs, gs)], dtype=F64),
            lr=lr, period_len=T, t=t,
        )  # fmt: skip
        want = [ref_forget_rate(g, c, lr=lr, T=T, t=t, eta=rules.ETA) for g, c in zip(gs, cs)]
        torch.testing.assert_close(got, torch.tensor(want, dtype=F64), rtol=1e-9, atol=1e-12)


def test_forget_rate_uses_the_norm_not_the_signed_mean() -> None:
    # defect 2: c = [1, -1] has mean 0 but is not zero: it must still be forgotten
    got = rules.forget_rate(
        torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([0.0]), lr=0.1, period_len=4, t=1
    )
    assert float(got) == pytest.approx(1 / 3)
    zero = rules.forget_rate(
        torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.0]), lr=0.1, period_len=4, t=1
    )
    assert float(zero) == 0.0
    with pytest.raises(ValueError):
        rules.forget_rate(torch.ones(1), torch.ones(1), torch.ones(1), lr=0.1, period_len=3, t=3)


# --------------------------------------------------------------------------- step choice


def random_instance(rng: random.Random) -> dict:
    """Random units spanning random layers: rows of ∇, c, r per (unit, layer) block."""
    n_layers, n_units = rng.randint(1, 4), rng.randint(1, 5)
    qmax = [10 ** rng.uniform(-2, 1) for _ in range(n_layers)]  # very different scales (defect 3)
    b_lo, b_hi = rng.randint(2, 6), rng.randint(6, 12)
    smin = [step_for_bits(b_hi, q, 1.0).item() for q in qmax]
    smax = [step_for_bits(b_lo, q, 1.0).item() for q in qmax]
    units = []
    for _ in range(n_units):
        layers = sorted(rng.sample(range(n_layers), rng.randint(1, n_layers)))
        blocks = {}
        for layer in layers:
            m = rng.randint(1, 6)
            blocks[layer] = (
                torch.randn(m, dtype=F64) * qmax[layer],  # ∇ rows
                torch.randn(m, dtype=F64) * qmax[layer],  # c rows
                torch.rand(m, dtype=F64) - 0.5,  # r rows, in [-1/2, 1/2]
            )
        if rng.random() < 0.3:  # some rows of unquantized tensors (biases): no r
            blocks[-1] = (torch.randn(3, dtype=F64), torch.randn(3, dtype=F64), None)
        units.append(blocks)
    T = rng.randint(1, 6)
    return dict(units=units, smin=smin, smax=smax, T=T, t=rng.randrange(T), lr=10 ** rng.uniform(-3, 0))


def vectorise(inst: dict) -> dict:
    grad_sq, c_sq, c_dot, b_unit, b_layer, r_dot = [], [], [], [], [], []
    for u, blocks in enumerate(inst["units"]):
        grad_sq.append(sum(float(g @ g) for g, _, _ in blocks.values()))
        c_sq.append(sum(float(c @ c) for _, c, _ in blocks.values()))
        c_dot.append(sum(float(c @ g) for g, c, _ in blocks.values()))
        for layer, (g, _, r) in blocks.items():
            if r is not None:
                b_unit.append(u), b_layer.append(layer), r_dot.append(float(r @ g))
    t = lambda v, dt=F64: torch.tensor(v, dtype=dt)  # noqa: E731
    return dict(grad_sq=t(grad_sq), c_sq=t(c_sq), c_dot=t(c_dot), block_unit=t(b_unit, torch.long),
                block_layer=t(b_layer, torch.long), r_dot=t(r_dot))  # fmt: skip


def run_rules(inst: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    v = vectorise(inst)
    gamma = rules.forget_rate(
        v["grad_sq"], v["c_sq"], v["c_dot"], lr=inst["lr"], period_len=inst["T"], t=inst["t"]
    )
    smin, smax = torch.tensor(inst["smin"], dtype=F64), torch.tensor(inst["smax"], dtype=F64)
    gamma, block_step = rules.forget_steps(
        gamma,
        v["grad_sq"],
        v["block_unit"],
        v["r_dot"],
        smin[v["block_layer"]],
        smax[v["block_layer"]],
        lr=inst["lr"],
    )
    layer = rules.layer_steps(v["block_layer"], block_step, smax.clone())
    return gamma, block_step, layer


def test_forget_steps_match_the_papers_loop() -> None:
    rng = random.Random(1)
    for _ in range(200):
        inst = random_instance(rng)
        v = vectorise(inst)
        gamma0 = rules.forget_rate(
            v["grad_sq"], v["c_sq"], v["c_dot"], lr=inst["lr"], period_len=inst["T"], t=inst["t"]
        )
        gamma, block_step, _ = run_rules(inst)
        for u in range(len(inst["units"])):
            mine = [i for i in range(len(v["block_unit"])) if int(v["block_unit"][i]) == u]
            layers = [int(v["block_layer"][i]) for i in mine]
            want_g, want_s = ref_forget_steps(
                float(gamma0[u]), float(v["grad_sq"][u]), [float(v["r_dot"][i]) for i in mine],
                [inst["smin"][k] for k in layers], [inst["smax"][k] for k in layers],
                lr=inst["lr"], eta=rules.ETA, zeta=rules.ZETA,
            )  # fmt: skip
            assert float(gamma[u]) == pytest.approx(want_g, rel=1e-9)
            assert [float(block_step[i]) for i in mine] == pytest.approx(want_s, rel=1e-9)


def test_forgetting_is_a_descent_step_inside_every_bit_interval() -> None:
    """<∇_u, s_u> <= -min(1-ζη, η(1-ζ)) α ‖∇_u‖² for every unit, each layer inside its interval."""
    rng = random.Random(2)
    margin = rules.descent_margin()
    for _ in range(300):
        inst = random_instance(rng)
        gamma, _, layer = run_rules(inst)
        lr = inst["lr"]
        for layer_id, step in enumerate(layer.tolist()):  # defect 3: per-layer intervals
            assert inst["smin"][layer_id] * (1 - 1e-12) <= step <= inst["smax"][layer_id] * (1 + 1e-12)
        for u, blocks in enumerate(inst["units"]):
            inner, grad_sq = 0.0, 0.0
            for lid, (g, c, r) in blocks.items():
                q = c if r is None else c + layer[lid] * r  # Q(x) = c + d_l r
                s = -lr * g - gamma[u] * q  # the applied update of these rows
                inner += float(g @ s)
                grad_sq += float(g @ g)
            assert inner <= -margin * lr * grad_sq * (1 - 1e-9) + 1e-15


def test_layer_steps_take_the_finest_request() -> None:
    block_layer = torch.tensor([2, 0, 2, 2])
    block_step = torch.tensor([0.5, 0.3, 0.2, 0.9])
    current = torch.tensor([1.0, 7.0, 1.0])
    pairs = list(zip(block_layer.tolist(), block_step.tolist()))
    want = [min(s for k, s in pairs if k == i) if i in (0, 2) else 7.0 for i in range(3)]
    assert rules.layer_steps(block_layer, block_step, current).tolist() == pytest.approx(want)


# --------------------------------------------------------------------------- bits, quotas


def test_step_bounds_and_frozen_bits_match_the_scalar_functions() -> None:
    qmax = torch.tensor([0.5, 2.0, 3.0, 0.1])
    expo = torch.tensor([1.0, 0.8, 1.1, 1.0])
    signed = torch.tensor([True, False, True, False])
    lo, hi = torch.tensor([4.0, 3.0, 2.0, 4.0]), torch.tensor([8.0, 8.0, 5.0, 16.0])
    smin, smax = rules.step_bounds(qmax, expo, lo, hi, signed)
    step = torch.tensor([0.01, 0.5, 1e-6, 0.02])
    frozen = rules.frozen_bits(step, qmax, expo, lo, hi, signed)
    for i in range(4):
        sg = bool(signed[i])
        assert float(smin[i]) == pytest.approx(
            float(step_for_bits(float(hi[i]), qmax[i], expo[i], signed=sg))
        )
        assert float(smax[i]) == pytest.approx(
            float(step_for_bits(float(lo[i]), qmax[i], expo[i], signed=sg))
        )
        b = float(bits(step[i], qmax[i], expo[i], signed=sg))
        assert float(frozen[i]) == min(max(round(b), float(lo[i])), float(hi[i]))


@pytest.mark.parametrize("total,periods", [(0, 3), (10, 3), (7, 7), (5, 8), (100, 1)])
def test_period_quotas(total: int, periods: int) -> None:
    q = rules.period_quotas(total, periods)
    assert len(q) == periods and sum(q) == total and min(q) >= 0
    assert all(x == total // periods for x in q[:-1])
