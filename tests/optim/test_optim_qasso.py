"""QASSO end to end on tiny hand-built plans: the acceptance invariants of issue 3."""

from __future__ import annotations

import io
import math

import pytest
import torch
from optim_models import batches, conv_plan, mlp_plan, train_step

from geta import Config
from geta.errors import ConfigError, GetaError
from geta.optim import QASSO, NonFiniteError, Schedule, Stage, rules
from geta.plan import Plan, QuantTarget

SCHEDULE = Schedule(warmup=2, projection=6, joint=8, cooldown=4, projection_periods=3, pruning_periods=2)
CONFIG = Config(target_sparsity=0.5, weight_bits=(4, 8), act_bits=(3, 6), init_bits=12)
BUILD = {"mlp": mlp_plan, "conv": conv_plan}


def make(kind: str = "mlp", config: Config = CONFIG, *, seed: int = 0, inputs: bool = True) -> Plan:
    return BUILD[kind](config, weights=True, inputs=inputs, seed=seed)


def unit_rows(plan: Plan, opt: QASSO, units: torch.Tensor) -> list[torch.Tensor]:
    """The parameter rows of each of the global ``units`` (a list of 1-D tensors)."""
    out = []
    for u in units.tolist():
        parts = [ref.tensor.detach()[...] for ref in opt.layout.slices]  # keep identity order
        row = []
        for ref, t in zip(opt.layout.slices, parts):
            if ref.offset <= u < ref.offset + ref.size:
                pos = ref.index[u - ref.offset]
                row.append(t.movedim(ref.dim, 0)[pos].reshape(-1))
        out.append(torch.cat(row))
    return out


def bit_range(plan: Plan, target: QuantTarget) -> tuple[int, int]:
    cfg = plan.config
    return cfg.act_bits if target is QuantTarget.INPUT and cfg.act_bits else cfg.weight_bits


@pytest.mark.parametrize(
    "kind,variant", [("mlp", "sgd"), ("conv", "sgd"), ("mlp", "adam"), ("conv", "adamw")]
)
def test_acceptance_invariants(kind: str, variant: str) -> None:
    plan = make(kind)
    opt = QASSO(plan, lr=0.05, lr_quant=1e-3, variant=variant, momentum=0.9 if variant == "sgd" else 0.0,
                weight_decay=1e-4, schedule=SCHEDULE, grad_clip=1.0)  # fmt: skip
    n_units = plan.num_prunable_units
    target = math.floor(0.5 * n_units + 0.5)
    committed_before = torch.zeros(n_units, dtype=torch.bool)
    data = batches(plan, SCHEDULE.total + 3)  # 3 steps past the end: cool-down goes on
    for s, (x, y) in enumerate(data):
        train_step(plan, opt, x, y)
        stage = SCHEDULE.stage_at(s)
        for b in plan.bindings:
            lo, hi_final = bit_range(plan, b.target)
            bw = b.quantizer.bit_width
            if stage is not Stage.WARMUP:
                hi = SCHEDULE.bit_upper_at(s, init_bits=plan.config.init_bits, final_bits=hi_final)
                assert lo - 1e-4 <= bw <= hi + 1e-4, (s, b.name, bw)
            if stage is Stage.COOLDOWN:
                assert abs(bw - round(bw)) < 1e-4 and lo <= round(bw) <= hi_final, (s, b.name, bw)
        committed = opt.committed
        assert bool((committed | ~committed_before).all())  # commitments are never undone
        for row in unit_rows(plan, opt, committed.nonzero().squeeze(1)):
            assert bool((row == 0).all())  # committed rows stay exactly zero after every step
        committed_before = committed
    assert int(opt.committed.sum()) == target
    assert plan.group_sparsity() == pytest.approx(target / n_units)
    for g in plan.prunable_groups:
        assert int((~g.is_zero()).sum()) >= 1  # no layer loses all its channels
    frozen = opt.frozen_bits
    assert frozen is not None and torch.equal(frozen, frozen.round())
    assert opt.stage is Stage.COOLDOWN and opt.step_count == SCHEDULE.total + 3


