"""QASSO under transformers' Trainer and learning-rate schedulers: both param groups, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import geta
from geta.recipes import load_data
from geta.recipes.schedules import qasso_scheduler, stage_lr_factor
from geta.recipes.tokens import tokenizer_encoder

STEPS_PER_EPOCH = 4


def _qasso(seed: int = 0) -> tuple[torch.nn.Module, geta.Plan, geta.QASSO]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    plan = geta.prepare(model, (torch.randn(4, 6),), geta.Config(target_sparsity=0.5, weight_bits=(4, 8)))
    schedule = geta.Schedule.from_epochs(
        steps_per_epoch=STEPS_PER_EPOCH, warmup=1, projection=1, joint=1, cooldown=1
    )
    return model, plan, geta.QASSO(plan, lr=0.1, lr_quant=1e-3, schedule=schedule)


def _run(model: torch.nn.Module, opt: geta.QASSO, scheduler: Any) -> list[tuple[float, float]]:
    """(weights lr, quantizers lr) in force at every step of the schedule."""
    seen = []
    for _ in range(opt.schedule.total):
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
        loss = model(torch.randn(8, 6)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        scheduler.step()
    return seen


def test_a_single_factor_scheduler_scales_lr_quant_like_lr() -> None:
    transformers = pytest.importorskip("transformers")
    model, _, opt = _qasso()
    total = opt.schedule.total
    seen = _run(model, opt, transformers.get_linear_schedule_with_warmup(opt, 2, total))
    factor = [w / 0.1 for w, _ in seen]
    assert factor[0] == 0.0 and factor[2] == 1.0 and factor[-1] == pytest.approx(1 / (total - 2))
    assert [q for _, q in seen] == pytest.approx([1e-3 * f for f in factor])  # group 1 follows group 0


def test_qasso_scheduler_follows_the_stages_and_keeps_lr_quant() -> None:
    model, plan, opt = _qasso()
    seen = _run(model, opt, qasso_scheduler(opt))
    s = opt.schedule
    expected = [0.1 * stage_lr_factor(s, i) for i in range(s.total)]
    assert [w for w, _ in seen] == pytest.approx(expected)
    assert {q for _, q in seen} == {1e-3}  # the quantizers' own rate, every step
    assert all(
        w == pytest.approx(0.1) for w, _ in seen[s.warmup : s.cooldown_start]
    )  # constant while pruning
    assert plan.group_sparsity() == 0.5
    model2, _, opt2 = _qasso()
    follows = _run(model2, opt2, qasso_scheduler(opt2, quant_follows=True))
    assert [q for _, q in follows] == pytest.approx([w / 100 for w, _ in follows])
    with pytest.raises(TypeError, match=r"needs a geta\.QASSO"):
        qasso_scheduler(torch.optim.SGD(model.parameters(), lr=0.1))


def _trainer_run(out: Path, tokenizer: Any, *, resume: str | None = None, save_steps: int = 0) -> Any:
    from transformers import LlamaForCausalLM, Trainer, TrainingArguments

    from geta.recipes.tiny import tiny_config

    data = load_data("text", encoder=tokenizer_encoder(tokenizer), seq_len=16)
    train = [{"input_ids": x, "labels": x} for x in data.x_train[: 8 * STEPS_PER_EPOCH]]
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config("llama", len(tokenizer), use_cache=False))
    config = geta.Config(target_sparsity=0.5, weight_bits=(4, 8), act_bits=(4, 8))
    plan = geta.prepare(model, {"input_ids": data.x_train[:4]}, config)
    schedule = geta.Schedule.from_epochs(
        steps_per_epoch=STEPS_PER_EPOCH, warmup=1, projection=1, joint=1, cooldown=1
    )
    opt = geta.QASSO(plan, lr=3e-3, lr_quant=1e-3, variant="adamw", schedule=schedule)
    save = {"save_strategy": "steps", "save_steps": save_steps} if save_steps else {"save_strategy": "no"}
    args = TrainingArguments(
        output_dir=str(out), max_steps=schedule.total, per_device_train_batch_size=8, use_cpu=True,
        report_to="none", logging_strategy="no", disable_tqdm=True, seed=0, **save,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=train, optimizers=(opt, qasso_scheduler(opt)))
    trainer.train(resume_from_checkpoint=resume)
    return model, plan, opt


def test_trainer_checkpoint_resumes_qasso_exactly(tmp_path: Path, bpe_tokenizer: Any) -> None:
    pytest.importorskip("accelerate")
    model, plan, opt = _trainer_run(tmp_path, bpe_tokenizer, save_steps=6)
    assert opt.step_count == opt.schedule.total and plan.group_sparsity() == 0.5
    assert opt.param_groups[1]["lr"] == 1e-3
    # a second Trainer resumes from the checkpoint in the joint stage: QASSO's run state travels
    # in the optimizer's state_dict (optimizer.pt) and the run ends with the same weights
    again, _, opt2 = _trainer_run(tmp_path / "x", bpe_tokenizer, resume=str(tmp_path / "checkpoint-12"))
    assert opt2.step_count == opt.step_count
    ref = model.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in again.state_dict().items())
    # a checkpoint-N/ folder is a training state, not a model: plain Auto loading refuses it by name
    from transformers import AutoModelForCausalLM

    from geta.savehook import TRAINING_CHECKPOINT

    with pytest.raises(ValueError, match=TRAINING_CHECKPOINT):
        AutoModelForCausalLM.from_pretrained(str(tmp_path / "checkpoint-12"))
