"""`Config`: what the user asks of a compression run, validated at construction."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from geta.errors import ConfigError

__all__ = ["Config", "STE", "Selection", "MIN_BITS", "MAX_BITS"]

MIN_BITS = 2
MAX_BITS = 16


class STE(enum.Enum):
    """How the straight-through estimator treats the input gradient of a quantizer."""

    CLIPPED = "clipped"  # zero where |x| > qmax (default, docs/method.md §1.3)
    FIXED = "fixed"  # zero where |x| > 2, as in the authors' release (kept for comparison)


class Selection(enum.Enum):
    """How a pruning period's quota of units is spread over the prune groups."""

    UNIFORM = "uniform"  # every group loses the same share of its units (default; bench-chosen)
    GLOBAL = "global"  # the lowest-saliency units wherever they are (the paper), above the floors


def _check_bits(name: str, value: object, *, allow_none: bool) -> tuple[int, int] | None:
    if value is None:
        if allow_none:
            return None
        raise ConfigError(f"Config.{name}=None is not allowed; pass a (lo, hi) pair such as (4, 8)")
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ConfigError(
            f"Config.{name}={value!r} must be a (lo, hi) pair of integers in "
            f"[{MIN_BITS}, {MAX_BITS}], e.g. (4, 8)"
        )
    lo, hi = value
    for b in (lo, hi):
        if isinstance(b, bool) or not isinstance(b, int) or not MIN_BITS <= b <= MAX_BITS:
            raise ConfigError(
                f"Config.{name}={value!r}: each bit width must be an integer in "
                f"[{MIN_BITS}, {MAX_BITS}], got {b!r}"
            )
    if lo > hi:
        raise ConfigError(f"Config.{name}={value!r}: lo ({lo}) must be <= hi ({hi}); pass ({hi}, {lo})?")
    return (lo, hi)


def _check_switches(config: object) -> None:
    """Every on/off field is a bool (a truthy string or number is a mistake, not a yes)."""
    for name in ("quantize_embeddings", "learn_exponent", "recompute_quantized", "uniform_layers"):
        value = getattr(config, name)
        if not isinstance(value, bool):
            raise ConfigError(f"Config.{name}={value!r} must be True or False")


def _check_enum(config: object, name: str, kind: type[enum.Enum]) -> None:
    """Accept a member of ``kind`` or its string value; store the member."""
    value = getattr(config, name)
    allowed = [e.value for e in kind]
    if isinstance(value, str):
        try:
            object.__setattr__(config, name, kind(value))
        except ValueError:
            raise ConfigError(f"Config.{name}={value!r} is not one of {allowed}") from None
    elif not isinstance(value, kind):
        raise ConfigError(f"Config.{name}={value!r} must be a geta.{kind.__name__} or one of {allowed}")


