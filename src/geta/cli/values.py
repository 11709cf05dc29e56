"""Raw option values: read from a config file (`load_config_file`), then converted and checked.

Each converter is called as ``convert(raw, where)``; ``where`` names the flag or config key for
the message of the `CliError` a bad value raises (``"--sparsity"``, ``"'sparsity' in a.yaml"``).
A `geta.cli.options.CompressOptions` field names its converter next to its default and help.

>>> number(float, 0.0, 1.0)("0.25", "--x"), bits(True)("none", "--x"), choice("a", "b")(" B", "--x")
(0.25, None, 'b')
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from geta.cli.errors import CliError
from geta.config import MAX_BITS, MIN_BITS

__all__ = [
    "Converter",
    "bits",
    "boolean",
    "choice",
    "device",
    "load_config_file",
    "number",
    "optional_choice",
    "optional_text",
    "registered",
    "text",
]

Converter = Callable[[Any, str], Any]


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


def _is_none(raw: Any) -> bool:
    return raw is None or str(raw).strip().lower() in ("none", "")


def text(raw: Any, where: str) -> str:
    """A non-empty string, stripped."""
    if not isinstance(raw, str) or not raw.strip():
        raise CliError(f"{where} must be a non-empty string, got {raw!r}")
    return raw.strip()


def optional_text(raw: Any, where: str) -> str | None:
    """`text`, or None for None or ''."""
    return None if raw is None or raw == "" else text(raw, where)


def number(kind: type, lo: float, hi: float | None, *, optional: bool = False) -> Converter:
    """An int or float (``kind``) in [lo, hi] (no upper end when ``hi`` is None); optionally none."""

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
        if value != value or value in (float("inf"), float("-inf")):  # NaN passes every comparison
            raise CliError(f"{where} must be a finite number, got {raw!r}")
        if value < lo or (hi is not None and value > hi):
            span = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise CliError(f"{where} must be {span}, got {raw!r}")
        return value

    return convert


def bits(optional: bool) -> Callable[[Any, str], tuple[int, int] | None]:
    """A bit range ``LO,HI`` (a string or a pair) inside [MIN_BITS, MAX_BITS]; optionally none."""

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


def choice(*allowed: str) -> Converter:
    """One of ``allowed`` (case-insensitive)."""

    def convert(raw: Any, where: str) -> str:
        value = text(raw, where).lower()
        if value not in allowed:
            raise CliError(f"{where} must be one of {', '.join(allowed)}, got {raw!r}")
        return value

    return convert


def registered(names: Callable[[], Iterable[str]]) -> Converter:
    """`choice` among ``names()`` read when a value is converted, not when the option is
    declared: a rule registered after import (`geta.optim.strategies`) is a valid choice."""

    def convert(raw: Any, where: str) -> str:
        return choice(*names())(raw, where)

    return convert


def optional_choice(*allowed: str) -> Converter:
    """`choice`, or None (the model's default) for none or ''."""
    inner = choice(*allowed)

    def convert(raw: Any, where: str) -> str | None:
        return None if _is_none(raw) else inner(raw, where)

    return convert


def boolean(raw: Any, where: str) -> bool:
    """true/yes/on/1 or false/no/off/0 (a YAML bool as it is)."""
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise CliError(f"{where} must be true or false, got {raw!r}")


def device(raw: Any, where: str) -> str:
    """A torch device string of a kind this machine has."""
    import torch

    value = text(raw, where)
    try:
        kind = torch.device(value).type
    except (RuntimeError, ValueError):
        raise CliError(f"{where} {value!r} is not a torch device; pass cpu, cuda, cuda:1 or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(kind, True):
        raise CliError(f"{where} {value!r}: this machine has no {kind} device available; pass --device cpu")
    return value
