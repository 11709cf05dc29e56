"""timm attention: heads prune once a fixer updates the head count the module reshapes by.

Found by the coverage run: timm's ViT/DeiT ``Attention`` reshapes by ``self.num_heads`` and
``self.attn_dim``, Swin's ``WindowAttention`` by ``self.num_heads``; the trial conversion froze
their heads (prunable share 65 % on ViT-Tiny). With the fixers of `geta.ops.timm` the heads are
prune groups and convert equals the zeroed model. Runs where timm is installed (``make zoo``'s
venv); skipped elsewhere.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import geta
from geta.testing import max_relative_error, model_outputs

timm = pytest.importorskip("timm")

CASES = [
    ("vit_tiny_patch16_224", {"img_size": 32, "depth": 2}, 32),
    ("swin_tiny_patch4_window7_224", {"img_size": 56, "depths": (1, 1), "num_heads": (3, 6)}, 56),
]


@pytest.mark.parametrize("name,kwargs,size", CASES)
def test_heads_are_prunable_and_convert_exactly(name: str, kwargs: dict[str, Any], size: int) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    inputs = (torch.randn(1, 3, size, size),)
    plan = geta.prepare(model, inputs, geta.Config(act_bits=(4, 8)))
    heads = [  # units of head_dim (>= 8) columns of the output projection: whole heads
        g
        for g in plan.groups
        if any(s.name.endswith("attn.proj.weight") and s.dim == 1 and s.index.shape[1] >= 8 for s in g.slices)
    ]
    assert heads and all(g.prunable for g in heads), [g.reason for g in heads]
    for g in heads:
        g.zero_(torch.arange(g.size // 2))
    ref = model_outputs(model, inputs)
    small = geta.convert(model, plan)
    assert max_relative_error(model_outputs(small, inputs), ref) <= 1e-4
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
