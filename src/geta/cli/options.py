"""`CompressOptions`: every setting of ``geta compress``, from flags and/or a YAML/TOML file.

Flags and config-file keys have the same names (``--weight-bits 2,4`` is ``weight_bits: [2, 4]``
or ``weight_bits = "2,4"``). Precedence: flag > config file > default. Every value is checked
here, and a bad one raises `CliError` naming the flag (or the file and key) and the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from geta.cli.errors import CliError
from geta.config import MAX_BITS, MIN_BITS
from geta.recipes import TrainingDefaults, defaults_for
from geta.recipes.defaults import CNN_DEFAULTS, HF_DEFAULTS, TRANSFORMER_DEFAULTS

__all__ = [
    "CompressOptions",
    "DEFAULT_LR",
    "STAGE_NAMES",
    "STAGE_WEIGHTS",
    "default_text",
    "load_config_file",
    "split_epochs",
]

STAGE_WEIGHTS = CNN_DEFAULTS.stage_weights  # default epochs of warm-up, projection, joint, cool-down
STAGE_NAMES = ("warm-up", "projection", "joint", "cool-down")
_STAGE_PRIORITY = (2, 3, 1, 0)  # who gets an epoch first when there are too few: joint, cool-down, ...
OPTIMIZERS = ("sgd", "adam", "adamw")
DEFAULT_LR = {"sgd": (0.1, 0.05), "adam": (1e-3, 1e-3), "adamw": (1e-3, 1e-3)}  # (dense, QASSO)
# (a recipe's own optimizer brings its own rates, `geta.recipes.TrainingDefaults`; these apply
# when --optimizer picks another one)


def _opt(default: Any, text: str) -> Any:
    """A field with its ``--help`` text (the default is appended from the code, `default_text`)."""
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class CompressOptions:
    """What ``geta compress`` trains, on what, and how.

    Options left at None take the model's `geta.recipes.TrainingDefaults` (`training`):
    SGD for the CNN recipes (tuned on the digits demo), AdamW with gradient-norm clipping for
    the transformer recipes and ``hf:DIR`` checkpoints.
    """

    model: str = _opt("resnet", "model recipe, hf:DIR (a local Hugging Face checkpoint) or module:factory")
    data: str = _opt("digits", "data set")
    seq_len: int | None = _opt(None, "tokens per window / block of text data")
    sparsity: float = _opt(0.6, "fraction of prunable channels/heads to remove")
    weight_bits: tuple[int, int] = _opt((3, 4), "final bit range of the weights, LO,HI")
    act_bits: tuple[int, int] | None = _opt((2, 4), "final bit range of layer inputs, LO,HI or none (float)")
    epochs: int | None = _opt(None, "compression epochs in total, split over the four stages")
    warmup: int | None = _opt(None, "warm-up epochs")
    projection: int | None = _opt(None, "projection epochs")
    joint: int | None = _opt(None, "joint (pruning) epochs")
    cooldown: int | None = _opt(None, "cool-down epochs")
    dense_epochs: int | None = _opt(
        None, "epochs of dense baseline training (skipped with --dense-checkpoint)"
    )
    dense_lr: float | None = _opt(None, "dense training learning rate")
    optimizer: str | None = _opt(None, "sgd, adam or adamw, for both phases")
    lr: float | None = _opt(None, "QASSO learning rate of the weights (cosine decay in the cool-down)")
    lr_quant: float = _opt(1e-3, "QASSO learning rate of the quantizer scalars")
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(1e-4, "weight decay")
    clip_norm: float | None = _opt(
        None, "clip the global gradient norm to this before every step, both phases (0: off)"
    )
    grad_clip: float | None = _opt(None, "element-wise gradient clip inside QASSO")
    batch_size: int = _opt(64, "batch size")
    device: str = _opt("cpu", "torch device")
    seed: int = _opt(0, "seed of the data split, init and shuffling")
    dense_checkpoint: str | None = _opt(
        None, "state_dict of the dense model (e.g. dense.pt of a run): skip dense training"
    )
    target_bops: float | None = _opt(
        None,
        "W+A BOPs budget relative to the dense FP32 model, e.g. 0.004; none: the middle of the bit ranges",
    )
    selection: str = _opt("uniform", "how pruned units spread over groups: uniform (same share) or global")
    min_keep: float = _opt(0.1, "fraction of every group's units that always survives (no layer collapse)")
    forget: str = _opt("linear", "forget rate of the selected rows: linear, or descent (the paper's rule)")
    bit_rule: str = _opt("budget", "bits by sensitivity under the budget, or descent (the paper's step rule)")
    distill: float = _opt(0.0, "weight of distillation from the dense model during compression (0: off)")
    quantize_embeddings: bool = _opt(
        False, "quantize embedding tables too (their weights; lookups cost no BOPs)"
    )
    uniform_layers: bool = _opt(
        False, "prune every layer alike: hf:DIR's hf/ output then also loads with plain transformers"
    )
    compile: bool = _opt(False, "torch.compile the training forward and backward (fused fake-quant)")

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
        if opts.uniform_layers and opts.selection != "uniform":
            raise CliError(
                f"{where('uniform_layers')} needs --selection uniform, got {opts.selection!r} "
                "(global selection gives every layer its own count)"
            )
        return opts

    def training(self) -> TrainingDefaults:
        """The training settings in force: the options given, the model's defaults for the rest.

        An ``optimizer`` other than the model's default brings its own `DEFAULT_LR`.
        """
        d = defaults_for(self.model)
        opt = self.optimizer or d.optimizer
        dense_lr, lr = (d.dense_lr, d.lr) if opt == d.optimizer else DEFAULT_LR[opt]
        return TrainingDefaults(
            optimizer=opt,
            dense_lr=self.dense_lr if self.dense_lr is not None else dense_lr,
            lr=self.lr if self.lr is not None else lr,
            clip_norm=self.clip_norm if self.clip_norm is not None else d.clip_norm,
            dense_epochs=self.dense_epochs if self.dense_epochs is not None else d.dense_epochs,
            stage_weights=d.stage_weights,
        )

    def stage_epochs(self) -> tuple[int, int, int, int]:
        """Epochs of (warm-up, projection, joint, cool-down) after splitting ``epochs``."""
        weights = defaults_for(self.model).stage_weights
        stages = split_epochs(self.epochs, self._given_stages(), weights)
        if self.sparsity > 0 and stages[2] == 0:
            raise CliError(
                f"--sparsity {self.sparsity} needs at least one joint (pruning) epoch; "
                "pass --joint 1 or more (or --epochs >= 1)"
            )
        return stages

    def empty_stages(self) -> list[str]:
        """Stages left without an epoch because ``epochs`` is too small (not those set to 0)."""
        given = self._given_stages()
        return [STAGE_NAMES[i] for i, n in enumerate(self.stage_epochs()) if n == 0 and given[i] is None]

    def learning_rates(self) -> tuple[float, float]:
        """(dense lr, QASSO lr): the options', or the defaults of the model and optimizer (`training`)."""
        t = self.training()
        return t.dense_lr, t.lr

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists), as written to ``config.yaml`` and checkpoints."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def _given_stages(self) -> tuple[int | None, int | None, int | None, int | None]:
        return (self.warmup, self.projection, self.joint, self.cooldown)


