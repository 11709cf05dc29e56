"""What a QASSO checkpoint holds beyond torch's state, and how a run resumes from it.

`Resumable` is the checkpoint half of `geta.QASSO` (which subclasses it): ``state_dict()`` is
torch's optimizer state (moments, param groups) plus the run state under the key ``"geta"``:

- ``step``, ``stage``, ``period``: the next step's number, its stage (for display) and the
  last pruning period whose selection was made;
- ``selected``, ``committed``: bool (N,) over the global units, the redundant set R of the
  current pruning period and the units pruned for good;
- ``frozen``: the integer bits frozen at the cool-down (one per quantizer), or None before it;
- ``quota``: each prunable group's quota (G,), the joint allocation's widths once chosen;
- ``allocation``: the bit rule's own state (the key's name is kept for old checkpoints).

``load_state_dict`` restores all of it, rebuilding the rows being forgotten and the positions
kept at zero, so that a resumed run continues bit for bit. The model's own state (weights,
quantizers) is the user's to save and load.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from geta.errors import ConfigError
from geta.optim.schedule import Stage
from geta.optim.units import RedundantRows
from geta.optim.zero_fill import CommittedZeros

__all__ = ["STATE_KEY", "Resumable"]

STATE_KEY = "geta"  # where state_dict() keeps the run state next to torch's "state"


class Resumable(torch.optim.Optimizer):
    """``state_dict`` / ``load_state_dict`` of QASSO's run state (see the module docstring).

    The subclass (`geta.QASSO`) sets the attributes annotated here and provides ``stage`` and
    ``_set_quotas``; this class only moves them in and out of a checkpoint.
    """

    _step_count: int
    _period: int
    _selected: Tensor  # bool (N,)
    _committed: Tensor  # bool (N,)
    _frozen: Tensor | None  # (n_quantizers,)
    _group_quota: Tensor  # (G,)
    _rows: RedundantRows | None
    _zeros: CommittedZeros
    target_units: int
    layout: Any  # UnitLayout or ShardedLayout
    table: Any  # QuantizerTable or ShardedQuantizerTable
    bits: Any  # the bit rule's strategy

    @property
    def stage(self) -> Stage:
        """The stage of the next step (given by the subclass)."""
        raise NotImplementedError

    def _set_quotas(self, quota: Tensor, target: int | None = None) -> None:
        """Adopt each group's quota (given by the subclass)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """torch's state (moments, param groups) plus the run state under the key ``"geta"``."""
        sd = super().state_dict()
        sd[STATE_KEY] = {
            "step": self._step_count,
            "stage": self.stage.value,
            "period": self._period,
            "selected": self._selected.clone(),
            "committed": self._committed.clone(),
            "frozen": None if self._frozen is None else self._frozen.clone(),
            "quota": self._group_quota.clone(),  # the joint allocation's widths, once chosen
            "allocation": self.bits.state_dict(),  # the bit rule's state (key kept for old checkpoints)
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a `state_dict`; the model's own state (weights, quantizers) is the user's."""
        state_dict = dict(state_dict)
        run = state_dict.pop(STATE_KEY, None)
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
        if run.get("quota") is not None:
            self._set_quotas(run["quota"].to(dtype=torch.long, device="cpu").clone(), self.target_units)
        frozen = run["frozen"]
        self._frozen = None if frozen is None else frozen.to(self.table.b_lo).clone()
        if run.get("allocation") is not None:
            self.bits.load_state_dict(run["allocation"])
        has_rows = bool(self._selected.any())
        self._rows = self.layout.redundant(self._selected, len(self.table)) if has_rows else None
        self._zeros = CommittedZeros(self.layout.zero_positions(self._committed))
