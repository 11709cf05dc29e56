"""One rank of the 2-process DDP test (`test_optim_ddp.py`); importable by spawned children."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from optim_models import conv_plan
from torch.nn.parallel import DistributedDataParallel

from geta import Config
from geta.optim import QASSO, Schedule

SCHEDULE = Schedule(warmup=1, projection=3, joint=6, cooldown=2, projection_periods=3, pruning_periods=3)


def run(rank: int, world: int, port: int, out_dir: str) -> None:
    """Train the conv plan through every stage under DDP; save parameters and selections."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        config = Config(target_sparsity=0.5, weight_bits=(4, 8), act_bits=(4, 8), init_bits=12)
        plan = conv_plan(config, weights=True, inputs=True, seed=rank)  # ranks start apart: DDP syncs
        model = DistributedDataParallel(plan.model)
        opt = QASSO(plan, lr=0.05, lr_quant=1e-3, momentum=0.9, schedule=SCHEDULE, grad_clip=1.0)
        g = torch.Generator().manual_seed(100 + rank)  # every rank sees its own data
        for _ in range(SCHEDULE.total + 1):
            x, y = torch.randn(8, 3, 2, 2, generator=g), torch.randint(0, 5, (8,), generator=g)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        state = {
            "params": {n: p.detach().clone() for n, p in plan.model.named_parameters()},
            "committed": opt.committed,
            "zero_groups": [g.is_zero() for g in plan.prunable_groups],
            "bits": [b.quantizer.bit_width for b in plan.bindings],
        }
        torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
