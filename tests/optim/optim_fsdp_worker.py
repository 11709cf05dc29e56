"""One rank of the 2-process FSDP2 test (`test_optim_fsdp.py`), plus the single-process reference.

A tiny Llama (hidden 32, 2 layers, vocab 64), weights-only quantization. `train` runs the same
steps on a plain plan (the reference, one process, the whole batch) or on a plan sharded with
`geta.shard` (each rank: its part of the batch, or the whole batch with ``same_data``).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

import geta
from geta.optim import QASSO, Schedule

SCHEDULE = Schedule(warmup=1, projection=2, joint=4, cooldown=2, projection_periods=2, pruning_periods=2)
BATCH, SEQ, VOCAB = 4, 8, 64


def build() -> tuple[torch.nn.Module, geta.Plan]:
    """The same prepared tiny Llama in every process (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4 * SEQ,
        use_cache=False, tie_word_embeddings=False, attn_implementation="eager",
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    example = {"input_ids": torch.randint(0, VOCAB, (2, SEQ))}
    plan = geta.prepare(model, example, geta.Config(target_sparsity=0.5, weight_bits=(4, 8), init_bits=10))
    return model, plan


def optimizer(plan: geta.Plan, bits: str) -> QASSO:
    return QASSO(plan, lr=0.05, lr_quant=1e-3, momentum=0.9, schedule=SCHEDULE, grad_clip=1.0, bits=bits)


def train(model: torch.nn.Module, plan: geta.Plan, bits: str, part: slice) -> QASSO:
    """Every stage of SCHEDULE; each step's loss on rows ``part`` of that step's batch."""
    opt = optimizer(plan, bits)
    g = torch.Generator().manual_seed(7)
    for _ in range(SCHEDULE.total):
        ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)[part]
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


def run(rank: int, world: int, port: int, out_dir: str, bits: str, same_data: bool) -> None:
    """Shard the tiny Llama (each decoder layer, then the root), train, save the gathered state."""
    torch.set_num_threads(1)
    model, plan = build()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        geta.shard(plan, [*model.model.layers, model])
        rows = BATCH // world
        part = slice(None) if same_data else slice(rank * rows, (rank + 1) * rows)
        opt = train(model, plan, bits, part)
        full = geta.full_state_dict(model)  # a collective: every rank
        state = {
            "full": full,
            "committed": opt.committed,
            "bits": opt.frozen_bits,
        }
        torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