def _per_model(values: dict[str, object]) -> str:
    """``"sgd; adamw for vit, llama, hf:DIR"``: the CNN value, then where the transformers differ."""
    cnn = values["cnn"]
    others = [f"{v} for {k}" for k, v in values.items() if k != "cnn" and v != cnn]
    return "; ".join([str(cnn), *others])


def _transformer_value(name: str) -> dict[str, object]:
    """An option's default for the CNN recipes, the transformer recipes and ``hf:DIR``."""

    def show(d: TrainingDefaults) -> object:
        value = getattr(d, name)
        return f"{value:g}" if isinstance(value, float) else value

    both = show(TRANSFORMER_DEFAULTS) == show(HF_DEFAULTS)
    out = {"cnn": show(CNN_DEFAULTS), "vit, llama" + (", hf:DIR" if both else ""): show(TRANSFORMER_DEFAULTS)}
    if not both:
        out["hf:DIR"] = show(HF_DEFAULTS)
    return out


def default_text(name: str) -> str | None:
    """The default of option ``name`` as ``--help`` shows it, from the values the code applies.

    >>> default_text("weight_bits"), default_text("epochs"), default_text("joint")
    ('3,4', '30', '7')
    >>> default_text("optimizer"), default_text("dense_epochs")
    ('sgd; adamw for vit, llama, hf:DIR', '40; 1 for hf:DIR')
    >>> default_text("lr")
    'sgd 0.05, adam 0.001, adamw 0.001; vit, llama, hf:DIR: adamw 0.003'
    """
    f = next(f for f in fields(CompressOptions) if f.name == name)
    stages = ("warmup", "projection", "joint", "cooldown")
    if name == "epochs":
        return str(sum(STAGE_WEIGHTS))
    if name in stages:
        return str(STAGE_WEIGHTS[stages.index(name)])
    if name in ("dense_lr", "lr"):
        side = 0 if name == "dense_lr" else 1
        own = ", ".join(f"{opt} {lrs[side]:g}" for opt, lrs in DEFAULT_LR.items())
        t = TRANSFORMER_DEFAULTS
        return f"{own}; vit, llama, hf:DIR: {t.optimizer} {(t.dense_lr, t.lr)[side]:g}"
    if name in ("optimizer", "clip_norm", "dense_epochs"):
        values = _transformer_value(name)
        if name == "dense_epochs":
            values = {"cnn": values["cnn"], **{k: v for k, v in values.items() if k == "hf:DIR"}}
        return _per_model(values)
    if name == "seq_len":
        return "64 bytes for byte-level text, 128 tokens with an hf:DIR tokenizer"
    if f.default is None:
        return "none" if name in ("act_bits", "grad_clip", "target_bops") else None
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    if isinstance(f.default, tuple):
        return ",".join(str(v) for v in f.default)
    return f"{f.default:g}" if isinstance(f.default, float) else str(f.default)