def owned_masks(opt: QASSO) -> dict[int, dict[int, torch.Tensor]]:
    """unit -> {id(param): bool mask}: a selected unit's elements not held by an earlier slice."""
    selected, claimed = opt.selected, {}
    out: dict[int, dict[int, torch.Tensor]] = {}
    for ref in opt.layout.slices:  # layout order: the first selected slice holding an element owns it
        taken = claimed.setdefault(id(ref.tensor), torch.zeros_like(ref.tensor, dtype=torch.bool))
        for j in selected[ref.offset : ref.offset + ref.size].nonzero().squeeze(1).tolist():
            mine = torch.zeros_like(taken)
            mine.index_fill_(ref.dim, ref.index[j], True)
            out.setdefault(ref.offset + j, {})[id(ref.tensor)] = mine & ~taken
        rows = selected[ref.offset : ref.offset + ref.size].nonzero().squeeze(1)
        taken.index_fill_(ref.dim, ref.index[rows].reshape(-1), True)
    return out


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_joint_step_is_descent_on_redundant_rows(kind: str) -> None:
    """<∇, Δx> <= -κ α ‖∇‖² < 0 for every redundant unit, over the elements it owns."""
    plan = make(kind, inputs=False)
    schedule = Schedule(warmup=1, projection=2, joint=12, cooldown=1, projection_periods=2, pruning_periods=2)
    # the paper's rules (the descent bound is theirs); plain SGD: ∇ = the gradient
    opt = QASSO(plan, lr=0.05, lr_quant=0.0, schedule=schedule, forget="descent", bits="descent")
    params = list(plan.model.parameters())
    checked = 0
    for s, (x, y) in enumerate(batches(plan, schedule.total)):
        before = {id(p): p.detach().clone() for p in params}
        opt.zero_grad()
        torch.nn.functional.cross_entropy(plan.model(x), y).backward()
        grads = {id(p): torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params}
        opt.step()
        period = schedule.pruning_period_at(s)
        if period is None or s == schedule.pruning_period_bounds(period)[1] - 1:
            continue  # not joint, or the commit step (rows set to zero on purpose)
        for u, masks in owned_masks(opt).items():
            inner, grad_sq = 0.0, 0.0  # over the elements unit u owns
            for p in params:
                if id(p) in masks:
                    g, mask = grads[id(p)].double(), masks[id(p)]
                    inner += float((g * (p.detach() - before[id(p)]).double())[mask].sum())
                    grad_sq += float(g[mask].pow(2).sum())
            # <∇, Δx> <= -min(1-ζη, η(1-ζ)) α ‖∇‖² (float32 parameters: 1e-3 relative slack)
            assert inner <= -rules.descent_margin() * 0.05 * grad_sq * (1 - 1e-3), (s, u)
            checked += grad_sq > 0
    assert checked >= 10


@pytest.mark.parametrize("variant", ["sgd", "adam", "adamw"])
def test_warmup_equals_torch_optim(variant: str) -> None:
    dense = Config(target_sparsity=0.0, weight_bits=(4, 8), act_bits=(3, 6), init_bits=12)
    # Adam's normalised steps make fake-quant grids chaotic under rounding: compare it in float
    quantized = variant == "sgd"
    plan_a = mlp_plan(dense, weights=quantized, inputs=quantized, seed=3)
    plan_b = mlp_plan(dense, weights=quantized, inputs=quantized, seed=3)
    kw = dict(lr=0.1, weight_decay=0.01)
    opt_a = QASSO(plan_a, lr_quant=0.02, variant=variant, schedule=Schedule(warmup=50),
                  **(dict(momentum=0.9, nesterov=True) if variant == "sgd" else {}), **kw)  # fmt: skip
    quant_ids = {id(p) for b in plan_b.bindings for p in b.quantizer.parameters()}
    weights = [p for p in plan_b.model.parameters() if id(p) not in quant_ids]
    quant = [p for p in plan_b.model.parameters() if id(p) in quant_ids]
    groups = [{"params": weights}, {"params": quant, "lr": 0.02, "weight_decay": 0.0}]
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[variant]
    opt_b = cls(groups, **(dict(momentum=0.9, nesterov=True) if variant == "sgd" else {}), **kw)
    sched_a = torch.optim.lr_scheduler.StepLR(opt_a, step_size=2, gamma=0.5)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, step_size=2, gamma=0.5)
    for x, y in batches(plan_a, 6):
        train_step(plan_a, opt_a, x, y), train_step(plan_b, opt_b, x, y)
        sched_a.step(), sched_b.step()
    assert opt_a.param_groups[0]["lr"] == pytest.approx(0.1 / 8)
    for pa, pb in zip(plan_a.model.parameters(), plan_b.model.parameters()):
        if variant == "sgd":
            assert torch.equal(pa, pb)  # the same arithmetic as torch.optim.SGD, bit for bit
        else:
            torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7)