@dataclass(frozen=True)
class Config:
    """What to compress and how far.

    >>> Config(target_sparsity=0.5, weight_bits=(4, 8), act_bits=(4, 8)).weight_bits
    (4, 8)
    >>> Config(target_sparsity=1.0)
    Traceback (most recent call last):
    ...
    geta.errors.ConfigError: Config.target_sparsity=1.0 must be in [0, 1) ...
    """

    target_sparsity: float | None = None
    """Fraction of the prunable channels (units of all prunable groups) to remove, in [0, 1).

    None (the default): the run chooses every group's width together with the bits under the
    BOPs budget (`target_bops`, or the default budget): the joint allocation of docs/method.md
    §3.6. A number with ``target_bops`` set: the joint allocation removes *at least* this
    fraction. A number without ``target_bops``: exactly this fraction, spread by ``selection``,
    and the bits allocated under the budget of the middle of the bit ranges."""
    weight_bits: tuple[int, int] = (4, 16)
    """Final (lo, hi) range of every weight quantizer's bit width."""
    act_bits: tuple[int, int] | None = None
    """Final (lo, hi) range of the input-activation quantizers; None: activations stay float."""
    init_bits: int = 16
    """Bit width every quantizer starts from (docs/method.md §1.4); must be >= the hi bounds."""
    quantize_embeddings: bool = False
    """Also attach weight quantizers to embedding tables."""
    learn_exponent: bool = True
    """Learn the exponent t of the quantizer (fixed at 1 otherwise)."""
    recompute_quantized: bool = True
    """Run each eager training forward of the prepared model inside
    `geta.quant.recompute_quantized`: fake-quantized weights and layer inputs are kept for the
    backward as recipes and recomputed there (the same gradients bit for bit, less memory, a
    step a few percent slower on a CPU). False keeps the values."""
    ste: STE = STE.CLIPPED
    """Input-gradient rule of the straight-through estimator."""
    exclude_quant: tuple[str, ...] = ()
    """fnmatch patterns of module names whose layers are not quantized."""
    exclude_prune: tuple[str, ...] = ()
    """fnmatch patterns of module names; groups touching their parameters are not pruned."""
    group_divisible: int = 1
    """Keep each group's surviving channel count a multiple of this (hardware-friendly)."""
    calibration_batches: int = 1
    """How many example-input batches calibrate activation ranges (the example inputs are one)."""
    selection: Selection = Selection.UNIFORM
    """How the pruned units are spread over the groups: the same share of each, or globally."""
    min_keep_fraction: float = 0.1
    """Every prunable group keeps at least this fraction of its units (no layer collapse)."""
    min_keep_units: int = 1
    """... and at least this many units."""
    target_bops: float | None = None
    """Budget of W+A BOPs relative to the dense FP32 model, in (0, 1]; the run's widths and bit
    widths are allocated by measured sensitivity to meet it. None: with ``target_sparsity``
    None the default budget (`geta.optim.budget.DEFAULT_BUDGET`), with a fixed
    ``target_sparsity`` the budget of the middle of the bit ranges."""
    uniform_layers: bool = False
    """Prune every layer alike: QASSO gives groups of the same kind (same size and parameter
    shapes, e.g. every decoder layer's MLP, or its kv heads with their query heads) equal quotas
    (the sparsity reached may fall short of the target by less than one unit per group), and
    `geta.convert` leaves them the same number of units, keeping zero units where counts still
    differ (zeros set by hand). A pruned Hugging Face transformer then fits one global config, and
    ``geta.export.pretrained(..., plain=True)`` writes a folder plain ``from_pretrained`` loads."""

    @property
    def chooses_widths(self) -> bool:
        """True when the run chooses every group's width under the budget (joint allocation):
        ``target_sparsity`` None, or ``target_bops`` set (then ``target_sparsity`` is a minimum)."""
        return self.target_sparsity is None or self.target_bops is not None

    def __post_init__(self) -> None:
        _check_switches(self)
        s = self.target_sparsity
        bad = isinstance(s, bool) or not isinstance(s, (int, float)) or not (0.0 <= s < 1.0) or math.isnan(s)
        if s is not None and bad:
            raise ConfigError(
                f"Config.target_sparsity={s!r} must be in [0, 1) or None (a fraction of prunable "
                "channels; 0.5 removes half; None: chosen with the bits under the BOPs budget)"
            )
        object.__setattr__(
            self, "weight_bits", _check_bits("weight_bits", self.weight_bits, allow_none=False)
        )
        object.__setattr__(self, "act_bits", _check_bits("act_bits", self.act_bits, allow_none=True))
        ib = self.init_bits
        hi = max(self.weight_bits[1], self.act_bits[1] if self.act_bits else MIN_BITS)
        if isinstance(ib, bool) or not isinstance(ib, int) or not hi <= ib <= 32:
            raise ConfigError(
                f"Config.init_bits={ib!r} must be an integer in [{hi}, 32] (at least the largest hi bound)"
            )
        _check_enum(self, "ste", STE)
        for name in ("exclude_quant", "exclude_prune"):
            v = getattr(self, name)
            if isinstance(v, str) or not all(isinstance(p, str) for p in v):
                raise ConfigError(
                    f"Config.{name}={v!r} must be a tuple of fnmatch patterns, e.g. ('head.*',)"
                )
            object.__setattr__(self, name, tuple(v))
        g = self.group_divisible
        if isinstance(g, bool) or not isinstance(g, int) or g < 1:
            raise ConfigError(f"Config.group_divisible={g!r} must be a positive integer (1 disables it)")
        _check_enum(self, "selection", Selection)
        f = self.min_keep_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0:
            raise ConfigError(f"Config.min_keep_fraction={f!r} must be in [0, 1] (0.1 keeps a tenth)")
        k = self.min_keep_units
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError(f"Config.min_keep_units={k!r} must be an integer >= 0")
        b = self.target_bops
        if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float)) or not 0.0 < b <= 1.0):
            raise ConfigError(
                f"Config.target_bops={b!r} must be None or in (0, 1]: W+A BOPs relative to the dense "
                "FP32 model, e.g. 0.005 for 0.5 %"
            )
        if self.uniform_layers and self.selection is not Selection.UNIFORM:
            raise ConfigError(
                f"Config.uniform_layers=True needs selection='uniform', got selection="
                f"{self.selection.value!r} (global selection gives every layer its own count)"
            )
        if self.chooses_widths and self.selection is not Selection.UNIFORM:
            raise ConfigError(
                f"Config.selection={self.selection.value!r} needs a fixed target_sparsity without "
                f"target_bops (got target_sparsity={self.target_sparsity!r}, target_bops="
                f"{self.target_bops!r}): under a budget the run chooses every group's width, "
                "so selection must be 'uniform' (each group's own count)"
            )
        c = self.calibration_batches
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ConfigError(f"Config.calibration_batches={c!r} must be a positive integer")
