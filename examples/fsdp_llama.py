"""QASSO on a tiny Llama sharded with FSDP2 -- NEEDS torchrun (one process per rank):

    torchrun --nproc_per_node=2 examples/fsdp_llama.py            # CPU, gloo
    torchrun --nproc_per_node=8 examples/fsdp_llama.py --backend nccl

Every rank prepares the same model (seeded), `geta.shard` applies ``fully_shard`` to each decoder
layer and then the root and rebinds the plan, QASSO trains on the local shards (each rank its own
part of every batch), and rank 0 converts the gathered model. See docs/distributed.md.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

import geta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()

    dist.init_process_group(args.backend)  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)  # the same initial model on every rank
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        use_cache=False, tie_word_embeddings=False, attn_implementation="eager",
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    if args.backend == "nccl":
        model = model.cuda()
    example = {"input_ids": torch.randint(0, 64, (2, 8), device=model.device)}
    config = geta.Config(target_sparsity=0.5, weight_bits=(4, 8), init_bits=10)
    plan = geta.prepare(model, example, config)  # before sharding: capture needs the plain model

    geta.shard(plan, [*model.model.layers, model])  # bottom-up; the quantizers stay replicated

    q = max(1, args.steps // 6)
    schedule = geta.Schedule(warmup=q, projection=q, joint=2 * q, cooldown=args.steps - 4 * q)
    opt = geta.QASSO(plan, lr=0.05, lr_quant=1e-3, momentum=0.9, schedule=schedule, grad_clip=1.0)
    g = torch.Generator().manual_seed(1000 + rank)  # each rank its own data
    for step in range(schedule.total):
        ids = torch.randint(0, 64, (4, 8), generator=g).to(model.device)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rank == 0 and step % 4 == 0:
            print(f"step {step} {opt.stage.value:10s} loss {loss.item():.3f}")

    full = geta.full_state_dict(model)  # a collective: every rank
    if rank == 0:  # convert a plain copy: prepared the same way, loaded with the gathered weights
        torch.manual_seed(0)
        plain = LlamaForCausalLM(cfg)
        plain_plan = geta.prepare(plain, {"input_ids": example["input_ids"].cpu()}, config)
        plain.load_state_dict(full)
        small = geta.convert(plain, plain_plan)
        kept = sum(p.numel() for p in small.parameters())
        print(f"{world} ranks: sparsity {plain_plan.group_sparsity():.2f}, {kept} parameters after convert")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
