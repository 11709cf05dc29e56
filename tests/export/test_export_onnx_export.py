"""ONNX export: the deployable QDQ form, the exported graph, parity in onnxruntime, the u8s8 trap."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import geta
from geta.export import ExportError, check_parity, deployable, onnx
from geta.export.qdq import SATURATION_FREE_CODE, encode_weight_codes
from geta.quant import input_quantizer, weight_quantizers
from geta.testing import max_relative_error, model_outputs, zero_random_groups, zoo

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _quantized(name: str, bits: float, *, exponent: float = 1.0, acts: bool = True, prune: bool = True
               ) -> tuple[nn.Module, object]:  # fmt: skip
    model, x = zoo.build(name)
    plan = geta.prepare(model, x, geta.Config(weight_bits=(2, 16), act_bits=(2, 16) if acts else None))
    if prune:
        zero_random_groups(plan, 0.5, seed=0)
    with torch.no_grad():
        for q in plan.quantizers.values():
            q.exponent.fill_(exponent)
            q.set_bits(bits)
    return (geta.convert(model, plan) if prune else model), x


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


@pytest.mark.parametrize(("name", "bits", "exponent", "acts"), [
    ("resnet", 4, 1.0, True), ("plain_cnn", 3, 0.8, True), ("mlp", 12, 1.0, True), ("mha", 8, 1.2, False),
])  # fmt: skip
def test_deployable_copy_computes_the_same_and_leaves_the_model_alone(
    name: str, bits: int, exponent: float, acts: bool
) -> None:
    model, x = _quantized(name, bits, exponent=exponent, acts=acts)
    before = model_outputs(model, x)
    deploy, tensors = deployable(model)
    assert max_relative_error(model_outputs(deploy, x), before) <= 1e-6
    assert torch.equal(model_outputs(model, x), before)  # the source still runs, unchanged
    assert any(weight_quantizers(m) for m in model.modules())
    assert not any(weight_quantizers(m) or input_quantizer(m) for m in deploy.modules())
    weights = [t for t in tensors if t.kind == "weight"]
    assert len(weights) == sum(len(weight_quantizers(m)) for m in model.modules())
    assert all(t.bits == bits and not t.limited for t in tensors)
    for t in weights:
        if bits > 8:
            assert t.encoding == "float"
        elif bits == 8:  # full-range codes: stored shifted by 128 in uint8
            assert (t.encoding, t.zero_point) == ("uint8", 128)
        else:
            assert (t.encoding, t.zero_point) == ("int8", 0)


def test_encoding_keeps_symmetric_int8_while_codes_fit_seven_bits() -> None:
    small = torch.arange(-SATURATION_FREE_CODE, SATURATION_FREE_CODE + 1)
    stored, zp, enc = encode_weight_codes(small, signed=True)
    assert (enc, zp) == ("int8", 0) and torch.equal(stored.long(), small)
    wide = torch.tensor([-127, 5, 127])
    stored, zp, enc = encode_weight_codes(wide, signed=True)
    assert (enc, zp) == ("uint8", 128) and torch.equal(stored.long() - zp, wide)
    assert encode_weight_codes(wide, signed=True, saturation_safe=False)[2] == "int8"


def test_bits_rounded_down_are_flagged_as_limited() -> None:
    model, _ = _quantized("mlp", 4.4, prune=False)  # real 4.4 bits are exported as 4
    _, tensors = deployable(model)
    weights = [t for t in tensors if t.kind == "weight"]
    assert all(t.bits == 4 and (t.code_min, t.code_max) == (-7, 7) for t in weights)
    assert all(t.limited for t in tensors) and any(t.clipped > 0 for t in weights)


def test_onnx_export_of_a_pruned_quantized_resnet(tmp_path: Path) -> None:
    import onnx as onnx_lib
    from onnx import numpy_helper

    model, x = _quantized("resnet", 4)
    info = onnx(model, x, tmp_path / "resnet.onnx", fold_batchnorm=False)
    assert info.max_relative_diff is not None and info.max_relative_diff <= 1e-3
    assert info.argmax_agreement is not None and info.argmax_agreement >= 0.99
    proto = onnx_lib.load(str(tmp_path / "resnet.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    inputs = [t for t in info.tensors if t.kind == "input"]
    weights = [t for t in info.tensors if t.kind == "weight"]
    # 7 quantized inputs; the shortcut and the body of the second block read the same tensor
    # with the same learned scale, and the ONNX optimizer merges their identical Q/DQ pairs
    assert len(inputs) == 7 and len({t.scale for t in inputs}) <= ops.count("QuantizeLinear") <= 7
    assert ops.count("DequantizeLinear") == ops.count("QuantizeLinear") + len(weights)
    init = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    codes = [a for a in init.values() if a.dtype.name == "int8" and a.ndim >= 2]
    assert len(codes) == len(weights) and all(abs(int(a.min())) <= 7 and int(a.max()) <= 7 for a in codes)
    scales = {round(float(a), 9) for a in init.values() if a.dtype.name == "float32" and a.ndim == 0}
    assert {round(t.scale, 9) for t in info.tensors} <= scales  # the learned steps are the scales
    meta = {p.key: p.value for p in proto.metadata_props}
    assert [t["name"] for t in json.loads(meta["geta"])["tensors"]] == [t.name for t in info.tensors]


def _random_batchnorm_statistics(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine terms (some γ negative), so that folding matters."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(n, generator=gen))
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


def test_batchnorm_folding_keeps_the_codes_and_is_exact_in_torch() -> None:
    model, x = zoo.build("resnet")
    _random_batchnorm_statistics(model)
    plan = geta.prepare(model, x, geta.Config(weight_bits=(4, 4)))  # weights only: no rounding flips
    with torch.no_grad():
        for q in plan.quantizers.values():
            q.set_bits(4)
    before = model_outputs(model, x)
    deploy, tensors = deployable(model, x, fold_batchnorm=True)
    assert max_relative_error(model_outputs(deploy, x), before) <= 1e-5
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
    folded = [t for t in tensors if "BatchNorm folded" in t.note]
    assert len(folded) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 6
    for conv in (m for m in deploy.modules() if isinstance(m, nn.Conv2d)):
        form = conv.parametrizations.weight[0]
        assert form.scale.dim() == 1 and bool((form.scale > 0).all())  # per channel, positive
        assert int(form.codes.abs().max()) <= 7  # still 4-bit codes
    assert len(plan.quantizers) and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("saturation_safe", [True, False])
def test_folded_qdq_resnet_runs_integer_convolutions_in_onnxruntime(
    tmp_path: Path, saturation_safe: bool
) -> None:
    import onnx as onnx_lib
    import onnxruntime as ort

    model, x = zoo.build("resnet")
    _random_batchnorm_statistics(model)
    plan = geta.prepare(model, x, geta.Config(weight_bits=(8, 8), act_bits=(8, 8)))
    with torch.no_grad():
        for q in plan.quantizers.values():
            q.set_bits(8)
    info = onnx(model, x, tmp_path / "folded.onnx", saturation_safe=saturation_safe)  # parity checked
    assert info.max_relative_diff is not None and info.max_relative_diff <= 1e-3
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "folded.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx_lib.load(options.optimized_model_filepath).graph.node]
    # the first conv of each block: its ReLU output reaches a QuantizeLinear only (others feed an Add)
    assert "BatchNormalization" not in ops and ops.count("QLinearConv") == 2


def test_full_range_8bit_weights_stay_exact_in_onnxruntime(tmp_path: Path) -> None:
    import onnx as onnx_lib
    import onnxruntime as ort

    model, x = _quantized("mlp", 8, prune=False)
    info = onnx(model, x, tmp_path / "safe.onnx")
    assert info.max_relative_diff is not None and info.max_relative_diff <= 1e-3
    assert all(t.encoding == "uint8" for t in info.tensors if t.kind == "weight")
    # the check really ran onnxruntime's fused integer kernels
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "safe.onnx"), options, providers=["CPUExecutionProvider"])
    assert "QGemm" in {n.op_type for n in onnx_lib.load(options.optimized_model_filepath).graph.node}
    flags = _cpu_flags()
    if "avx2" not in flags or flags & {"avx512_vnni", "avx_vnni", "avx512vnni"}:
        pytest.skip("u8s8 saturation shows only on x86 AVX2 CPUs without VNNI")
    with pytest.raises(ExportError, match="saturation"):  # symmetric int8 codes saturate here
        onnx(model, x, tmp_path / "unsafe.onnx", saturation_safe=False)


def test_weight_only_attention_is_exact_with_the_recorded_session_config(tmp_path: Path) -> None:
    """A float-input MatMul with DequantizeLinear weights becomes onnxruntime's MatMulNBits."""
    import onnx as onnx_lib
    import onnxruntime as ort

    model, x = _quantized("mha", 6, acts=False, prune=False)
    info = onnx(model, x, tmp_path / "mha.onnx")
    assert info.max_relative_diff is not None and info.max_relative_diff <= 1e-3
    proto = onnx_lib.load(str(tmp_path / "mha.onnx"))
    config = json.loads({p.key: p.value for p in proto.metadata_props}["geta.onnxruntime_session_config"])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    ort.InferenceSession(str(tmp_path / "mha.onnx"), options, providers=["CPUExecutionProvider"])
    assert "MatMulNBits" in {n.op_type for n in onnx_lib.load(options.optimized_model_filepath).graph.node}


