"""`geta.recalibrate_norms`: fresh running statistics, nothing else touched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import geta
from geta.norm_stats import running_norms


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip


def _batches(n: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 3, 6, 6, generator=g) * 2 + 1 for _ in range(n)]


def _stale(model: nn.Module) -> None:
    """Running statistics far from any the batches give."""
    for m in running_norms(model):
        m.running_mean.fill_(7.0)
        m.running_var.fill_(0.01)
        m.num_batches_tracked.fill_(123)


def test_statistics_are_the_mean_of_batch_means_and_unbiased_variances() -> None:
    model, batches = _cnn(), _batches(6)
    _stale(model)
    used = geta.recalibrate_norms(model, iter(batches), max_batches=4)
    assert used == 4
    # slow reference: feed the batches through with each BN normalising by its batch statistics
    ref = copy.deepcopy(model).eval()
    bn1, bn2 = ref[1], ref[5]
    means = {id(bn1): [], id(bn2): []}
    variances = {id(bn1): [], id(bn2): []}

    def record(m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].double()
        means[id(m)].append(x.mean((0, 2, 3)))
        variances[id(m)].append(x.var((0, 2, 3), unbiased=True))

    for bn in (bn1, bn2):
        bn.register_forward_pre_hook(record)
        bn.train()  # normalise with the batch's statistics, as during the pass
    with torch.no_grad():
        for x in batches[:4]:
            ref(x)
    for bn_model, bn_ref in ((model[1], bn1), (model[5], bn2)):
        mean = torch.stack(means[id(bn_ref)]).mean(0).float()
        var = torch.stack(variances[id(bn_ref)]).mean(0).float()
        torch.testing.assert_close(bn_model.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn_model.running_var, var, rtol=1e-5, atol=1e-6)
        assert int(bn_model.num_batches_tracked) == 4
        assert bn_model.momentum == 0.1  # restored


def test_weights_modes_rng_and_gradients_are_untouched() -> None:
    model = _cnn()
    model.train()
    model[3].eval()  # a mixed state must come back as it was
    model[9].weight.grad = torch.ones_like(model[9].weight)
    before = {k: v.clone() for k, v in model.named_parameters()}
    modes = {name: m.training for name, m in model.named_modules()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(_batches(1)[0]).sum().backward()
    opt.step()
    opt_state = copy.deepcopy(opt.state_dict())
    weights = {k: v.clone() for k, v in model.named_parameters()}
    grads = {k: v.grad.clone() for k, v in model.named_parameters()}
    assert before.keys() == weights.keys()
    rng = torch.get_rng_state()
    seen_training = []
    model[3].register_forward_pre_hook(lambda m, a: seen_training.append(m.training))
    model[3].p = 0.5
    geta.recalibrate_norms(model, _batches(3))
    assert seen_training == [False] * 3  # dropout ran in eval mode
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in model.named_parameters():
        assert torch.equal(v, weights[k]) and torch.equal(v.grad, grads[k])
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert str(opt.state_dict()) == str(opt_state)


def test_rng_restored_even_when_the_forward_draws_random_numbers() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    model[0].register_forward_pre_hook(lambda m, a: [torch.rand(3)] and None)  # a model that samples
    batch = torch.randn(8, 4)
    rng = torch.get_rng_state()
    geta.recalibrate_norms(model, [batch])
    assert torch.equal(torch.get_rng_state(), rng)


def test_quantizer_scalars_of_a_prepared_model_are_untouched() -> None:
    model = _cnn().eval()
    config = geta.Config(target_sparsity=0.5, weight_bits=(4, 8))
    plan = geta.prepare(model, (torch.randn(2, 3, 6, 6),), config)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert geta.recalibrate_norms(model, _batches(2)) == 2
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, state[k])}
    assert changed and all(k.rsplit(".", 1)[-1] in {"running_mean", "running_var", "num_batches_tracked"}
                           for k in changed)  # fmt: skip
    assert plan.quantizers  # the plan did attach quantizers (their scalars are in the state dict)


def test_a_model_without_running_statistics_is_a_no_op() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.GroupNorm(2, 8), nn.InstanceNorm1d(8))
    state = copy.deepcopy(model.state_dict())

    def never() -> object:
        raise AssertionError("a model without running statistics must not read a batch")
        yield

    assert geta.recalibrate_norms(model, never()) == 0
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_only_the_first_max_batches_are_read_and_an_empty_source_keeps_the_old_statistics() -> None:
    model = _cnn()
    read = []

    def source() -> object:
        for i, x in enumerate(_batches(10)):
            read.append(i)
            yield x

    assert geta.recalibrate_norms(model, source(), max_batches=3) == 3
    assert read == [0, 1, 2]
    _stale(model)
    assert geta.recalibrate_norms(model, []) == 0
    assert float(model[1].running_mean[0]) == 7.0 and int(model[1].num_batches_tracked) == 123


def test_a_failing_forward_keeps_the_old_statistics_and_modes() -> None:
    model = _cnn()
    _stale(model)
    with pytest.raises(RuntimeError):
        geta.recalibrate_norms(model, [_batches(1)[0], torch.randn(2, 5, 6, 6)])  # wrong channels
    assert float(model[5].running_var[0]) == pytest.approx(0.01) and model[1].momentum == 0.1
    assert model.training and all(m.training for m in model.modules())


def test_inputs_as_tuples_and_mappings() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.bn(a + b)

    model, a, b = Two(), torch.randn(6, 3), torch.randn(6, 3)
    geta.recalibrate_norms(model, [(a, b)])
    first = model.bn.running_mean.clone()
    geta.recalibrate_norms(model, [{"a": a, "b": b}])
    torch.testing.assert_close(model.bn.running_mean, first)
    torch.testing.assert_close(first, (a + b).mean(0))
    with pytest.raises(TypeError, match="batches"):
        geta.recalibrate_norms(model, [3])


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_max_batches_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ValueError, match="max_batches"):
        geta.recalibrate_norms(_cnn(), _batches(1), max_batches=bad)  # type: ignore[arg-type]
