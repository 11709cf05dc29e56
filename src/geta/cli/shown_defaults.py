"""The defaults ``geta compress --help`` shows, computed from the values the code applies.

A default that depends on the model (the CNN recipes, the transformer recipes, ``hf:DIR``) is
shown per kind of model, from `geta.recipes.TrainingDefaults`; the learning rates also per
optimizer (`DEFAULT_LR`). `geta.cli.options` attaches these to its options' ``shown``.
"""

from __future__ import annotations

from collections.abc import Callable

from geta.recipes import TrainingDefaults
from geta.recipes.defaults import CNN_DEFAULTS, HF_DEFAULTS, TRANSFORMER_DEFAULTS

__all__ = ["DEFAULT_LR", "by_model", "learning_rate"]

DEFAULT_LR = {"sgd": (0.1, 0.05), "adam": (1e-3, 1e-3), "adamw": (1e-3, 1e-3)}  # (dense, QASSO)
# (a recipe's own optimizer brings its own rates, `geta.recipes.TrainingDefaults`; these apply
# when --optimizer picks another one)


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


def by_model(name: str, *, hf_only: bool = False) -> Callable[[], str]:
    """The default of a `TrainingDefaults` field per kind of model (``hf_only``: CNN and hf:DIR)."""

    def shown() -> str:
        values = _transformer_value(name)
        if hf_only:
            values = {"cnn": values["cnn"], **{k: v for k, v in values.items() if k == "hf:DIR"}}
        return _per_model(values)

    return shown


def learning_rate(side: int) -> Callable[[], str]:
    """Default dense (``side`` 0) or QASSO (1) learning rate of each optimizer, the transformer
    recipes and ``hf:DIR`` (named apart when its rate differs)."""

    def shown() -> str:
        own = ", ".join(f"{opt} {lrs[side]:g}" for opt, lrs in DEFAULT_LR.items())
        t, h = TRANSFORMER_DEFAULTS, HF_DEFAULTS
        rate, hf_rate = (t.dense_lr, t.lr)[side], (h.dense_lr, h.lr)[side]
        if rate == hf_rate:
            return f"{own}; vit, llama, hf:DIR: {t.optimizer} {rate:g}"
        return f"{own}; vit, llama: {t.optimizer} {rate:g}; hf:DIR: {h.optimizer} {hf_rate:g}"

    return shown
