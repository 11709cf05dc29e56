"""Hugging Face attention whose head count is an attribute: heads prune once a fixer updates it.

Found by the coverage run (docs/coverage.md): Whisper views k/v as ``(B, -1, self.num_heads,
head_dim)``, T5 builds cross-attention's zero position bias as ``zeros((1, self.n_heads, T,
S))`` and Phi-3 cuts its fused q|k|v rows at ``config.num_attention_heads * head_dim``. Their
heads were frozen by the trial conversion (Whisper, Phi-3) or by the created tensor (T5); now
each has a module fixer (`geta.ops.hf`), the heads are prune groups and convert equals the
zeroed model.
"""

from __future__ import annotations

import importlib
import pathlib
import sys
from types import ModuleType

import pytest
import torch

import geta
from geta.testing import max_relative_error, model_outputs, zero_random_groups

pytest.importorskip("transformers")

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _families() -> ModuleType:
    """bench.coverage_hf: the tiny HF configs of the coverage run (the repository root on the path)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("bench.coverage_hf")


HEAD_DIM = 8  # every tiny family: hidden 32 over 4 heads


def _head_groups(plan: geta.Plan, projection: str) -> list[geta.PruneGroup]:
    """Groups whose units are whole heads (head_dim rows or more) of the named projection."""
    return [
        g
        for g in plan.groups
        if any(
            s.name.endswith(f"{projection}.weight") and s.dim == 0 and s.index.shape[1] >= HEAD_DIM
            for s in g.slices
        )
    ]


@pytest.mark.parametrize(
    "family,projection,count",
    [
        ("whisper", "q_proj", 6),  # 2 encoder self, 2 decoder self, 2 decoder cross attentions
        ("phi3", "qkv_proj", 2),  # the key/value heads (each with its 2 query heads) of 2 layers
        ("t5", "EncDecAttention.q", 1),  # both layers share the position bias: one head space
    ],
)
def test_heads_are_prunable_and_convert_exactly(family: str, projection: str, count: int) -> None:
    torch.manual_seed(0)
    model, inputs = _families().FAMILIES[family]()
    plan = geta.prepare(model, inputs, geta.Config(act_bits=(4, 8)))
    heads = [g for g in _head_groups(plan, projection) if g.prunable]
    assert len(heads) == count, [g.reason for g in _head_groups(plan, projection)]
    for g in heads:  # half the heads of every head group, nothing else
        g.zero_(torch.arange(g.size // 2))
    ref = model_outputs(model, inputs)
    small = geta.convert(model, plan)
    assert max_relative_error(model_outputs(small, inputs), ref) <= 1e-4
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_phi3_pruned_heads_leave_the_model_config_alone() -> None:
    torch.manual_seed(0)
    model, inputs = _families().FAMILIES["phi3"]()
    plan = geta.prepare(model, inputs)
    zero_random_groups(plan, fraction=0.5, seed=0)
    small = geta.convert(model, plan)
    attn = small.model.layers[0].self_attn
    assert attn.config is not small.config
    assert small.config.num_attention_heads == 4
    assert attn.config.num_attention_heads * attn.head_dim == attn.o_proj.in_features
