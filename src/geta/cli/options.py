"""`CompressOptions`: every setting of ``geta compress``, from flags and/or a YAML/TOML file.

Flags and config-file keys have the same names (``--weight-bits 2,4`` is ``weight_bits: [2, 4]``
or ``weight_bits = "2,4"``). Precedence: flag > config file > default. Every value is checked
here, and a bad one raises `CliError` naming the flag (or the file and key) and the fix.

Each option is declared once, as a field of `CompressOptions`: its default, ``--help`` text,
converter (`geta.cli.values`), metavar, the default shown in ``--help`` and which argument of
`geta.Config`, `geta.Schedule.from_epochs` or `geta.QASSO` it sets (`Option`). The argparse
flags (`geta.cli.compress`), the checks of config files and checkpoints (`from_mapping`), the
``--help`` defaults (`default_text`) and the library arguments (`CompressOptions.arguments`)
are all read from there: a new option is one field.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from geta.cli.errors import CliError
from geta.cli.shown_defaults import DEFAULT_LR, by_model, learning_rate
from geta.cli.values import (
    Converter,
    bits,
    boolean,
    choice,
    number,
    optional_choice,
    optional_text,
    registered,
    text,
)
from geta.cli.values import device as torch_device
from geta.optim.strategies import bit_rule_names, forget_rule_names
from geta.recipes import DATA_SETS, RECIPES, TrainingDefaults, defaults_for
from geta.recipes.defaults import CNN_DEFAULTS

__all__ = [
    "CompressOptions",
    "DEFAULT_LR",
    "OPTIMIZERS",
    "Option",
    "STAGE_NAMES",
    "STAGE_WEIGHTS",
    "Target",
    "default_text",
    "option_spec",
    "split_epochs",
]

STAGE_WEIGHTS = CNN_DEFAULTS.stage_weights  # default epochs of warm-up, projection, joint, cool-down
STAGE_NAMES = ("warm-up", "projection", "joint", "cool-down")
_STAGES = ("warmup", "projection", "joint", "cooldown")  # their options (and Schedule arguments)
_STAGE_PRIORITY = (2, 3, 1, 0)  # who gets an epoch first when there are too few: joint, cool-down, ...
OPTIMIZERS = ("sgd", "adam", "adamw")

Target = Literal["config", "schedule", "qasso"]  # what an option sets: geta.Config, Schedule, QASSO


@dataclass(frozen=True)
class Option:
    """What ``geta compress`` knows about one option besides its default (`CompressOptions`).

    ``shown`` is the default as ``--help`` shows it (a text, or a function of nothing that
    computes it from the code's values); None shows the field's default (nothing for None).
    ``to`` is ``(target, argument)``: the option sets that keyword argument of `geta.Config`,
    `geta.Schedule.from_epochs` or `geta.QASSO`, with the value ``value(options)`` (default:
    the option's own) where ``when(options)`` holds (default: always).
    """

    help: str
    convert: Converter
    metavar: str | None = None  # None: the last word of the name, upper case (a switch has none)
    choices: Callable[[], str] | None = None  # appended to the help text in parentheses
    shown: str | Callable[[], str] | None = None
    to: tuple[Target, str] | None = None
    value: Callable[[CompressOptions], Any] | None = None
    when: Callable[[CompressOptions], bool] | None = None


def _opt(default: Any, help: str, convert: Converter, **spec: Any) -> Any:
    """A field of `CompressOptions` with its `Option` (``spec``: the rest of its arguments)."""
    return field(default=default, metadata={"option": Option(help, convert, **spec)})


def _stage(i: int) -> dict[str, Any]:
    """The spec of the stage option ``_STAGES[i]``: N epochs, a Schedule argument after the split."""
    return {"metavar": "N", "shown": str(STAGE_WEIGHTS[i]), "to": ("schedule", _STAGES[i]),
            "value": lambda o: o.stage_epochs()[i]}  # fmt: skip


_EPOCHS = number(int, 0, None, optional=True)
_RATE = number(float, 0.0, None, optional=True)
_MODELS = f"one of {', '.join(RECIPES)}, hf:DIR, module:factory"


@dataclass(frozen=True)
class CompressOptions:
    """What ``geta compress`` trains, on what, and how.

    Options left at None take the model's `geta.recipes.TrainingDefaults` (`training`):
    SGD for the CNN recipes (tuned on the digits demo), AdamW with gradient-norm clipping for
    the transformer recipes and ``hf:DIR`` checkpoints.
    """

    model: str = _opt(
        "resnet", "model recipe, hf:DIR (a local Hugging Face checkpoint) or module:factory", text,
        choices=lambda: _MODELS,
    )  # fmt: skip
    data: str = _opt("digits", "data set", text, choices=lambda: f"one of {', '.join(DATA_SETS)}")
    seq_len: int | None = _opt(
        None, "tokens per window / block of text data", number(int, 2, None, optional=True), metavar="N",
        shown="64 bytes for byte-level text, 128 tokens with an hf:DIR tokenizer",
    )  # fmt: skip
    sparsity: float | None = _opt(
        None, "fraction of prunable channels/heads to remove; none: each layer's width is chosen "
        "with the bits under the BOPs budget (with --target-bops: at least this fraction)",
        number(float, 0.0, 0.95, optional=True), shown="none", to=("config", "target_sparsity"),
    )  # fmt: skip
    weight_bits: tuple[int, int] = _opt(
        (2, 8), "final bit range of the weights, LO,HI", bits(False), metavar="LO,HI",
        to=("config", "weight_bits"),
    )  # fmt: skip
    act_bits: tuple[int, int] | None = _opt(
        (2, 8), "final bit range of layer inputs, LO,HI or none (float)", bits(True), metavar="LO,HI",
        to=("config", "act_bits"),
    )  # fmt: skip
    fixed_exponent: bool = _opt(
        False, "fix each quantizer's exponent t at 1 instead of learning it: a faster training step "
        "(no pow or log per element), usually a little less accurate (docs/method.md §1.5)", boolean,
        to=("config", "learn_exponent"), value=lambda o: not o.fixed_exponent,
    )  # fmt: skip
    epochs: int | None = _opt(
        None, "compression epochs in total, split over the four stages", _EPOCHS, metavar="N",
        shown=lambda: str(sum(STAGE_WEIGHTS)),
    )  # fmt: skip
    warmup: int | None = _opt(None, "warm-up epochs", _EPOCHS, **_stage(0))
    projection: int | None = _opt(None, "projection epochs", _EPOCHS, **_stage(1))
    joint: int | None = _opt(None, "joint (pruning) epochs", _EPOCHS, **_stage(2))
    cooldown: int | None = _opt(None, "cool-down epochs", _EPOCHS, **_stage(3))
    dense_epochs: int | None = _opt(
        None, "epochs of dense baseline training (skipped with --dense-checkpoint)", _EPOCHS, metavar="N",
        shown=by_model("dense_epochs", hf_only=True),
    )  # fmt: skip
    dense_lr: float | None = _opt(None, "dense training learning rate", _RATE, shown=learning_rate(0))
    optimizer: str | None = _opt(
        None, "sgd, adam or adamw, for both phases", optional_choice(*OPTIMIZERS),
        shown=by_model("optimizer"), to=("qasso", "variant"), value=lambda o: o.training().optimizer,
    )  # fmt: skip
    lr: float | None = _opt(
        None, "QASSO learning rate of the weights (cosine decay in the cool-down)", _RATE,
        shown=learning_rate(1), to=("qasso", "lr"), value=lambda o: o.learning_rates()[1],
    )  # fmt: skip
    lr_quant: float = _opt(
        1e-3, "QASSO learning rate of the quantizer scalars", number(float, 0.0, None),
        to=("qasso", "lr_quant"),
    )  # fmt: skip
    momentum: float = _opt(
        0.9, "SGD momentum", number(float, 0.0, 0.999),
        to=("qasso", "momentum"), when=lambda o: o.training().optimizer == "sgd",
    )  # fmt: skip
    weight_decay: float = _opt(1e-4, "weight decay", number(float, 0.0, None), to=("qasso", "weight_decay"))
    clip_norm: float | None = _opt(
        None, "clip the global gradient norm to this before every step, both phases (0: off)", _RATE,
        shown=by_model("clip_norm"),
    )  # fmt: skip
    grad_clip: float | None = _opt(
        None, "element-wise gradient clip inside QASSO", number(float, 1e-12, None, optional=True),
        shown="none", to=("qasso", "grad_clip"),
    )  # fmt: skip
    batch_size: int = _opt(64, "batch size", number(int, 1, None))
    device: str = _opt("cpu", "torch device", torch_device)
    seed: int = _opt(0, "seed of the data split, init and shuffling", number(int, 0, None))
    dense_checkpoint: str | None = _opt(
        None, "state_dict of the dense model (e.g. dense.pt of a run): skip dense training", optional_text,
        metavar="FILE",
    )  # fmt: skip
    target_bops: float | None = _opt(
        None,
        "W+A BOPs budget relative to the dense FP32 model, e.g. 0.004; none: half the cost of the unpruned "
        "model at the lower ends of the bit ranges (with a fixed --sparsity: the middle of the ranges)",
        number(float, 1e-9, 1.0, optional=True), shown="none", to=("config", "target_bops"),
    )  # fmt: skip
    selection: str = _opt(
        "uniform", "how pruned units spread over groups: uniform (same share) or global",
        choice("uniform", "global"), to=("config", "selection"),
    )  # fmt: skip
    min_keep: float = _opt(
        0.1, "fraction of every group's units that always survives (no layer collapse)",
        number(float, 0.0, 1.0), to=("config", "min_keep_fraction"),
    )  # fmt: skip
    forget: str = _opt(
        "linear", "forget rate of the selected rows (descent: the paper's rule)",
        registered(forget_rule_names), to=("qasso", "forget"),
        choices=lambda: f"one of {', '.join(forget_rule_names())}",
    )  # fmt: skip
    bit_rule: str = _opt(
        "budget", "how bits are chosen (budget: by sensitivity under the budget; descent: the paper's rule)",
        registered(bit_rule_names), to=("qasso", "bits"),
        choices=lambda: f"one of {', '.join(bit_rule_names())}",
    )  # fmt: skip
    distill: float | None = _opt(
        None, "weight of distillation from the dense model during compression (0: off)",
        number(float, 0.0, None, optional=True), shown=by_model("distill", hf_only=True),
    )  # fmt: skip
    recalibrate_norms: int = _opt(
        20, "re-estimate BatchNorm statistics on N training batches before each compression-epoch "
        "evaluation and the convert, no weight change (0: off; models without BatchNorm: no effect)",
        number(int, 0, None), metavar="N",
    )  # fmt: skip
    quantize_embeddings: bool = _opt(
        False, "quantize embedding tables too (their weights; lookups cost no BOPs)", boolean,
        to=("config", "quantize_embeddings"),
    )  # fmt: skip
    uniform_layers: bool = _opt(
        False, "prune every layer alike: hf:DIR's hf/ output then also loads with plain transformers",
        boolean, to=("config", "uniform_layers"),
    )  # fmt: skip
    compile: bool = _opt(False, "torch.compile the training forward and backward (fused fake-quant)", boolean)
    recompute_quantized: bool = _opt(
        True, "keep each fake-quantized weight and layer input for the backward as its recipe and "
        "recompute it there: less memory, the same gradients, a step a few percent slower (eager "
        "mode; --no-recompute-quantized keeps the values instead)", boolean,
        to=("config", "recompute_quantized"),
    )  # fmt: skip

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
            out[name] = option_spec(name).convert(raw, where(name))
        opts = cls(**out)
        opts.stage_epochs()  # checks the epoch split
        if opts.uniform_layers and opts.selection != "uniform":
            raise CliError(
                f"{where('uniform_layers')} needs --selection uniform, got {opts.selection!r} "
                "(global selection gives every layer its own count)"
            )
        if opts.selection != "uniform" and (opts.sparsity is None or opts.target_bops is not None):
            raise CliError(
                f"{where('selection')} {opts.selection} needs a fixed --sparsity without --target-bops "
                f"(got --sparsity {'none' if opts.sparsity is None else opts.sparsity}, --target-bops "
                f"{'none' if opts.target_bops is None else opts.target_bops}): under a budget the run "
                "chooses every layer's width itself"
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
            distill=self.distill if self.distill is not None else d.distill,
        )

    def stage_epochs(self) -> tuple[int, int, int, int]:
        """Epochs of (warm-up, projection, joint, cool-down) after splitting ``epochs``."""
        weights = defaults_for(self.model).stage_weights
        stages = split_epochs(self.epochs, self._given_stages(), weights)
        if self.sparsity is None and stages[2] == 0:
            raise CliError(
                "--sparsity none (each layer's width chosen under the budget) needs at least one joint "
                "(pruning) epoch; pass --joint 1 or more (or --epochs >= 1), or --sparsity 0 to only quantize"
            )
        if self.sparsity is not None and self.sparsity > 0 and stages[2] == 0:
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

    def arguments(self, target: Target) -> dict[str, Any]:
        """Keyword arguments of ``target`` (`geta.Config`, `geta.Schedule.from_epochs` or
        `geta.QASSO`) that the options set (`Option.to`).

        >>> None is CompressOptions().arguments("config")["target_sparsity"]  # chosen with the bits
        True
        >>> CompressOptions(optimizer="adamw").arguments("qasso")["variant"]
        'adamw'
        >>> "momentum" in CompressOptions(optimizer="adamw").arguments("qasso")
        False
        """
        out: dict[str, Any] = {}
        for f in fields(self):
            spec = option_spec(f.name)
            if spec.to is None or spec.to[0] != target or (spec.when is not None and not spec.when(self)):
                continue
            out[spec.to[1]] = getattr(self, f.name) if spec.value is None else spec.value(self)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists), as written to ``config.yaml`` and checkpoints."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def _given_stages(self) -> tuple[int | None, int | None, int | None, int | None]:
        return (self.warmup, self.projection, self.joint, self.cooldown)


def option_spec(name: str) -> Option:
    """The `Option` declared with field ``name`` of `CompressOptions`."""
    return _SPECS[name]


_SPECS: dict[str, Option] = {f.name: f.metadata["option"] for f in fields(CompressOptions)}


def default_text(name: str) -> str | None:
    """The default of option ``name`` as ``--help`` shows it, from the values the code applies.

    >>> default_text("weight_bits"), default_text("epochs"), default_text("joint")
    ('2,8', '30', '7')
    >>> default_text("optimizer"), default_text("dense_epochs")
    ('sgd; adamw for vit, llama, hf:DIR', '40; 1 for hf:DIR')
    >>> default_text("lr")
    'sgd 0.05, adam 0.001, adamw 0.001; vit, llama, hf:DIR: adamw 0.003'
    """
    shown = option_spec(name).shown
    if shown is not None:
        return shown if isinstance(shown, str) else shown()
    default = next(f.default for f in fields(CompressOptions) if f.name == name)
    if default is None:
        return None
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, tuple):
        return ",".join(str(v) for v in default)
    return f"{default:g}" if isinstance(default, float) else str(default)


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
