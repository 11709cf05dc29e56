"""QASSO as the optimizer of transformers' `Trainer`, offline, in seconds on a CPU.

A random 2-layer Llama and a BPE tokenizer trained on the spot on standard-library source stand
in for a downloaded checkpoint; everything else is what you would write for a real one:

1. tokenize text into blocks of 32 tokens (``labels`` = ``input_ids``: the model shifts them);
2. ``geta.prepare`` the model with a dict of keyword inputs;
3. build ``geta.QASSO`` with a `geta.Schedule` counted in Trainer steps, and a learning-rate
   scheduler that knows QASSO's two parameter groups (`geta.recipes.schedules.qasso_scheduler`:
   the weights warm up, stay constant through the pruning stage and decay in the cool-down;
   ``lr_quant`` stays where it was set -- ``get_linear_schedule_with_warmup`` would scale it
   like the weights, see that module);
4. ``Trainer(model, args, train_dataset=..., optimizers=(opt, scheduler))`` and ``train()``;
5. ``geta.convert``: the compressed model computes what the trained, zeroed model computes.

Run: ``python examples/hf_trainer.py`` inside the venv (needs transformers and accelerate).
"""

from __future__ import annotations

import tempfile

import torch
from transformers import LlamaForCausalLM, Trainer, TrainingArguments

import geta
from geta.recipes import load_data
from geta.recipes.schedules import qasso_scheduler
from geta.recipes.tiny import tiny_config, train_tokenizer
from geta.recipes.tokens import tokenizer_encoder

BATCH, SEQ_LEN = 16, 32


def main() -> None:
    torch.manual_seed(0)
    tokenizer = train_tokenizer(vocab_size=384)  # a stand-in for AutoTokenizer.from_pretrained(DIR)
    model = LlamaForCausalLM(tiny_config("llama", len(tokenizer), use_cache=False))
    data = load_data("text", encoder=tokenizer_encoder(tokenizer), seq_len=SEQ_LEN)  # stdlib source
    train = [{"input_ids": x, "labels": x} for x in data.x_train[:160]]  # 10 steps an epoch
    # the model shifts the labels itself: position t is scored on the token at t + 1

    config = geta.Config(target_sparsity=0.5, weight_bits=(4, 8), act_bits=(4, 8))
    plan = geta.prepare(model, {"input_ids": data.x_train[:8]}, config)
    steps_per_epoch = len(train) // BATCH
    schedule = geta.Schedule.from_epochs(
        steps_per_epoch=steps_per_epoch, warmup=1, projection=1, joint=1, cooldown=1
    )
    opt = geta.QASSO(plan, lr=3e-3, lr_quant=1e-3, variant="adamw", schedule=schedule)
    scheduler = qasso_scheduler(opt)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, max_steps=schedule.total, per_device_train_batch_size=BATCH,
            use_cpu=True, report_to="none", save_strategy="no", logging_strategy="no",
            disable_tqdm=True, max_grad_norm=1.0, dataloader_drop_last=True, seed=0,
        )  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=train, optimizers=(opt, scheduler))
        result = trainer.train()

    print(f"trainer steps: {result.global_step} (schedule {schedule.total}), final stage: {opt.stage.value}")
    print(f"train loss: {result.training_loss:.3f}")
    print(f"group sparsity {plan.group_sparsity():.2f}")
    print(
        f"lr at the end: weights {opt.param_groups[0]['lr']:.2e}, quantizers {opt.param_groups[1]['lr']:.2e}"
    )

    model.eval()
    small = geta.convert(model, plan).eval()
    ids = data.x_test[:4]
    with torch.no_grad():
        diff = (small(input_ids=ids).logits - model(input_ids=ids).logits).abs().max().item()
    dense = sum(p.numel() for p in model.parameters())
    print(f"parameters: {dense:,} -> {sum(p.numel() for p in small.parameters()):,}")
    print(f"max |compressed - trained| logits: {diff:.2e}")


if __name__ == "__main__":
    main()
