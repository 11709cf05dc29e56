"""ONNX at any shape: symbolic batch and sequence axes, nothing written on a failed check, and
every quantized convolution on an integer kernel in onnxruntime (residual adds included)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import geta
from geta.export import ExportError, check_parity, onnx
from geta.export.interface import dynamic_dims, resized
from geta.testing import zero_random_groups, zoo

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _set_bits(plan: geta.Plan, bits: int) -> None:
    with torch.no_grad():
        for q in plan.quantizers.values():
            q.set_bits(bits)


def _tokens(batch: int, length: int, *, pad: int = 0) -> dict[str, torch.Tensor]:
    """Random ids and an attention mask whose second row (if any) ends in ``pad`` padding tokens."""
    gen = torch.Generator().manual_seed(batch * 100 + length)
    ids = torch.randint(0, 64, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    if batch > 1 and pad:
        mask[1, -pad:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_the_dynamic_axes_rule_and_resizing() -> None:
    ids, images = torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 3, 4, 4)
    assert dynamic_dims(ids) == {0: "batch", 1: "sequence"} and dynamic_dims(images) == {0: "batch"}
    assert dynamic_dims(ids, sequence=False) == {0: "batch"} and dynamic_dims(torch.zeros(3)) == {0: "batch"}
    grown = resized({"input_ids": torch.arange(5)[None], "x": images}, {"batch": 3, "sequence": 2})
    assert grown["input_ids"].tolist() == [[0, 1]] * 3 and grown["x"].shape == (3, 3, 4, 4)


def test_a_language_model_runs_at_any_batch_and_length(tmp_path: Path) -> None:
    """A tiny HF Llama exported from a batch-1 example: (1, 16) and (3, 40) tokens, a padding mask."""
    import onnxruntime as ort

    pytest.importorskip("transformers")
    model, _ = zoo.build("hf_llama")
    example = _tokens(1, 8)  # batch 1: torch's exporter would fix it without geta's resizing
    plan = geta.prepare(model, example, geta.Config(weight_bits=(2, 16), act_bits=(2, 16)))
    zero_random_groups(plan, 0.5, seed=0)
    _set_bits(plan, 8)
    small = geta.convert(model, plan)
    path = tmp_path / "llama.onnx"
    info = onnx(small, example, path)
    axes = {0: "batch", 1: "sequence"}  # one shared name per axis over both inputs
    assert info.dynamic_axes == {"input_ids": axes, "attention_mask": axes}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert all(i.shape == ["batch", "sequence"] for i in session.get_inputs())
    for batch, length in ((1, 16), (3, 40)):
        inputs = _tokens(batch, length, pad=7)
        rel, agree = check_parity(small, inputs, path)
        assert rel <= 1e-3 and agree == 1.0, (batch, length, rel, agree)
    padded = _tokens(3, 40, pad=7)  # the mask is an input that matters, not a constant
    got = session.run(None, {k: v.numpy() for k, v in padded.items()})[0]
    ones = torch.ones(3, 40, dtype=torch.long).numpy()
    unmasked = session.run(None, {"input_ids": padded["input_ids"].numpy(), "attention_mask": ones})[0]
    assert abs(got[1, -1] - unmasked[1, -1]).max() > 1e-3 and abs(got[0] - unmasked[0]).max() == 0.0


class _Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 with BatchNorm, plus an identity or a 1x1 projection shortcut."""

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, 4 * width, 1, bias=False), nn.BatchNorm2d(4 * width)
        self.down = (
            nn.Sequential(nn.Conv2d(c_in, 4 * width, 1, stride, bias=False), nn.BatchNorm2d(4 * width))
            if stride != 1 or c_in != 4 * width
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return F.relu(h + (x if self.down is None else self.down(x)))  # the residual add


class _ResidualCNN(nn.Module):
    """A ResNet-50-like miniature: stem conv + max-pool, bottlenecks with both shortcut kinds, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(_Bottleneck(8, 4, 1), _Bottleneck(16, 4, 1), _Bottleneck(16, 8, 2))
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.bn(self.stem(x))), 2)  # a conv whose output is pooled first
        return self.fc(self.blocks(h).mean((2, 3)))


def _ort_ops(path: Path, tmp_path: Path) -> Counter[str]:
    """The operators onnxruntime runs for ``path`` after its (default, full) optimisations."""
    import onnx as onnx_lib
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx_lib.load(options.optimized_model_filepath).graph.node)


@pytest.mark.parametrize("bits", [8, 4])
def test_every_convolution_of_a_residual_cnn_runs_an_integer_kernel(tmp_path: Path, bits: int) -> None:
    torch.manual_seed(0)
    model = _ResidualCNN().eval()
    x = (torch.randn(1, 3, 16, 16),)
    plan = geta.prepare(model, x, geta.Config(weight_bits=(8, 8), act_bits=(8, 8)))
    _set_bits(plan, bits)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    plain = onnx(model, x, tmp_path / "qdq.onnx", check=False)  # the default: QDQ only
    before = _ort_ops(tmp_path / "qdq.onnx", tmp_path)
    assert (
        plain.integer_convolutions == 0 and before["Conv"] + before["FusedConv"] > 0
    )  # what was left in float
    info = onnx(model, x, tmp_path / "int.onnx", integer_convolutions=True)  # parity at batch 1 and 2
    ops = _ort_ops(tmp_path / "int.onnx", tmp_path)
    assert ops["Conv"] == ops["FusedConv"] == 0 and ops["QLinearConv"] + ops["ConvInteger"] == convs
    assert info.integer_convolutions == ops["ConvInteger"] == before["Conv"] + before["FusedConv"]
    assert info.max_relative_diff is not None and info.max_relative_diff <= 1e-3
    for batch in (1, 5):  # the CNN at two batch sizes
        rel, agree = check_parity(model, (torch.randn(batch, 3, 16, 16),), tmp_path / "int.onnx")
        assert rel <= 1e-3 and agree == 1.0, (batch, rel)


def test_a_failed_parity_check_writes_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import geta.export.onnx_export as onnx_export

    model, x = zoo.build("mlp")
    path = tmp_path / "model.onnx"
    path.write_bytes(b"an older file")
    monkeypatch.setattr(onnx_export, "check_parity", lambda *a, **k: (0.25, 0.5))
    with pytest.raises(ExportError, match=r"max relative difference 0\.25 .*no file written"):
        onnx(model, x, path)
    assert path.read_bytes() == b"an older file"  # untouched, and no staging folder left behind
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    monkeypatch.undo()
    info = onnx(model, x, path)
    meta = json.loads({p.key: p.value for p in __import__("onnx").load(str(path)).metadata_props}["geta"])
    assert meta["path"] == str(path) == info.path and meta["dynamic_axes"] == {"input": {"0": "batch"}}