def test_group_divisible_and_minimum_width() -> None:
    plan = make("mlp", Config(target_sparsity=0.5, weight_bits=(4, 8), group_divisible=4), inputs=False)
    with pytest.warns(UserWarning, match="pruning 6"):  # 8 -> 4 and 6 -> 4 leave 6 of the 7 asked
        opt = QASSO(plan, lr=0.05, schedule=SCHEDULE)
    for x, y in batches(plan, SCHEDULE.total):
        train_step(plan, opt, x, y)
    alive = [int((~g.is_zero()).sum()) for g in plan.prunable_groups]
    assert all(a % 4 == 0 and a >= 4 for a in alive)  # 8 -> 4, 6 -> 4
    assert abs(sum(g.size for g in plan.prunable_groups) - sum(alive) - 7) < 4  # K = 7 within a block

    plan = make("mlp", Config(target_sparsity=0.95, weight_bits=(4, 8)), inputs=False)
    with pytest.warns(UserWarning, match="floors .* allow 12"):
        opt = QASSO(plan, lr=0.05, schedule=SCHEDULE)
    for x, y in batches(plan, SCHEDULE.total):
        train_step(plan, opt, x, y)
    assert [int((~g.is_zero()).sum()) for g in plan.prunable_groups] == [1, 1]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_gradient_raises_naming_step_and_parameter(bad: float) -> None:
    plan = make("mlp")
    opt = QASSO(plan, lr=0.05, schedule=SCHEDULE)
    data = batches(plan, 4)
    for x, y in data[:3]:
        train_step(plan, opt, x, y)
    x, y = data[3]
    opt.zero_grad()
    torch.nn.functional.cross_entropy(plan.model(x), y).backward()
    w = plan.model.fc2.parametrizations.weight.original
    w.grad[1, 2] = bad
    before = [p.detach().clone() for p in plan.model.parameters()]
    with pytest.raises(NonFiniteError, match=r"step 3.*fc2\.parametrizations\.weight\.original") as err:
        opt.step()
    assert isinstance(err.value, GetaError)
    assert all(torch.equal(a, p) for a, p in zip(before, plan.model.parameters()))  # nothing moved
    with pytest.raises(NonFiniteError, match="loss"):
        opt.step(lambda: torch.tensor(math.nan))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lr=-1.0), "lr"),
        (dict(variant="rmsprop"), "variant"),
        (dict(nesterov=True), "nesterov"),
        (dict(momentum=1.0), "momentum"),
        (dict(grad_clip=0.0), "grad_clip"),
        (dict(schedule=Schedule(warmup=3, projection=3)), "joint"),
        (dict(schedule="fast"), "schedule"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    args = dict(lr=0.1, schedule=SCHEDULE) | kwargs
    with pytest.raises(ConfigError, match=match):
        QASSO(make("mlp"), **args)


def test_grad_clip_bounds_the_step() -> None:
    plan = make("mlp", Config(target_sparsity=0.0), inputs=False)
    opt = QASSO(plan, lr=0.1, lr_quant=0.0, schedule=Schedule(warmup=5), grad_clip=0.01)
    before = [p.detach().clone() for p in plan.model.parameters()]
    x, y = batches(plan, 1)[0]
    opt.zero_grad()
    (1e4 * torch.nn.functional.cross_entropy(plan.model(x), y)).backward()
    opt.step()
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(plan.model.parameters(), before))
    assert moved == pytest.approx(0.1 * 0.01, rel=1e-4)  # lr x clip, up to float32 rounding
    assert all(float(p.grad.abs().max()) <= 0.01 for p in plan.model.parameters())  # clipped in place


