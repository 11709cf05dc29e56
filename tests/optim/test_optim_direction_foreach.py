"""The foreach directions QASSO uses are the per-tensor ones (docs/method.md §3.1) bit for bit."""

from __future__ import annotations

import pytest
import torch

from geta.optim.direction import adam_direction, adam_directions, sgd_direction, sgd_directions

SHAPES = [(5, 3), (7,), (), (2, 3, 4)]


def tensors(device: torch.device, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(device) for s in SHAPES]


OPTIONS = [
    ("sgd", dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0)),
    ("sgd", dict(momentum=0.9, dampening=0.1, nesterov=False, weight_decay=1e-2)),
    ("sgd", dict(momentum=0.9, dampening=0.0, nesterov=True, weight_decay=0.0)),
    ("adam", dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, decoupled=False)),
    ("adam", dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2, decoupled=True)),
]


@pytest.mark.parametrize("kind,options", OPTIONS)
def test_foreach_directions_equal_per_tensor_bit_for_bit(
    kind: str, options: dict, device: torch.device
) -> None:
    one, many = (sgd_direction, sgd_directions) if kind == "sgd" else (adam_direction, adam_directions)
    params = tensors(device, 0)
    states_a: list[dict] = [{} for _ in params]
    states_b: list[dict] = [{} for _ in params]
    for step in range(4):
        grads = tensors(device, step + 1)
        # tensor 1 has no gradient at step 1: it then lags one step (own Adam bias correction)
        keep = [i for i in range(len(params)) if not (step == 1 and i == 1)]
        want = [one(params[i], grads[i], states_a[i], **options).clone() for i in keep]
        got = many(
            [params[i] for i in keep], [grads[i] for i in keep], [states_b[i] for i in keep], **options
        )
        assert [torch.equal(a, b) for a, b in zip(got, want)] == [True] * len(keep)
        for a, b in zip(states_a, states_b):
            assert a.keys() == b.keys()
            for key in a:
                assert (a[key] == b[key]) if key == "step" else torch.equal(a[key], b[key])