def _at_batch(inputs: object, batch: int) -> object:
    """The example inputs with a new batch size (random values of the same kind)."""
    gen = torch.Generator().manual_seed(batch)

    def one(t: torch.Tensor) -> torch.Tensor:
        shape = (batch, *t.shape[1:])
        if t.is_floating_point():
            return torch.randn(shape, generator=gen)
        return torch.randint(0, max(int(t.max()), 1) + 1, shape, generator=gen, dtype=t.dtype)

    if isinstance(inputs, dict):
        return {k: one(v) for k, v in inputs.items()}
    return tuple(one(t) for t in inputs)  # type: ignore[union-attr]


@pytest.mark.parametrize(("name", "inputs", "outputs"), [
    ("resnet", ["input"], ["output"]),
    ("mha", ["x"], ["output"]),
    ("hf_bert", ["input_ids", "attention_mask"], ["logits"]),
])  # fmt: skip
def test_onnx_runs_at_any_batch_size_with_named_inputs_and_outputs(
    tmp_path: Path, name: str, inputs: list[str], outputs: list[str]
) -> None:
    import onnxruntime as ort

    if name.startswith("hf_"):
        pytest.importorskip("transformers")
    model, x = _quantized(name, 8)
    path = tmp_path / f"{name}.onnx"
    info = onnx(model, x, path)
    if name != "resnet":  # attention: q·kᵀ and p·v operands are quantized too
        assert {t.name.rsplit(".", 1)[1] for t in info.tensors if t.kind == "product"} == {"q", "k", "p", "v"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == inputs  # forward's argument names
    assert [o.name for o in session.get_outputs()] == outputs
    assert all(i.shape[0] == "batch" for i in session.get_inputs())
    for batch in (1, 8):
        xb = _at_batch(x, batch)
        rel, agree = check_parity(model, xb, path)  # onnxruntime vs the torch model at this batch
        assert rel <= 1e-3 and agree == 1.0, (batch, rel, agree)


class _TwoHeads(nn.Module):
    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        self.body, self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3), nn.Linear(8, 2)
        self.as_dict = as_dict

    def forward(self, features: torch.Tensor) -> object:
        h = torch.relu(self.body(features))  # (B, 8)
        return {"logits": self.a(h), "aux": self.b(h)} if self.as_dict else (self.a(h), self.b(h))


