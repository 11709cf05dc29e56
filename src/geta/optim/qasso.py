"""`QASSO`: the quantization-aware structured sparse optimizer (method.md §3), state + dispatch.

The math lives in pure modules (`rules`, `saliency`, `direction`); the row bookkeeping in
`layout`, `forget` and `quantizers`. This class keeps the run's state and calls them in order:

    step s:  stage = schedule.stage_at(s)
      1) check the gradients (NaN/inf -> NonFiniteError), clip them element-wise if asked
      2) joint stage, first step of a pruning period: score the alive units, select the quota
      3) base direction ∇ of every parameter; p <- p - lr ∇ (quantizer scalars at lr_quant,
         then qmax kept positive and the exponent inside rules.EXPONENT_RANGE)
      4) joint stage: forget the selected rows, setting the steps of the layers they touch
      5) projection/joint: project every quantizer's step onto [b_lo, b_hi(s)];
         cool-down: freeze the rounded bits once, then reset every step to them
      6) last step of a pruning period: commit the selection (rows set exactly to zero)
      7) committed rows are set to exactly zero again (every stage, every step)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from geta.errors import ConfigError
from geta.optim import rules
from geta.optim.direction import Variant, adam_direction, sgd_direction
from geta.optim.forget import ForgetStep
from geta.optim.guard import check_finite, check_loss
from geta.optim.layout import RedundantRows, UnitLayout
from geta.optim.quantizers import QuantizerTable
from geta.optim.saliency import saliency_scores, select_units
from geta.optim.schedule import Schedule, Stage
from geta.plan import Plan

__all__ = ["QASSO"]

_STATE_KEY = "geta"  # where state_dict() keeps the run state next to torch's "state"


def _validate(
    lr: float,
    lr_quant: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    grad_clip: float | None,
) -> None:
    checks = [
        ("lr", lr, lr >= 0, ">= 0"),
        ("lr_quant", lr_quant, lr_quant >= 0, ">= 0"),
        ("momentum", momentum, 0 <= momentum < 1, "in [0, 1)"),
        ("dampening", dampening, 0 <= dampening <= 1, "in [0, 1]"),
        ("betas", betas, all(0 <= b < 1 for b in betas) and len(betas) == 2, "two values in [0, 1)"),
        ("eps", eps, eps > 0, "> 0"),
        ("weight_decay", weight_decay, weight_decay >= 0, ">= 0"),
        ("grad_clip", grad_clip, grad_clip is None or grad_clip > 0, "None or > 0"),
    ]
    for name, value, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"QASSO({name}={value!r}) must be {allowed}")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ConfigError("QASSO(nesterov=True) needs momentum > 0 and dampening = 0")


def _capacity(sizes: list[int], divisible: int) -> int:
    """How many units may go at most: each group keeps `divisible` units (or all it has)."""
    return sum(n - (divisible if n >= divisible else n) for n in sizes)


class QASSO(torch.optim.Optimizer):
    """Joint structured pruning and bit-width learning as a ``torch.optim.Optimizer``.

    ``plan`` comes from `geta.prepare`; ``schedule`` gives the four stages in steps. Weights
    move with ``lr`` (param group 0, LR schedulers work), quantizer scalars with ``lr_quant``
    (param group 1, no weight decay). ``variant``: ``"sgd"`` (``momentum``, ``dampening``,
    ``nesterov``), ``"adam"`` or ``"adamw"`` (``betas``, ``eps``). ``grad_clip`` clamps every
    gradient element-wise to [-grad_clip, grad_clip] in place before the step.

    At the end of the joint stage round(target_sparsity x prunable units) units are exactly zero
    (each group keeps at least ``Config.group_divisible`` units); every quantizer's bit width
    lies in [b_lo, b_hi(step)] from the projection stage on and is an integer of the final range
    from the cool-down on. A NaN/inf gradient or loss raises `geta.optim.NonFiniteError`.

    >>> import torch, geta
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> plan = geta.prepare(model, (torch.randn(2, 4),), geta.Config(target_sparsity=0.5, weight_bits=(4, 8)))
    >>> schedule = geta.Schedule(projection=2, joint=4, cooldown=2, pruning_periods=2)
    >>> opt = geta.QASSO(plan, lr=0.1, momentum=0.9, schedule=schedule)
    >>> for _ in range(schedule.total):
    ...     loss = model(torch.randn(16, 4)).pow(2).mean()
    ...     opt.zero_grad(); loss.backward(); opt.step()
    >>> plan.group_sparsity(), opt.stage.value
    (0.5, 'cooldown')
    >>> all(b == round(b) and 4 <= b <= 8 for b in opt.frozen_bits.tolist())  # integer bits in range
    True
    """

    def __init__(
        self,
        plan: Plan,
        lr: float,
        *,
        schedule: Schedule,
        lr_quant: float = 1e-4,
        variant: Variant | str = Variant.SGD,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        grad_clip: float | None = None,
    ) -> None:
        _validate(lr, lr_quant, momentum, dampening, nesterov, betas, eps, weight_decay, grad_clip)
        try:
            self.variant = Variant(variant)
        except ValueError:
            raise ConfigError(
                f"QASSO(variant={variant!r}) must be one of {[v.value for v in Variant]}"
            ) from None
        if not isinstance(schedule, Schedule):
            raise ConfigError(f"QASSO(schedule={schedule!r}) must be a geta.Schedule")
        self.plan, self.schedule, self.grad_clip = plan, schedule, grad_clip
        self.table = QuantizerTable(plan)
        self._domains = self.table.domains()
        self._names = {id(p): n for n, p in plan.model.named_parameters()}  # display only
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                        betas=tuple(betas), eps=eps, weight_decay=weight_decay)  # fmt: skip
        super().__init__(self._param_groups(lr_quant), defaults)
        self.layout = UnitLayout(plan.prunable_groups, self.table.index_of_tensor)
        self._init_quota(plan)
        n = self.layout.num_units
        self._step_count = 0  # steps taken (the number of the next step)
        self._period = -1  # last pruning period whose selection was made
        self._selected = torch.zeros(n, dtype=torch.bool)  # the redundant set R, (N,)
        self._committed = torch.zeros(n, dtype=torch.bool)  # pruned for good, (N,)
        self._frozen: Tensor | None = None  # cool-down bits, (n_quantizers,)
        self._rows: RedundantRows | None = None
        self._zeros: list[tuple[Tensor, int, Tensor]] = []

    def _param_groups(self, lr_quant: float) -> list[dict[str, Any]]:
        """Group 0: every model parameter but the quantizers' (at ``lr``); group 1: quantizers."""
        quant = self.table.parameters()
        quant_ids = {id(p) for p in quant}
        weights = [p for p in dict.fromkeys(self.plan.model.parameters()) if id(p) not in quant_ids]
        groups: list[dict[str, Any]] = [{"params": weights, "role": "weight"}]
        if quant:
            groups.append({"params": quant, "lr": lr_quant, "weight_decay": 0.0, "role": "quant"})
        return groups

    def _init_quota(self, plan: Plan) -> None:
        sizes = [g.size for g in plan.prunable_groups]
        self.divisible = plan.config.group_divisible
        target = math.floor(plan.config.target_sparsity * sum(sizes) + 0.5)  # K
        capacity = _capacity(sizes, self.divisible)
        if target > capacity:
            warnings.warn(
                f"target_sparsity={plan.config.target_sparsity} asks for {target} of {sum(sizes)} "
                f"units, but every group keeps {self.divisible} (or all it has): pruning {capacity}",
                stacklevel=3,
            )
            target = capacity
        if target > 0 and self.schedule.joint == 0:
            raise ConfigError(
                f"target_sparsity={plan.config.target_sparsity} prunes {target} units but "
                "Schedule.joint=0: give the joint stage at least pruning_periods steps"
            )
        self.target_units = target
        quotas = rules.period_quotas(target, self.schedule.pruning_periods)
        self._cum_quota = [sum(quotas[: k + 1]) for k in range(len(quotas))]

    # -- read-only views -----------------------------------------------------------------------

    @property
    def step_count(self) -> int:
        """Steps taken so far (the 0-based number of the next step)."""
        return self._step_count

    @property
    def stage(self) -> Stage:
        """The stage of the next step."""
        return self.schedule.stage_at(self._step_count)

    @property
    def committed(self) -> Tensor:
        """Bool (N,) over the global units of `plan.prunable_groups`: pruned for good."""
        return self._committed.clone()

    @property
    def selected(self) -> Tensor:
        """Bool (N,): the redundant set R of the current pruning period (being forgotten)."""
        return self._selected.clone()

    @property
    def frozen_bits(self) -> Tensor | None:
        """The integer bits frozen at the cool-down (one per quantizer), or None before it."""
        return None if self._frozen is None else self._frozen.clone()

    # -- the step --------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Take one QASSO step (see the module docstring for its seven parts)."""
        loss = None
        s = self._step_count
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            check_loss(loss, s)
        stage = self.schedule.stage_at(s)
        live = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        check_finite([p.grad for p in live], s, lambda i: self._names.get(id(live[i]), "?"))
        if self.grad_clip is not None:
            for p in live:
                p.grad.clamp_(-self.grad_clip, self.grad_clip)
        forget = self._joint_begin(s) if stage is Stage.JOINT else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                direction = self._direction(p, group)
                if forget is not None and forget.touches(p):
                    forget.record(p, direction)
                p.add_(direction, alpha=-group["lr"])
                if id(p) in self._domains:
                    p.clamp_(*self._domains[id(p)])  # qmax > 0, exponent in range
        if forget is not None:
            start, end = self.schedule.pruning_period_bounds(self._period)
            forget.apply(lr=self.param_groups[0]["lr"], period_len=end - start, t=s - start)
        self._bits(stage, s)
        if stage is Stage.JOINT:
            self._joint_end(s)
        for tensor, dim, pos in self._zeros:
            tensor.index_fill_(dim, pos, 0.0)
        self._step_count = s + 1
        return loss

    def _direction(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        state = self.state[p]
        if self.variant is Variant.SGD:
            return sgd_direction(
                p,
                p.grad,
                state,
                momentum=group["momentum"],
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                weight_decay=group["weight_decay"],
            )
        return adam_direction(
            p,
            p.grad,
            state,
            betas=group["betas"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            decoupled=self.variant is Variant.ADAMW,
        )

    def _bits(self, stage: Stage, s: int) -> None:
        if not len(self.table) or stage is Stage.WARMUP:
            return
        if stage is Stage.COOLDOWN:
            if self._frozen is None:
                self._frozen = self.table.freeze()
            self.table.reset_to_(self._frozen)
        else:
            self.table.project_(self.table.upper(self.schedule, s))

    # -- the joint stage --------------------------------------------------------------------------

    def _joint_begin(self, s: int) -> ForgetStep | None:
        period = self.schedule.pruning_period_at(s)
        assert period is not None
        start, _ = self.schedule.pruning_period_bounds(period)
        if s == start and self._period != period:
            self._select(period)
        if self._rows is None or self._rows.units.numel() == 0:
            return None
        return ForgetStep(self._rows, self.table, self.table.upper(self.schedule, s))

    def _select(self, period: int) -> None:
        """Score the alive units and select this period's quota (method.md §3.3)."""
        self._period = period
        quota = self._cum_quota[period] - int(self._committed.sum())
        alive = ~self._committed
        selected = torch.zeros_like(alive)
        if quota > 0 and bool(alive.any()):
            x_sq, xg, g_sq = self.layout.unit_stats(lambda t: t.grad)
            scores = torch.full((self.layout.num_units,), math.inf, dtype=torch.float64)
            scores[alive] = saliency_scores(x_sq[alive], xg[alive], g_sq[alive], self.layout.length[alive])
            selected = select_units(scores, self.layout.unit_group, alive, quota, divisible=self.divisible)
        self._selected = self._broadcast(selected)
        self._rows = self.layout.redundant(self._selected, len(self.table))

    def _broadcast(self, mask: Tensor) -> Tensor:
        """Under torch.distributed every rank adopts rank 0's selection."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return mask
        device = self.param_groups[0]["params"][0].device
        if dist.get_backend() == "nccl" and device.type != "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        buf = mask.to(device=device, dtype=torch.uint8)
        dist.broadcast(buf, src=0)
        return buf.to(device="cpu", dtype=torch.bool)

    def _joint_end(self, s: int) -> None:
        _, end = self.schedule.pruning_period_bounds(self._period)
        if s == end - 1 and bool(self._selected.any()):
            self._committed |= self._selected
            for tensor, dim, pos in self.layout.zero_positions(self._selected):
                tensor.index_fill_(dim, pos, 0.0)
            self._selected = torch.zeros_like(self._selected)
            self._rows = None
            self._zeros = self.layout.zero_positions(self._committed)

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """torch's state (moments, param groups) plus the run state under the key ``"geta"``."""
        sd = super().state_dict()
        sd[_STATE_KEY] = {
            "step": self._step_count,
            "stage": self.stage.value,
            "period": self._period,
            "selected": self._selected.clone(),
            "committed": self._committed.clone(),
            "frozen": None if self._frozen is None else self._frozen.clone(),
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a `state_dict`; the model's own state (weights, quantizers) is the user's."""
        state_dict = dict(state_dict)
        run = state_dict.pop(_STATE_KEY, None)
        if run is None:
            raise ConfigError("QASSO.load_state_dict: the state has no 'geta' entry (not from QASSO?)")
        n = self.layout.num_units
        if run["committed"].shape != (n,):
            raise ConfigError(
                f"QASSO.load_state_dict: the state covers {run['committed'].shape[0]} units, "
                f"this plan has {n}; load it into an optimizer built for the same plan"
            )
        super().load_state_dict(state_dict)
        self._step_count = int(run["step"])
        self._period = int(run["period"])
        self._selected = run["selected"].to(dtype=torch.bool, device="cpu").clone()
        self._committed = run["committed"].to(dtype=torch.bool, device="cpu").clone()
        frozen = run["frozen"]
        self._frozen = None if frozen is None else frozen.to(self.table.b_lo).clone()
        has_rows = bool(self._selected.any())
        self._rows = self.layout.redundant(self._selected, len(self.table)) if has_rows else None
        self._zeros = self.layout.zero_positions(self._committed)
