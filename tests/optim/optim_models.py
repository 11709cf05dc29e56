"""Tiny models with hand-built Plans for the QASSO tests (independent of `geta.prepare`).

- `mlp_plan`: 6 -> 8 -> 6 -> 3 with ReLUs; two prunable hidden groups (rows of fcN.weight and
  fcN.bias, columns of fc(N+1).weight) and the unprunable output group.
- `conv_plan`: conv(3->6) -> BN -> ReLU -> conv(6->4) -> ReLU -> flatten -> linear(16->5); the
  second group owns m = 4 columns of the linear layer per channel (a flattened 2x2 map), and
  the BN running mean is a buffer slice (never touched by the optimizer).

Weight quantizers on every layer (optional), input quantizers on every layer after the first
(optional, unsigned after ReLU), all initialised the way `geta.prepare` does.
"""

from __future__ import annotations

import torch
from torch import nn

from geta import Config
from geta.graph.prune_group import ParamSlice, PruneGroup
from geta.plan import Plan, QuantBinding, QuantTarget
from geta.quant.attach import attach_input_quantizer, attach_weight_quantizer
from geta.quant.quantizer import LearnableQuantizer


def _rows(n: int, m: int = 1) -> torch.Tensor:
    return torch.arange(n * m).reshape(n, m)


def _quantize(layers: dict[str, nn.Module], config: Config, example: torch.Tensor, model: nn.Module,
              *, weights: bool, inputs: bool) -> list[QuantBinding]:  # fmt: skip
    bindings: list[QuantBinding] = []
    if weights:
        for name, layer in layers.items():
            q = LearnableQuantizer(init_bits=config.init_bits)
            q.init_from(layer.weight.detach())
            w = attach_weight_quantizer(layer, "weight", q)
            bindings.append(QuantBinding(f"{name}.weight", q, layer, QuantTarget.WEIGHT, w))
    if inputs:
        seen: dict[nn.Module, float] = {}
        hooks = [
            layer.register_forward_pre_hook(lambda m, a: seen.__setitem__(m, float(a[0].abs().amax())))
            for layer in layers.values()
        ]
        with torch.no_grad():
            model(example)
        for h in hooks:
            h.remove()
        for i, (name, layer) in enumerate(layers.items()):
            q = LearnableQuantizer(signed=i == 0, init_bits=config.init_bits)
            q.init_from(torch.tensor(seen[layer]))
            attach_input_quantizer(layer, q)
            bindings.append(QuantBinding(f"{name}.input", q, layer, QuantTarget.INPUT, None))
    return bindings


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def mlp_plan(config: Config, *, weights: bool = True, inputs: bool = False, seed: int = 0) -> Plan:
    torch.manual_seed(seed)
    model = MLP()
    example = torch.randn(16, 6)
    w1, b1, w2, b2, w3, b3 = (p for p in model.parameters())  # identities before quantizing
    groups = [
        PruneGroup(0, 8, (ParamSlice(w1, "fc1.weight", 0, _rows(8)), ParamSlice(b1, "fc1.bias", 0, _rows(8)),
                          ParamSlice(w2, "fc2.weight", 1, _rows(8)))),
        PruneGroup(1, 6, (ParamSlice(w2, "fc2.weight", 0, _rows(6)), ParamSlice(b2, "fc2.bias", 0, _rows(6)),
                          ParamSlice(w3, "fc3.weight", 1, _rows(6)))),
        PruneGroup(2, 3, (ParamSlice(w3, "fc3.weight", 0, _rows(3)), ParamSlice(b3, "fc3.bias", 0, _rows(3))),
                   prunable=False, reason="feeds the model output"),
    ]  # fmt: skip
    layers = {"fc1": model.fc1, "fc2": model.fc2, "fc3": model.fc3}
    bindings = _quantize(layers, config, example, model, weights=weights, inputs=inputs)
    return Plan(model, config, None, groups, bindings, example_inputs=(example,))  # type: ignore[arg-type]


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, 3, 2, 2)
        h = torch.relu(self.bn(self.conv1(x)))  # (batch, 6, 2, 2)
        h = torch.relu(self.conv2(h))  # (batch, 4, 2, 2)
        return self.fc(h.flatten(1))  # (batch, 16) -> (batch, 5)


def conv_plan(config: Config, *, weights: bool = True, inputs: bool = False, seed: int = 0) -> Plan:
    torch.manual_seed(seed)
    model = ConvNet()
    model.bn.weight.data.uniform_(0.5, 1.5)
    example = torch.randn(8, 3, 2, 2)
    c1, c2, bn, fc = model.conv1, model.conv2, model.bn, model.fc
    groups = [
        PruneGroup(0, 6, (ParamSlice(c1.weight, "conv1.weight", 0, _rows(6)),
                          ParamSlice(c1.bias, "conv1.bias", 0, _rows(6)),
                          ParamSlice(bn.weight, "bn.weight", 0, _rows(6)),
                          ParamSlice(bn.bias, "bn.bias", 0, _rows(6)),
                          ParamSlice(bn.running_mean, "bn.running_mean", 0, _rows(6), is_param=False),
                          ParamSlice(c2.weight, "conv2.weight", 1, _rows(6)))),
        PruneGroup(1, 4, (ParamSlice(c2.weight, "conv2.weight", 0, _rows(4)),
                          ParamSlice(c2.bias, "conv2.bias", 0, _rows(4)),
                          ParamSlice(fc.weight, "fc.weight", 1, _rows(4, 4)))),
        PruneGroup(2, 5, (ParamSlice(fc.weight, "fc.weight", 0, _rows(5)),), prunable=False, reason="output"),
    ]  # fmt: skip
    layers = {"conv1": c1, "conv2": c2, "fc": fc}
    bindings = _quantize(layers, config, example, model, weights=weights, inputs=inputs)
    return Plan(model, config, None, groups, bindings, example_inputs=(example,))  # type: ignore[arg-type]


def batches(plan: Plan, n: int, *, seed: int = 1, batch: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` fixed random (input, label) batches shaped for the plan's model."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 6) if isinstance(plan.model, MLP) else (batch, 3, 2, 2)
    classes = 3 if isinstance(plan.model, MLP) else 5
    return [
        (torch.randn(shape, generator=g), torch.randint(0, classes, (batch,), generator=g)) for _ in range(n)
    ]


def train_step(plan: Plan, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """One ordinary training step: loss, zero_grad, backward, step."""
    loss = nn.functional.cross_entropy(plan.model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def make_trained(kind: str, config: Config | None = None, *, steps: int = 150) -> Plan:
    """A plan (weight quantizers only) whose model was first trained ``steps`` SGD steps on a
    fixed set of batches: the "trained model" that forgetting must handle gently."""
    config = config or Config(target_sparsity=0.5, weight_bits=(4, 8), init_bits=12)
    plan = (mlp_plan if kind == "mlp" else conv_plan)(config, weights=True, inputs=False)
    opt = torch.optim.SGD(plan.model.parameters(), lr=0.05, momentum=0.9)
    data = batches(plan, 8, seed=7)
    for s in range(steps):
        train_step(plan, opt, *data[s % len(data)])
    return plan