def _run(kind: str, variant: str, steps: range, state: bytes | None, *, seed: int) -> tuple[Plan, QASSO]:
    plan = make(kind, seed=seed)
    opt = QASSO(plan, lr=0.05, lr_quant=1e-3, variant=variant, momentum=0.9, schedule=SCHEDULE, grad_clip=1.0)
    if state is not None:
        saved = torch.load(io.BytesIO(state), weights_only=True)
        plan.model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
    data = batches(plan, SCHEDULE.total + 2)
    for s in steps:
        train_step(plan, opt, *data[s])
    return plan, opt


@pytest.mark.parametrize("kind,variant", [("mlp", "sgd"), ("conv", "adam")])
def test_resume_from_checkpoint_equals_uninterrupted(kind: str, variant: str) -> None:
    total = SCHEDULE.total + 2
    ref_plan, ref_opt = _run(kind, variant, range(total), None, seed=0)
    # mid projection, a pruning period's first step, mid period, last step of a period, cool-down
    for cut in (5, 8, 10, 11, 17):
        plan, opt = _run(kind, variant, range(cut), None, seed=0)
        buf = io.BytesIO()
        torch.save({"model": plan.model.state_dict(), "opt": opt.state_dict()}, buf)
        plan, opt = _run(kind, variant, range(cut, total), buf.getvalue(), seed=7)  # other init: all restored
        for (name, a), b in zip(ref_plan.model.state_dict().items(), plan.model.state_dict().values()):
            assert torch.equal(a, b), (cut, name)  # bit for bit
        assert torch.equal(ref_opt.committed, opt.committed)
        assert torch.equal(ref_opt.frozen_bits, opt.frozen_bits)
        assert opt.step_count == ref_opt.step_count


def test_load_state_dict_rejects_foreign_state() -> None:
    opt = QASSO(make("mlp"), lr=0.1, schedule=SCHEDULE)
    other = QASSO(make("conv"), lr=0.1, schedule=SCHEDULE)
    with pytest.raises(ConfigError, match="units"):
        opt.load_state_dict(other.state_dict())
    sd = opt.state_dict()
    del sd["geta"]
    with pytest.raises(ConfigError, match="geta"):
        opt.load_state_dict(sd)


def test_quantizer_scalars_stay_in_their_domain() -> None:
    """A gradient that drives the exponent t below 0 (0**t = inf) or qmax below 0 is stopped."""
    plan = make("mlp", Config(target_sparsity=0.0, weight_bits=(4, 8)), inputs=False)
    opt = QASSO(plan, lr=0.0, lr_quant=10.0, schedule=Schedule(warmup=3))
    q = plan.bindings[0].quantizer
    for _ in range(3):
        opt.zero_grad()
        for p in q.parameters():
            p.grad = torch.ones_like(p)  # every step pushes step, qmax and t down by 10
        opt.step()
    assert float(q.exponent.detach()) == rules.EXPONENT_RANGE[0] and float(q.qmax.detach()) > 0
    x, _ = batches(plan, 1)[0]
    assert bool(torch.isfinite(plan.model(x)).all())


def test_plan_without_quantizers_prunes_like_any_other() -> None:
    """Defect 5: an empty quantizer list is a valid plan (pruning only)."""
    plan = mlp_plan(Config(target_sparsity=0.5, weight_bits=(4, 8)), weights=False, inputs=False)
    assert not plan.bindings
    opt = QASSO(plan, lr=0.05, momentum=0.9, schedule=SCHEDULE)
    for x, y in batches(plan, SCHEDULE.total + 1):
        train_step(plan, opt, x, y)
    assert int(opt.committed.sum()) == 7 and plan.group_sparsity() == pytest.approx(0.5)
    assert opt.frozen_bits is None  # nothing to freeze


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_released_work_buffers_change_nothing(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large forgetting buffers are freed after each step instead of kept: same run, bit for bit."""
    from geta.optim import units

    steps = range(SCHEDULE.warmup + SCHEDULE.projection + SCHEDULE.joint - 1)  # ends in the joint stage
    kept_plan, kept_opt = _run(kind, "adam", steps, None, seed=0)
    assert any(b.scratch for b in kept_opt._rows.flat)  # small: kept between steps
    monkeypatch.setattr(units, "SCRATCH_KEPT", 0)  # every buffer counts as large
    plan, opt = _run(kind, "adam", steps, None, seed=0)
    assert not any(b.scratch or b._views for b in opt._rows.flat)
    for (name, a), b in zip(kept_plan.model.state_dict().items(), plan.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(kept_opt.committed, opt.committed)
