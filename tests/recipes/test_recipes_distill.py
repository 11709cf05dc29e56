"""Distillation from the dense model (``geta compress --distill``) against a slow reference."""

from __future__ import annotations

import math

import torch

from geta.recipes.training import distillation_loss


def slow_kl(student: list[list[float]], teacher: list[list[float]], temperature: float) -> float:
    """T² · mean over rows of Σ_c p_t(c) · log(p_t(c) / p_s(c)), softmax at temperature T."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        zs = [math.exp(v / temperature) for v in s_row]
        zt = [math.exp(v / temperature) for v in t_row]
        ps = [v / sum(zs) for v in zs]
        pt = [v / sum(zt) for v in zt]
        total += sum(a * math.log(a / b) for a, b in zip(pt, ps))
    return temperature**2 * total / len(student)


def test_distillation_loss_matches_the_definition() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = (
        torch.randn(5, 7, generator=g, dtype=torch.float64),
        torch.randn(5, 7, generator=g, dtype=torch.float64),
    )
    for temperature in (1.0, 2.0, 4.0):
        got = float(distillation_loss(s, t, temperature))
        assert math.isclose(got, slow_kl(s.tolist(), t.tolist(), temperature), rel_tol=1e-9)
    assert float(distillation_loss(t, t)) == 0.0


def test_distillation_pulls_the_student_towards_the_teacher_only() -> None:
    s = torch.randn(3, 2, 4, requires_grad=True)  # (batch, tokens, vocab): LM logits work too
    t = torch.randn(3, 2, 4, requires_grad=True)
    distillation_loss(s, t).backward()
    assert t.grad is None  # the teacher is a constant
    with torch.no_grad():
        stepped = s - 0.1 * s.grad
    assert float(distillation_loss(stepped, t)) < float(distillation_loss(s, t))
