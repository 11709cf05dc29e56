"""`CompressOptions`: every setting of ``geta compress``, from flags and/or a YAML/TOML file.

Flags and config-file keys have the same names (``--weight-bits 2,4`` is ``weight_bits: [2, 4]``
or ``weight_bits = "2,4"``). Precedence: flag > config file > default. Every value is checked
here, and a bad one raises `CliError` naming the flag (or the file and key) and the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from geta.cli.errors import CliError
from geta.config import MAX_BITS, MIN_BITS

__all__ = ["CompressOptions", "STAGE_WEIGHTS", "load_config_file", "split_epochs"]

STAGE_WEIGHTS = (2, 3, 7, 18)  # default epochs of warm-up, projection, joint, cool-down
OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class CompressOptions:
    """What ``geta compress`` trains, on what, and how (defaults tuned for the digits demo)."""

    model: str = "resnet"  # a recipe name or module:factory
    data: str = "digits"  # digits | cifar10:DIR | imagefolder:DIR | text[:FILE]
    sparsity: float = 0.6  # fraction of prunable channels/heads to remove
    weight_bits: tuple[int, int] = (3, 4)  # final range of every weight's bit width
    act_bits: tuple[int, int] | None = (2, 4)  # final range of layer inputs; None: float inputs
    epochs: int | None = None  # compression epochs in total (split over the stages)
    warmup: int | None = None
    projection: int | None = None
    joint: int | None = None
    cooldown: int | None = None
    dense_epochs: int = 40  # dense baseline training (skipped with dense_checkpoint)
    dense_lr: float | None = None  # None: 0.1 for sgd, 1e-3 for adam/adamw
    optimizer: str = "sgd"  # sgd | adam | adamw, for both phases
    lr: float | None = None  # QASSO lr of the weights (None: 0.05 sgd, 1e-3 adam); cosine in the cool-down
    lr_quant: float = 1e-3  # QASSO learning rate of the quantizer scalars
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float | None = None  # element-wise gradient clip inside QASSO
    batch_size: int = 64
    device: str = "cpu"
    seed: int = 0
    dense_checkpoint: str | None = None  # a state_dict of the dense model: skip dense training

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, where: Callable[[str], str]) -> CompressOptions:
        """Convert and check raw values (strings from flags, or config-file values).

        ``where(name)`` names a field for messages, e.g. ``"--weight-bits"`` or ``"weight_bits in a.yaml"``.
        """
        known = {f.name for f in fields(cls)}
        out: dict[str, Any] = {}
        for key, raw in values.items():
            name = key.replace("-", "_")
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(known))}"
                raise CliError(f"{where(key)} is not a compress option{hint}")
            out[name] = _CONVERT[name](raw, where(name))
        opts = cls(**out)
        opts.stage_epochs()  # checks the epoch split
        return opts

    def stage_epochs(self) -> tuple[int, int, int, int]:
        """Epochs of (warm-up, projection, joint, cool-down) after splitting ``epochs``."""
        stages = split_epochs(self.epochs, (self.warmup, self.projection, self.joint, self.cooldown))
        if self.sparsity > 0 and stages[2] == 0:
            raise CliError(
                f"--sparsity {self.sparsity} needs at least one joint (pruning) epoch; "
                "pass --joint 1 or more (or --epochs >= 1)"
            )
        return stages

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists), as written to ``config.yaml`` and checkpoints."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def split_epochs(total: int | None, given: tuple[int | None, ...]) -> tuple[int, int, int, int]:
    """Fill the unspecified stages: defaults without a total, else a share of what is left.

    >>> split_epochs(None, (None, None, None, None)), split_epochs(2, (None, None, None, None))
    ((2, 3, 7, 18), (0, 0, 1, 1))
    >>> split_epochs(10, (0, None, 4, None))
    (0, 1, 4, 5)
    """
    if total is None:
        return tuple(w if g is None else g for g, w in zip(given, STAGE_WEIGHTS))  # type: ignore[return-value]
    left = total - sum(g for g in given if g is not None)
    if left < 0:
        raise CliError(
            f"--epochs {total} is less than the stage epochs given ({sum(g or 0 for g in given)}); "
            "raise --epochs or lower --warmup/--projection/--joint/--cooldown"
        )
    free = [i for i, g in enumerate(given) if g is None]
    weight = sum(STAGE_WEIGHTS[i] for i in free)
    share = {i: left * STAGE_WEIGHTS[i] / weight for i in free} if weight else {}
    alloc = {i: int(s) for i, s in share.items()}
    for i in sorted(free, key=lambda i: alloc[i] - share[i])[: left - sum(alloc.values())]:
        alloc[i] += 1  # largest remainders first
    if 2 in alloc and alloc[2] == 0 and left > 0:  # pruning needs a joint epoch: take one
        donor = max((i for i in free if alloc[i] > 0), key=lambda i: alloc[i])
        alloc[donor] -= 1
        alloc[2] = 1
    return tuple(alloc.get(i, given[i]) for i in range(4))  # type: ignore[return-value]


def load_config_file(path: str) -> dict[str, Any]:
    """The mapping in a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise CliError(f"config file {file} does not exist; pass --config with a YAML or TOML file")
    text = file.read_text(encoding="utf-8", errors="replace")
    try:
        if file.suffix.lower() == ".toml":
            import tomllib

            data: Any = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CliError(
            f"config file {file} is not valid {'TOML' if file.suffix == '.toml' else 'YAML'} "
            f"({first}); fix the syntax"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CliError(f"config file {file} must hold a mapping of option: value, got {type(data).__name__}")
    return data


# -- converters: raw value (flag string or config value) -> checked value -----------------------


def _text(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise CliError(f"{where} must be a non-empty string, got {raw!r}")
    return raw.strip()


def _optional_text(raw: Any, where: str) -> str | None:
    return None if raw is None or raw == "" else _text(raw, where)


def _number(kind: type, lo: float, hi: float | None, *, optional: bool = False) -> Callable[[Any, str], Any]:
    def convert(raw: Any, where: str) -> Any:
        if optional and (raw is None or str(raw).lower() in ("none", "")):
            return None
        try:
            if isinstance(raw, bool) or (kind is int and isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            value = kind(raw)
        except (TypeError, ValueError):
            raise CliError(
                f"{where} must be {'an integer' if kind is int else 'a number'}, got {raw!r}"
            ) from None
        if value < lo or (hi is not None and value > hi):
            span = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise CliError(f"{where} must be {span}, got {raw!r}")
        return value

    return convert


def _bits(optional: bool) -> Callable[[Any, str], tuple[int, int] | None]:
    def convert(raw: Any, where: str) -> tuple[int, int] | None:
        if optional and (raw is None or str(raw).strip().lower() == "none"):
            return None
        parts = raw.split(",") if isinstance(raw, str) else raw
        try:
            lo, hi = (int(str(p).strip()) for p in parts)
        except (TypeError, ValueError):
            raise CliError(
                f"{where} must be LO,HI (two integers, e.g. 4,8){' or none' if optional else ''}, got {raw!r}"
            ) from None
        if not (MIN_BITS <= lo <= MAX_BITS and MIN_BITS <= hi <= MAX_BITS):
            raise CliError(
                f"{where} {lo},{hi}: bit widths must lie in [{MIN_BITS}, {MAX_BITS}]; pass e.g. 4,8"
            )
        if lo > hi:
            raise CliError(f"{where} {lo},{hi}: LO must not exceed HI; pass {hi},{lo}")
        return (lo, hi)

    return convert


def _optimizer(raw: Any, where: str) -> str:
    value = _text(raw, where).lower()
    if value not in OPTIMIZERS:
        raise CliError(f"{where} must be one of {', '.join(OPTIMIZERS)}, got {raw!r}")
    return value


def _device(raw: Any, where: str) -> str:
    import torch

    value = _text(raw, where)
    try:
        kind = torch.device(value).type
    except (RuntimeError, ValueError):
        raise CliError(f"{where} {value!r} is not a torch device; pass cpu, cuda, cuda:1 or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(kind, True):
        raise CliError(f"{where} {value!r}: this machine has no {kind} device available; pass --device cpu")
    return value


_EPOCHS = _number(int, 0, None, optional=True)
_CONVERT: dict[str, Callable[[Any, str], Any]] = {
    "model": _text, "data": _text, "sparsity": _number(float, 0.0, 0.95),
    "weight_bits": _bits(False), "act_bits": _bits(True),
    "epochs": _EPOCHS, "warmup": _EPOCHS, "projection": _EPOCHS, "joint": _EPOCHS, "cooldown": _EPOCHS,
    "dense_epochs": _number(int, 0, None), "dense_lr": _number(float, 0.0, None, optional=True),
    "optimizer": _optimizer, "lr": _number(float, 0.0, None, optional=True),
    "lr_quant": _number(float, 0.0, None), "momentum": _number(float, 0.0, 0.999),
    "weight_decay": _number(float, 0.0, None), "grad_clip": _number(float, 1e-12, None, optional=True),
    "batch_size": _number(int, 1, None), "device": _device, "seed": _number(int, 0, None),
    "dense_checkpoint": _optional_text,
}  # fmt: skip
