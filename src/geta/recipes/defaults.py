"""`TrainingDefaults`: how ``geta compress`` trains a model when the user does not say.

A recipe carries its defaults; `geta.cli.options.CompressOptions` fills every option left
unset from them. Two families, each chosen by measurement (README, docs/cli.md):

- `CNN_DEFAULTS` (resnet, vgg, mlp and a user's ``module:factory``): SGD with Nesterov momentum,
  no norm clipping; tuned on the digits demo.
- `TRANSFORMER_DEFAULTS` (vit, llama and ``hf:DIR`` checkpoints): AdamW with decoupled weight
  decay and gradient-norm clipping, the setting transformers are trained with.

>>> TRANSFORMER_DEFAULTS.optimizer, CNN_DEFAULTS.optimizer
('adamw', 'sgd')
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrainingDefaults", "CNN_DEFAULTS", "TRANSFORMER_DEFAULTS", "HF_DEFAULTS"]


@dataclass(frozen=True)
class TrainingDefaults:
    """Per-recipe training settings (each one a ``geta compress`` option of the same name)."""

    optimizer: str  # "sgd", "adam" or "adamw", both phases
    dense_lr: float  # peak of the dense phase (one epoch of warm-up, then cosine)
    lr: float  # QASSO's weight lr (constant until the cool-down, then cosine)
    clip_norm: float  # global gradient-norm clip before every step, both phases (0: off)
    dense_epochs: int
    stage_weights: tuple[int, int, int, int]  # epochs of warm-up, projection, joint, cool-down; the
    # default --epochs is their sum, and a given --epochs is split in their ratio


CNN_DEFAULTS = TrainingDefaults(
    optimizer="sgd", dense_lr=0.1, lr=0.05, clip_norm=0.0, dense_epochs=40,
    stage_weights=(2, 3, 7, 18),
)  # fmt: skip
"""The digits demo's settings (docs/cli.md): SGD, momentum 0.9, no clipping."""

TRANSFORMER_DEFAULTS = TrainingDefaults(
    optimizer="adamw", dense_lr=3e-3, lr=1e-3, clip_norm=1.0, dense_epochs=40,
    stage_weights=(2, 3, 7, 18),
)  # fmt: skip
"""AdamW, gradient norms clipped at 1 (measured on the llama recipe, docs/cli.md)."""

HF_DEFAULTS = TrainingDefaults(
    optimizer="adamw", dense_lr=TRANSFORMER_DEFAULTS.dense_lr, lr=TRANSFORMER_DEFAULTS.lr,
    clip_norm=TRANSFORMER_DEFAULTS.clip_norm,
    dense_epochs=1, stage_weights=TRANSFORMER_DEFAULTS.stage_weights,
)  # fmt: skip
"""A checkpoint is already trained: one dense epoch adapts it to the data (the dense reference)."""
