"""`LearnableQuantizer`: the per-tensor fake-quantizer module (docs/method.md §1).

The module only holds state, the three learnable scalars; the math lives in
`geta.quant.functional`. The optimizer (QASSO) moves the scalars and projects ``step`` onto
the bit interval; the quantizer itself never constrains them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from geta.config import STE
from geta.errors import ConfigError
from geta.quant.functional import MIN_QMAX, bits, fake_quant, step_for_bits

__all__ = ["LearnableQuantizer"]


class LearnableQuantizer(nn.Module):
    """Fake-quantizes a tensor on a learnable grid: Q(x) = sign(x) d round(min(|x|, q_m)^t / d).

    Parameters (0-dim ``nn.Parameter``, float32): ``step`` (d in the paper), ``qmax`` (q_m),
    ``exponent`` (t; frozen at 1 when ``learn_exponent=False``). The bit width is not a
    parameter: it is implied by the three scalars (`bits`, docs/method.md §1.2).

    >>> q = LearnableQuantizer(init_bits=8)
    >>> round(q.bit_width, 4)
    8.0
    >>> q.init_from(torch.tensor([-0.5, 2.0]))   # qmax = max|W| = 2, back to init_bits (8)
    >>> q(torch.tensor([0.3, -3.0])).detach()   # grid step 2/127, clipped at ±2
    tensor([ 0.2992, -2.0000])
    >>> q.set_bits(4); round(q.bit_width, 4), round(float(q.step.detach()) * 7, 4)
    (4.0, 2.0)
    """

    step: nn.Parameter
    qmax: nn.Parameter
    exponent: nn.Parameter

    SCALARS: ClassVar[tuple[str, ...]] = ("step", "qmax", "exponent")  # the learned parameters
    CONFIG_VERSION: ClassVar[int] = 1  # of the `to_config` schema (an entry without "version" is 1)

    def __init__(
        self,
        *,
        signed: bool = True,
        init_bits: float = 16,
        qmax: float = 1.0,
        learn_exponent: bool = True,
        ste: STE = STE.CLIPPED,
    ) -> None:
        super().__init__()
        min_bits = 1 if signed else 0
        if not init_bits > min_bits:
            raise ConfigError(
                f"LearnableQuantizer: init_bits={init_bits!r} must be > {min_bits} "
                f"({'signed' if signed else 'unsigned'}); the default is 16"
            )
        if not qmax > 0:
            raise ConfigError(f"LearnableQuantizer: qmax={qmax!r} must be > 0 (a clipping magnitude)")
        self.signed = bool(signed)  # False: non-negative input, grid {0, d, 2d, ...}, no sign bit
        self.ste = STE(ste)
        self.init_bits = float(init_bits)
        q_m, t = torch.tensor(float(qmax)), torch.tensor(1.0)
        self.step = nn.Parameter(step_for_bits(self.init_bits, q_m, t, signed=self.signed))  # d
        self.qmax = nn.Parameter(q_m)  # q_m
        self.exponent = nn.Parameter(t, requires_grad=learn_exponent)  # t
        self._unit = True  # the exponent's value is exactly 1 (kept by every geta writer of it)
        self.register_load_state_dict_post_hook(_recheck_unit)

    @property
    def learn_exponent(self) -> bool:
        """Whether the exponent t is trained (False: fixed at its current value)."""
        return self.exponent.requires_grad

    @property
    def unit_exponent(self) -> bool:
        """Whether t is fixed at exactly 1 (not learned, and 1 as initialised or loaded).

        Then u(x) = min(|x|, q_m): under ``torch.compile`` the fused quantizer computes no
        ``pow`` and no ``log`` (a static fact that the compiled graph is specialised on; eager
        CPU code reads the value itself). Write a fixed exponent through `init_from`,
        ``load_state_dict`` or `from_config`, which keep this fact; a compiled graph does not
        see a direct in-place write to it.
        """
        return getattr(self, "_unit", False) and not self.exponent.requires_grad  # (older pickles: unknown)

    @property
    def bit_width(self) -> float:
        """The current real-valued bit width (read-only; change it with `set_bits`)."""
        return float(self.bits())

    def bits(self) -> Tensor:
        """The current real-valued bit width as a 0-dim tensor without gradient."""
        with torch.no_grad():
            return bits(self.step, self.qmax, self.exponent, signed=self.signed)

    @torch.no_grad()
    def set_bits(self, b: float | Tensor) -> None:
        """Set ``step`` to the step of a ``b``-bit grid for the current qmax and exponent."""
        new = step_for_bits(b, self.qmax, self.exponent, signed=self.signed)
        self.step.copy_(new.to(self.step.dtype))

    @torch.no_grad()
    def init_from(self, tensor: Tensor) -> None:
        """Initialise from the values to be quantized (docs/method.md §1.4).

        qmax = max|tensor| (unsigned: the max of the non-negative part), floored at a tiny
        positive value for all-zero or empty tensors; exponent = 1; step = the step of
        ``init_bits`` bits. For activations pass calibration statistics (a recorded max|x| as a
        0-dim tensor works), never the layer's weight.
        """
        t = tensor.detach()
        magnitude = t.abs() if self.signed else t.clamp_min(0.0)
        peak = magnitude.amax() if t.numel() > 0 else torch.zeros((), device=t.device)
        self.qmax.copy_(peak.to(self.qmax.dtype).clamp_min(MIN_QMAX))
        self.exponent.fill_(1.0)
        self._unit = True
        self.set_bits(self.init_bits)

    def forward(self, x: Tensor) -> Tensor:
        """Q(x): the fake-quantized ``x`` (same shape and dtype), with STE gradients."""
        return fake_quant(
            x,
            self.step,
            self.qmax,
            self.exponent,
            signed=self.signed,
            ste=self.ste,
            unit_exponent=self.unit_exponent,
        )

    def extra_repr(self) -> str:
        shown = "?" if self.step.device.type == "meta" else f"{self.bit_width:.2f}"
        return f"bits={shown}, signed={self.signed}, ste={self.ste.value}"

    def to_config(self, *, settings: bool = True, scalars: bool = True) -> dict[str, Any]:
        """This quantizer as a JSON-ready dict: the one schema every export writes (version 1).

        Keys, in this order: ``step``, ``qmax``, ``exponent`` (with ``scalars``; float32 values
        survive a JSON double exactly), ``signed`` (always), ``ste`` and ``learn_exponent``
        (with ``settings``), ``bits`` (with ``scalars``: the implied width, informative only).
        A packed file's structure record stores the settings (its scalars are tensors of the
        file), a Hugging Face config the scalars. Entries carry no version key while the
        schema is version 1; `from_config` reads any subset.

        >>> q = LearnableQuantizer(init_bits=4, signed=False)
        >>> q.to_config(scalars=False)
        {'signed': False, 'ste': 'clipped', 'learn_exponent': True}
        >>> LearnableQuantizer.from_config(q.to_config()).to_config() == q.to_config()
        True
        """
        out: dict[str, Any] = {}
        if scalars:
            out.update({name: float(getattr(self, name).detach()) for name in self.SCALARS})
        out["signed"] = self.signed
        if settings:
            out.update(ste=self.ste.value, learn_exponent=self.learn_exponent)
        if scalars:
            out["bits"] = self.bit_width
        return out

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LearnableQuantizer:
        """A quantizer from a `to_config` dict (any subset with ``signed``; missing settings
        take the constructor's defaults, missing scalars its initial values; ``bits`` is not
        read). Raises `ConfigError` for a newer schema version or an entry without ``signed``.
        """
        version = config.get("version", 1)
        if version != cls.CONFIG_VERSION:
            raise ConfigError(
                f"quantizer config version={version!r}: this geta reads version {cls.CONFIG_VERSION}"
            )
        if "signed" not in config:
            raise ConfigError(f"quantizer config {config!r} has no 'signed' field")
        q = cls(
            signed=bool(config["signed"]),
            ste=STE(config.get("ste", STE.CLIPPED.value)),
            learn_exponent=bool(config.get("learn_exponent", True)),
        )
        with torch.no_grad():
            for name in cls.SCALARS:
                if name in config:
                    getattr(q, name).fill_(float(config[name]))
        _recheck_unit(q, None)
        return q


def _recheck_unit(module: nn.Module, _incompatible: object) -> None:
    """After a load: is the exponent exactly 1? (A meta tensor has no value: then not known.)"""
    t = module.exponent
    module._unit = t.device.type != "meta" and float(t.detach()) == 1.0