@pytest.mark.parametrize(("as_dict", "names"), [(True, ["logits", "aux"]), (False, ["output_0", "output_1"])])
def test_several_outputs_are_named_from_what_forward_returns(
    tmp_path: Path, as_dict: bool, names: list[str]
) -> None:
    import onnxruntime as ort

    model = _TwoHeads(as_dict).eval()
    x = (torch.randn(3, 4),)
    plan = geta.prepare(model, x, geta.Config(weight_bits=(8, 8)))
    with torch.no_grad():
        for q in plan.quantizers.values():
            q.set_bits(8)
    onnx(model, x, tmp_path / "two.onnx")
    session = ort.InferenceSession(str(tmp_path / "two.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == names
    assert [i.name for i in session.get_inputs()] == ["features"]


def test_static_batch_on_request(tmp_path: Path) -> None:
    import onnxruntime as ort

    model, x = _quantized("mlp", 8)
    onnx(model, x, tmp_path / "static.onnx", dynamic_batch=False)
    session = ort.InferenceSession(str(tmp_path / "static.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 20] and session.get_outputs()[0].shape[0] == 2


def test_a_float_model_exports_as_a_float_graph(tmp_path: Path) -> None:
    import onnx as onnx_lib

    model, x = zoo.build("resnet")
    info = onnx(geta.export.baked(model.eval(), x, fold_batchnorm=True), x, tmp_path / "float.onnx")
    assert info.tensors == [] and info.max_relative_diff is not None and info.max_relative_diff <= 1e-5
    ops = {n.op_type for n in onnx_lib.load(str(tmp_path / "float.onnx")).graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear", "BatchNormalization"}


def test_no_geta_module_imports_onnx_at_import_time() -> None:
    """onnx, onnxruntime and onnxscript are imported inside functions only (optional extras)."""
    lazy = {"onnx", "onnxruntime", "onnxscript"}
    root = Path(geta.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            assert not {n.split(".")[0] for n in names} & lazy, f"{path.relative_to(root)} imports {names}"


def test_geta_report_is_the_function_even_after_importing_the_package() -> None:
    import geta.reporting.count

    assert geta.report(nn.Linear(3, 2), (torch.randn(4, 3),)).macs == 24
