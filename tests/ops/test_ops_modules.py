"""Module specs (`geta.ops.modules`): one registration teaches convert, load_packed and baked a new class.

``Gate`` is a convolution of the user's own that reads its width from a private attribute in
its forward (so the graph sees a constant, and a packed file does not record it). Its spec,
registered in this file only, says how to update that width (`geta.convert`,
`geta.export.load_packed`); ``Conv``'s spec says that it is a convolution, so that a BatchNorm
after it folds (`geta.export.baked`). The same classes without a spec are the controls: the
gate's output channels cannot be pruned, the BatchNorm after the plain conv is not folded.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import geta
from geta.errors import GetaError
from geta.ops.modules import Kind, ModuleSpec, is_kind, is_layer, register_module_spec, specs_for
from geta.testing import max_relative_error


class PlainGate(nn.Module):
    """A 3x3 convolution whose forward reshapes by ``self._width`` (a size kept in an attribute)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self._width = cin, cout, cout
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.3)
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.weight, self.bias, padding=1)
        b, _, h, w = y.shape
        return y.reshape(b, self._width, h * w).reshape(b, self._width, h, w)


class Gate(PlainGate):
    """The same module, with a spec."""


def _gate_width(mod: nn.Module) -> None:
    mod._width = mod.weight.shape[0]  # weight (out, in, 3, 3)


register_module_spec(ModuleSpec(Gate, kind=Kind.LAYER, fixer=_gate_width))


class Net(nn.Module):
    def __init__(self, gate: type[PlainGate]) -> None:
        super().__init__()
        self.gate, self.bn, self.head = gate(3, 8), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.gate(x))))


def _net(gate: type[PlainGate]) -> Net:
    """gate -> BatchNorm -> ReLU -> 1x1 conv, eval mode, with BatchNorm statistics of its own."""
    torch.manual_seed(0)
    model = Net(gate).eval()
    with torch.no_grad():  # statistics that make folding change the weights
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
    return model


def _gate_group(plan: geta.Plan, model: Net) -> geta.PruneGroup:
    return next(g for g in plan.groups if any(s.name.startswith("gate.") and s.dim == 0 for s in g.slices))


def _converted(gate: type[PlainGate]) -> tuple[Net, nn.Module, torch.Tensor]:
    """(model, converted model with 3 of the gate's 8 channels removed if prunable, input)."""
    model, x = _net(gate), torch.randn(2, 3, 6, 6)
    plan = geta.prepare(model, (x,), geta.Config(weight_bits=(2, 16)))
    group = _gate_group(plan, model)
    if group.prunable:
        group.zero_(torch.arange(3))
    return model, geta.convert(model, plan), x


def test_the_spec_is_read_by_type() -> None:
    assert is_layer(Gate(1, 1)) and is_kind(Conv(1, 1), Kind.CONV) and not is_kind(Gate(1, 1), Kind.CONV)
    assert not is_layer(PlainGate(1, 1)) and list(specs_for(PlainGate(1, 1))) == []
    with pytest.raises(GetaError, match="already registered"):
        register_module_spec(ModuleSpec(Gate))
    with pytest.raises(GetaError, match=r"cls must be an nn\.Module subclass"):
        register_module_spec(ModuleSpec(int))  # type: ignore[arg-type]


def test_convert_prunes_what_the_fixer_can_follow() -> None:
    model, small, x = _converted(Gate)
    assert small.gate.weight.shape[0] == 5 and small.gate._width == 5 and small.gate.out_channels == 5
    with torch.no_grad():
        assert max_relative_error(small(x), model(x)) < 1e-5  # the zeroed channels were the removed ones
    _, plain_small, _ = _converted(PlainGate)  # no fixer: the trial conversion freezes the channels
    assert plain_small.gate.weight.shape[0] == 8


def test_load_packed_runs_the_fixer(tmp_path) -> None:
    _, small, x = _converted(Gate)
    geta.export.packed(small, tmp_path / "m.geta")
    loaded = geta.export.load_packed(tmp_path / "m.geta", _net(Gate))  # a fresh, dense skeleton
    assert loaded.gate._width == 5  # private: not in the file, set by the spec's fixer
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), small.eval()(x))


class PlainConv(PlainGate):
    """A convolution module of the user's own: one conv op, nothing else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=1)


class Conv(PlainConv):
    """The same module, with a spec."""


register_module_spec(ModuleSpec(Conv, kind=Kind.CONV))


@pytest.mark.parametrize("conv, folds", [(Conv, True), (PlainConv, False)])
def test_baked_folds_a_batchnorm_into_a_conv_kind(conv: type[PlainConv], folds: bool) -> None:
    model, x = _net(conv), torch.randn(2, 3, 6, 6)  # folding needs the conv alone in its module
    plan = geta.prepare(model, (x,), geta.Config(weight_bits=(2, 16)))
    group = _gate_group(plan, model)
    group.zero_(torch.arange(3))
    small = geta.convert(model, plan).eval()
    fast = geta.export.baked(small, (x,), fold_batchnorm=True)
    assert isinstance(fast.bn, nn.Identity) is folds  # without a spec it is not known to be a conv
    with torch.no_grad():
        assert max_relative_error(fast(x), small(x)) < 1e-5