def split_epochs(
    total: int | None, given: tuple[int | None, ...], weights: tuple[int, int, int, int] = STAGE_WEIGHTS
) -> tuple[int, int, int, int]:
    """Fill the unspecified stages: ``weights`` without a total, else a share of what is left.

    Shares follow ``weights`` (the model's, default `STAGE_WEIGHTS`), but every unspecified
    stage gets at least one epoch while there are enough (the joint stage first, then
    cool-down, projection and warm-up).

    >>> split_epochs(None, (None, None, None, None)), split_epochs(2, (None, None, None, None))
    ((2, 3, 7, 18), (0, 0, 1, 1))
    >>> split_epochs(8, (None, None, None, None)), split_epochs(10, (0, None, 4, None))
    ((1, 1, 2, 4), (0, 1, 4, 5))
    """
    if total is None:
        return tuple(w if g is None else g for g, w in zip(given, weights))  # type: ignore[return-value]
    left = total - sum(g for g in given if g is not None)
    if left < 0:
        raise CliError(
            f"--epochs {total} is less than the stage epochs given ({sum(g or 0 for g in given)}); "
            "raise --epochs or lower --warmup/--projection/--joint/--cooldown"
        )
    free = [i for i, g in enumerate(given) if g is None]
    weight = sum(weights[i] for i in free)
    share = {i: left * weights[i] / weight for i in free} if weight else {}
    alloc = {i: int(s) for i, s in share.items()}
    for i in sorted(free, key=lambda i: alloc[i] - share[i])[: left - sum(alloc.values())]:
        alloc[i] += 1  # largest remainders first
    for i in sorted(free, key=_STAGE_PRIORITY.index):  # an empty stage takes one from the largest
        donor = max((j for j in free if alloc[j] > 1), key=lambda j: alloc[j], default=None)
        if alloc[i] == 0 and donor is not None:
            alloc[donor] -= 1
            alloc[i] = 1
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


def _optimizer(raw: Any, where: str) -> str | None:
    if raw is None or str(raw).strip().lower() in ("none", ""):
        return None  # the model's default
    value = _text(raw, where).lower()
    if value not in OPTIMIZERS:
        raise CliError(f"{where} must be one of {', '.join(OPTIMIZERS)}, got {raw!r}")
    return value


def _choice(*allowed: str) -> Callable[[Any, str], str]:
    def convert(raw: Any, where: str) -> str:
        value = _text(raw, where).lower()
        if value not in allowed:
            raise CliError(f"{where} must be one of {', '.join(allowed)}, got {raw!r}")
        return value

    return convert


def _bool(raw: Any, where: str) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise CliError(f"{where} must be true or false, got {raw!r}")


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
    "model": _text, "data": _text, "seq_len": _number(int, 2, None, optional=True),
    "sparsity": _number(float, 0.0, 0.95),
    "weight_bits": _bits(False), "act_bits": _bits(True),
    "epochs": _EPOCHS, "warmup": _EPOCHS, "projection": _EPOCHS, "joint": _EPOCHS, "cooldown": _EPOCHS,
    "dense_epochs": _EPOCHS, "dense_lr": _number(float, 0.0, None, optional=True),
    "optimizer": _optimizer, "lr": _number(float, 0.0, None, optional=True),
    "clip_norm": _number(float, 0.0, None, optional=True),
    "lr_quant": _number(float, 0.0, None), "momentum": _number(float, 0.0, 0.999),
    "weight_decay": _number(float, 0.0, None), "grad_clip": _number(float, 1e-12, None, optional=True),
    "batch_size": _number(int, 1, None), "device": _device, "seed": _number(int, 0, None),
    "dense_checkpoint": _optional_text, "target_bops": _number(float, 1e-9, 1.0, optional=True),
    "selection": _choice("uniform", "global"), "min_keep": _number(float, 0.0, 1.0),
    "forget": _choice("linear", "descent"), "bit_rule": _choice("budget", "descent"),
    "distill": _number(float, 0.0, None), "quantize_embeddings": _bool,
    "uniform_layers": _bool, "compile": _bool,
}  # fmt: skip
