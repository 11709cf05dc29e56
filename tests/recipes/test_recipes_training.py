"""The training loop of ``geta compress``: gradient-norm clipping (``--clip-norm``)."""

from __future__ import annotations

import torch

from geta.recipes import load_data, train_epoch


class _Recorder(torch.optim.SGD):
    """SGD that records the global gradient norm of its first group at every step."""

    def __init__(self, params: object, lr: float) -> None:
        super().__init__(params, lr=lr)  # type: ignore[arg-type]
        self.norms: list[float] = []

    def step(self, closure: object = None) -> None:  # type: ignore[override]
        grads = [p.grad for p in self.param_groups[0]["params"] if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        super().step()


def _norms(clip: float) -> list[float]:
    torch.manual_seed(0)
    data = load_data("digits")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    opt = _Recorder(model.parameters(), lr=0.5)
    train_epoch(model, data, opt, batch_size=256, seed=0, epoch=0, device=torch.device("cpu"), clip_norm=clip)
    return opt.norms


def test_clip_norm_bounds_the_gradient_norm_of_every_step() -> None:
    free, clipped = _norms(0.0), _norms(0.05)
    assert max(free) > 0.1  # the bound below is not met by chance
    assert all(n <= 0.05 + 1e-6 for n in clipped)
