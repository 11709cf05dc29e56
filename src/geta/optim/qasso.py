"""`QASSO`: the quantization-aware structured sparse optimizer (docs/method.md §3), state + dispatch.

The math lives in pure modules (`rules`, `saliency`, `direction`); the row bookkeeping in
`units`, `forget` and `quantizer_table`; the update of part 3 in `update`; the checkpoint of the
run state in `resume` (`Resumable`, the base class). This class keeps the run's state and calls
them in order:

    step s:  stage = schedule.stage_at(s)
      1) check the gradients (NaN/inf -> NonFiniteError), clip them element-wise if asked
      2) joint stage, first step of a pruning period: score the alive units, select the quota
         (uniform: each group's own quota; global: the lowest scores above the groups' floors)
      3) base direction ∇ of every parameter; p <- p - lr ∇ (quantizer scalars at lr_quant,
         then qmax kept positive and the exponent inside rules.EXPONENT_RANGE; a step that
         part 5 overwrites in this step without reading it is not moved)
      4) joint stage: forget the selected rows at the forget rule's rate γ (a bit rule with
         ``forget_bounds``, the paper's ``"descent"``: also set the steps of the layers they
         touch, the paper's step rule)
      5) the bit rule observes the step, then bounds the steps in the projection and joint
         stages (``"budget"``: fold this step's measured sensitivity; at each projection period
         start (re)allocate the bits under the BOPs budget (final at the joint start) and pin
         every step to its bits, descending from the initial bits over the projection periods;
         ``"descent"``: project every quantizer's step onto [b_lo, b_hi(s)]);
         cool-down: the bit rule settles, the rounded bits are frozen once, then every step is
         reset to them
      6) last step of a pruning period: commit the selection (rows set exactly to zero)
      7) committed rows are set to exactly zero again (every stage, every step)

The forget and bit rules are strategies looked up by name (`geta.optim.strategies`); this
class calls them through their protocols and never asks which rule runs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from geta.config import Selection
from geta.errors import ConfigError
from geta.optim import rules
from geta.optim.arguments import choice as _choice
from geta.optim.arguments import validate as _validate
from geta.optim.direction import Variant
from geta.optim.finite import check_finite, check_loss
from geta.optim.forget import ForgetStep
from geta.optim.quantizer_table import QuantizerTable
from geta.optim.quota import cumulative_quotas, group_floors, uniform_quotas
from geta.optim.resume import Resumable
from geta.optim.saliency import saliency_scores, select_per_group, select_units
from geta.optim.schedule import Schedule, Stage
from geta.optim.sharding import ShardedLayout, ShardedQuantizerTable, local_data, sharding_of
from geta.optim.strategies import BitContext, BitRule, Forget, bit_rule, forget_rule
from geta.optim.units import RedundantRows, UnitLayout
from geta.optim.update import DomainClamp, apply_directions
from geta.optim.zero_fill import CommittedZeros
from geta.plan import Plan

__all__ = ["QASSO"]


class QASSO(Resumable):
    """Joint structured pruning and bit-width learning as a ``torch.optim.Optimizer``.

    ``plan`` comes from `geta.prepare`; ``schedule`` gives the four stages in steps. Weights
    move with ``lr`` (param group 0, LR schedulers work), quantizer scalars with ``lr_quant``
    (param group 1, no weight decay). ``variant``: ``"sgd"`` (``momentum``, ``dampening``,
    ``nesterov``), ``"adam"`` or ``"adamw"`` (``betas``, ``eps``). ``grad_clip`` clamps every
    gradient element-wise to [-grad_clip, grad_clip] in place before the step.

    ``forget`` (a registered forget rule's name or a `Forget` member): how fast the selected
    rows shrink during a pruning period — ``"linear"`` (default) γ = 1/(T - t), ``"descent"``
    the paper's descent-safe rate. ``bits`` (a registered bit rule's name or a `BitRule`
    member): ``"budget"`` (default) allocates every quantizer's bits by measured sensitivity
    under the BOPs budget (``Config.target_bops``, or the middle of the bit ranges), ``"descent"``
    learns steps by gradient with the paper's step rule. Both defaults come from the
    compression benchmark (docs/benchmarks.md); the paper's rules are kept for comparison.
    More rules register by name (`geta.optim.strategies`, docs/contributing.md).

    At the end of the joint stage round(target_sparsity x prunable units) units are exactly zero
    (each group keeps at least its floor: ``Config.min_keep_fraction``, ``min_keep_units``,
    ``group_divisible``); every quantizer's bit width lies in [b_lo, b_hi(step)] from the
    projection stage on and is an integer of the final range from the cool-down on. A NaN/inf
    gradient or loss raises `geta.optim.NonFiniteError`.

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
        forget: Forget | str = Forget.LINEAR,
        bits: BitRule | str = BitRule.BUDGET,
    ) -> None:
        _validate(lr, lr_quant, momentum, dampening, nesterov, betas, eps, weight_decay, grad_clip)
        self.variant: Variant = _choice(Variant, variant, "variant")
        self.forget_rule = forget_rule(forget)  # the strategy that gives γ
        bit_factory = bit_rule(bits)
        self.forget: str = forget.value if isinstance(forget, Forget) else forget  # the rules' names
        self.bit_rule: str = bits.value if isinstance(bits, BitRule) else bits
        if not isinstance(schedule, Schedule):
            raise ConfigError(f"QASSO(schedule={schedule!r}) must be a geta.Schedule")
        self.plan, self.schedule, self.grad_clip = plan, schedule, grad_clip
        self.sharding = sharding_of(plan)  # FSDP2 (DTensor parameters, `geta.shard`) or None
        self.table = (
            QuantizerTable(plan) if self.sharding is None else ShardedQuantizerTable(plan, self.sharding)
        )
        self._domains = self.table.domains()
        self._clamp = DomainClamp(self._domains)  # qmax > 0, exponent in range
        self._step_ids = frozenset(id(q.step) for q in self.table.quantizers)
        self._names = {id(p): n for n, p in plan.model.named_parameters()}  # display only
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                        betas=tuple(betas), eps=eps, weight_decay=weight_decay)  # fmt: skip
        super().__init__(self._param_groups(lr_quant), defaults)
        if self.sharding is None:
            self.layout = UnitLayout(plan.prunable_groups, self.table.index_of_tensor)
        else:
            self.layout = ShardedLayout(plan.prunable_groups, self.table.index_of_tensor, self.sharding)
        self._init_quota(plan)
        n = self.layout.num_units
        self._step_count = 0  # steps taken (the number of the next step)
        self._period = -1  # last pruning period whose selection was made
        self._selected = torch.zeros(n, dtype=torch.bool)  # the redundant set R, (N,)
        self._committed = torch.zeros(n, dtype=torch.bool)  # pruned for good, (N,)
        self._frozen: Tensor | None = None  # cool-down bits, (n_quantizers,)
        self._rows: RedundantRows | None = None
        self._zeros = CommittedZeros([])  # the committed units, zeroed after every step
        self.bits = self._bit_strategy(bit_factory)  # the bit rule's strategy and state

    def _bit_strategy(self, factory: Any) -> Any:
        """Build the bit rule; under the joint allocation it also gets what choosing widths needs."""
        plan, schedule, joint = self.plan, self.schedule, self.plan.config.chooses_widths
        context = BitContext(
            plan, self.table, self.layout, self._group_quota, self._broadcast, schedule=schedule,
            # no joint stage: nothing can be pruned, every group keeps all its units
            floors=(self.floors if schedule.joint > 0 else self.layout_sizes) if joint else None,
            kinds=torch.tensor(plan.group_kinds()) if joint and plan.config.uniform_layers else None,
            min_removed=self.target_units if joint else 0,
        )  # fmt: skip
        strategy = factory(context)
        if joint and not hasattr(strategy, "group_quotas"):
            raise ConfigError(
                f"QASSO(bits={self.bit_rule!r}) does not choose widths (no group_quotas hook), but "
                f"Config(target_sparsity={plan.config.target_sparsity!r}, target_bops="
                f"{plan.config.target_bops!r}) asks the run to: set a fixed target_sparsity without "
                "target_bops, or use bits='budget'"
            )
        return strategy

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
        cfg = plan.config
        sizes = torch.tensor([g.size for g in plan.prunable_groups], dtype=torch.long)  # (G,)
        self.layout_sizes = sizes
        self.divisible = cfg.group_divisible
        self.selection = cfg.selection
        self.floors = group_floors(
            sizes, fraction=cfg.min_keep_fraction, count=cfg.min_keep_units, divisible=self.divisible
        )  # (G,) units every group keeps
        # K; under the joint allocation (target_sparsity None or a minimum) the widths are chosen
        # at the joint stage's start (`_adopt_quotas`) and K is the least the run removes
        sparsity = 0.0 if cfg.target_sparsity is None else cfg.target_sparsity
        target = math.floor(sparsity * int(sizes.sum()) + 0.5)
        capacity = int((sizes - self.floors).sum())
        if target > capacity:
            warnings.warn(
                f"target_sparsity={cfg.target_sparsity} asks for {target} of {int(sizes.sum())} "
                f"units, but the groups' floors (min_keep_fraction={cfg.min_keep_fraction}, "
                f"min_keep_units={cfg.min_keep_units}, group_divisible={self.divisible}) allow "
                f"{capacity}: pruning {capacity}",
                stacklevel=3,
            )
            target = capacity
        # each group's share; the exact quota under uniform selection, a prediction under global
        kinds = torch.tensor(plan.group_kinds()) if cfg.uniform_layers else None  # every layer alike
        quota = uniform_quotas(sizes, target, self.floors, divisible=self.divisible, kinds=kinds)
        if target > 0 and self.schedule.joint == 0:
            raise ConfigError(
                f"target_sparsity={plan.config.target_sparsity} prunes {target} units but "
                "Schedule.joint=0: give the joint stage at least pruning_periods steps"
            )
        self._set_quotas(quota, target)

    def _set_quotas(self, quota: Tensor, target: int | None = None) -> None:
        """Each group's quota (G,) and the period quotas; ``target`` is the global selection's
        K (None: the quotas' sum, as under uniform selection)."""
        self._group_quota = quota
        self._group_cum = cumulative_quotas(quota, periods=self.schedule.pruning_periods)
        if target is None or self.selection is Selection.UNIFORM:
            target = int(quota.sum())
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
        if self.sharding is not None:  # FSDP reduces the sharded gradients, not the replicated
            self.sharding.reduce_replicated_grads([p for g in self.param_groups for p in g["params"]])
        live = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        check_finite([local_data(p.grad) for p in live], s, lambda i: self._names.get(id(live[i]), "?"))
        if self.grad_clip is not None:
            for p in live:
                p.grad.clamp_(-self.grad_clip, self.grad_clip)
        forget = self._joint_begin(s) if stage is Stage.JOINT else None
        pinned, bounded, sharded = self._pinned_steps(stage), [], self.sharding is not None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None and id(p) not in pinned]
            if params:
                apply_directions(self.variant, group, params, self.state, forget, sharded=sharded)
                bounded.extend(p for p in params if id(p) in self._domains)
        self._clamp(bounded)
        if forget is not None:
            start, end = self.schedule.pruning_period_bounds(self._period)
            forget.apply(lr=self.param_groups[0]["lr"], period_len=end - start, t=s - start)
        self._bits(stage, s)
        if stage is Stage.JOINT:
            self._joint_end(s)
        self._zeros.apply()
        self._step_count = s + 1
        return loss

    def _pinned_steps(self, stage: Stage) -> frozenset[int]:
        """ids of the quantizer steps `_bits` sets this step before anything reads them: every
        step when the bit rule pins them (``"budget"`` after the warm-up), and in the cool-down
        once frozen."""
        pinned = self.bits.pins(stage)
        return self._step_ids if pinned or self._frozen is not None else frozenset()

    def _bits(self, stage: Stage, s: int) -> None:
        self.bits.observe()
        if not len(self.table) or stage is Stage.WARMUP:
            return
        if stage is Stage.COOLDOWN:
            self.bits.settle()
            if self._frozen is None:
                self._frozen = self.table.freeze()
            self.table.reset_to_(self._frozen)
        else:
            self.bits.bound(self.schedule, stage, s)

    # -- the joint stage --------------------------------------------------------------------------

    def _joint_begin(self, s: int) -> ForgetStep | None:
        period = self.schedule.pruning_period_at(s)
        assert period is not None
        start, _ = self.schedule.pruning_period_bounds(period)
        if s == start and self._period != period:
            if period == 0:
                choose = getattr(self.bits, "group_quotas", None)  # an optional hook of the protocol
                quota = None if choose is None else choose()  # the joint allocation's widths
                if quota is not None:
                    self._set_quotas(quota.to(torch.long).clone())
            self._select(period)
        if self._rows is None or self._rows.units.numel() == 0:
            return None
        return ForgetStep(
            self._rows,
            self.table,
            self.bits.forget_bounds(self.schedule, s),
            rule=self.forget_rule,
            reduce=None if self.sharding is None else self.sharding.all_reduce,
        )

    def _select(self, period: int) -> None:
        """Score the alive units and select this period's quota (docs/method.md §3.3)."""
        self._period = period
        quota = self._cum_quota[period] - int(self._committed.sum())
        alive = ~self._committed
        selected = torch.zeros_like(alive)
        unit_group = self.layout.unit_group
        uniform = self.selection is Selection.UNIFORM
        if uniform:
            done = torch.bincount(unit_group[self._committed], minlength=self.layout.num_groups)
            need = (self._group_cum[period] - done).clamp_min(0)  # (G,) this period's units
            quota = int(need.sum())
        if quota > 0 and bool(alive.any()):
            x_sq, xg, g_sq = self.layout.unit_stats(lambda t: t.grad)
            scores = torch.full((self.layout.num_units,), math.inf, dtype=torch.float64)
            scores[alive] = saliency_scores(x_sq[alive], xg[alive], g_sq[alive], self.layout.length[alive])
            if uniform:
                selected = select_per_group(scores, unit_group, alive, need)
            else:
                selected = select_units(
                    scores, unit_group, alive, quota, divisible=self.divisible, keep=self.floors
                )
        self._selected = self._broadcast(selected)
        self._rows = self.layout.redundant(self._selected, len(self.table))

    def _broadcast(self, value: Tensor) -> Tensor:
        """Under torch.distributed every rank adopts rank 0's selection / sensitivity (on CPU)."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return value
        device = self.param_groups[0]["params"][0].device
        if dist.get_backend() == "nccl" and device.type != "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        wire = torch.uint8 if value.dtype is torch.bool else value.dtype
        buf = value.to(device=device, dtype=wire)
        dist.broadcast(buf, src=0)
        return buf.to(device="cpu", dtype=value.dtype)

    def _joint_end(self, s: int) -> None:
        _, end = self.schedule.pruning_period_bounds(self._period)
        if s == end - 1 and bool(self._selected.any()):
            self._committed |= self._selected  # zeroed with the others at this step's end (`step`)
            self._selected = torch.zeros_like(self._selected)
            self._rows = None
            self._zeros = CommittedZeros(self.layout.zero_positions(self._committed))
