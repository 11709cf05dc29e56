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
    distill: float = 0.0  # weight of distillation from the dense model in the compression phase (0: off)


CNN_DEFAULTS = TrainingDefaults(
    optimizer="sgd", dense_lr=0.1, lr=0.05, clip_norm=0.0, dense_epochs=40,
    stage_weights=(2, 3, 7, 18),
)  # fmt: skip
"""The digits demo's settings (docs/cli.md): SGD, momentum 0.9, no clipping."""

TRANSFORMER_DEFAULTS = TrainingDefaults(
    optimizer="adamw", dense_lr=3e-3, lr=3e-3, clip_norm=1.0, dense_epochs=40,
    stage_weights=(2, 3, 7, 18),
)  # fmt: skip
"""AdamW at 3e-3 in both phases, gradient norms clipped at 1, the CNNs' stage split.

Chosen on the llama recipe (byte-level stdlib text, 4 dense + 8 compression epochs, 60 %
sparsity, seeds 0 and 1; docs/cli.md has the table): against SGD (0.1 / 0.05) the compressed
perplexity drops from 17.1 to 11.6; 3e-3 beats 1e-3 and 1e-2 for QASSO; the clip at 1 lowers the
mean compressed perplexity over two seeds from 12.6 to 11.7; a split with a longer joint stage
(1, 1, 3, 3 instead of 1, 1, 2, 4) was worse (11.8 against 11.6). On the vit recipe (digits) it
also beats SGD: 92.8 % against 85.5 % compressed accuracy.
"""

HF_DEFAULTS = TrainingDefaults(
    optimizer="adamw", dense_lr=1e-4, lr=TRANSFORMER_DEFAULTS.lr, clip_norm=TRANSFORMER_DEFAULTS.clip_norm,
    dense_epochs=1, stage_weights=TRANSFORMER_DEFAULTS.stage_weights, distill=1.0,
)  # fmt: skip
"""A checkpoint is already trained: one gentle dense epoch (1e-4) adapts it to the data (the dense
reference), then QASSO at 3e-3 with distillation from that dense model (weight 1).

Chosen on the compression benchmark's pretrained-LM task (`bench.lm_defaults`; docs/benchmarks.md,
"Pretrained LM: choosing hf:DIR's defaults"): a model pretrained to convergence, compressed on a
calibration split of 8 % of its tokens, scored on held-out modules. Float fine-tuning on that
split loses held-out perplexity the faster the higher its rate (6.57 dense; 6.62 at 1e-4, 11.56
at 3e-3), so the dense epoch runs at 1e-4; compression instead needs the higher rate to recover
from pruning and quantization (held-out 8.58 at 3e-3 against 9.64 at 1e-3 and 10.86 at 3e-4,
with distillation), and distillation helps at 3e-3 (8.58 against 9.66 without).
"""
