"""QASSO, the optimizer of GETA (docs/method.md §3), and its schedule.

- `geta.optim.schedule`: `Stage` and `Schedule` (the four stages as pure functions of the step);
- `geta.optim.rules`, `geta.optim.saliency`, `geta.optim.direction`: the pure math
  (bit projection, forget rate, step choice, the five saliency criteria, base directions);
- `geta.optim.units`, `geta.optim.forget`, `geta.optim.quantizer_table`: vectorised bookkeeping
  of unit rows and quantizer scalars;
- `geta.optim.strategies`: the forget and bit rules, strategies registered and chosen by name;
- `geta.optim.update`: the parameter update of a step (chunked base directions, scalar domains);
- `geta.optim.resume`: the run state in a checkpoint (`Resumable`, QASSO's base class);
- `geta.optim.qasso`: `QASSO`, the ``torch.optim.Optimizer`` that holds the state.
"""

from __future__ import annotations

from geta.optim.direction import Variant
from geta.optim.finite import NonFiniteError
from geta.optim.qasso import QASSO
from geta.optim.schedule import Schedule, Stage

__all__ = ["QASSO", "NonFiniteError", "Schedule", "Stage", "Variant"]
