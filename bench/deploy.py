"""Deployment: does pruning turn into speed? Dense vs converted latency, PyTorch and onnxruntime.

    python -m bench.deploy [--models resnet50,bert] [--rounds32 5] [--rounds1 15] [--threads 2]
    python -m bench.deploy --llm-only     (only the language model in llama.cpp: bench.deploy_llm)

For each model (a ResNet-50 at 224x224, a BERT-Small encoder at sequence length 128; see
`bench.models`):

1. the dense model, BatchNorm folded (`geta.export.baked(dense, x, fold_batchnorm=True)`);
2. at 30 / 50 / 70 % group sparsity: ``geta.prepare`` (8-bit weights and layer inputs), the
   share of prunable units zeroed by ``geta.testing.zero_random_groups(plan, fraction, seed=0)``,
   ``geta.convert``, then ``geta.export.baked(..., fold_batchnorm=True)``: plain float modules;
3. at 50 %: the float ONNX export of the baked model and the QDQ export of the converted model
   (8-bit weights and inputs: onnxruntime's integer kernels), plus a float ONNX of the dense
   model; for a CNN also the QDQ export with ``integer_convolutions=True`` ("QDQ+CI": the
   convolutions onnxruntime leaves in float, e.g. before a residual add, as ConvInteger);
   each checked against the torch model it came from, at batch 1 and 32. For the
   transformer also ``baked(..., int8_linear=True)`` at 50 % (torch.ao's dynamic int8 Linear
   with geta's codes: the only int8 GEMM path of torch 2.13 on CPU), against the float one.

Latency is the median of interleaved rounds: every round runs each variant once, in alternating
order, so that all variants see the same machine load. PyTorch eager in ``inference_mode``,
onnxruntime's CPU provider with its full graph optimisations and the session setting geta
records in the file; both with ``--threads`` threads. One profiled onnxruntime run per file
lists the kernels it executed. The headline (last line) is dense ÷ converted latency at 50 %
in PyTorch eager at batch 32.

Then, where llama-cpp-python is installed (``make deploy-venv``; skip with ``--no-llm``), a
section of its own: a small Llama compressed by ``geta compress`` and exported as GGUF, against
the float GGUF of the same model in llama.cpp (`bench.deploy_llm`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import geta
from bench.deploy_llm import write_llm_section
from bench.models import bert_small, resnet50
from bench.results import cpu_flags, machine, write_section
from geta.export import ORT_SESSION_CONFIG
from geta.testing import zero_random_groups

SPARSITIES = (0.3, 0.5, 0.7)
BATCHES = (1, 32)
# onnxruntime operators that compute on integers (the rest are float ops or conversions)
INTEGER_OPS = (
    "QLinear",
    "QGemm",
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantize",
    "MatMulNBits",
    "QAttention",
)
CONVERSION_OPS = ("QuantizeLinear", "DequantizeLinear")
HEAVY_FLOAT_OPS = ("Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "FusedGemm")


@dataclass
class Case:
    """One model of the benchmark: how to build it and its inputs at a batch size."""

    name: str
    title: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int], Any]  # batch -> example inputs (tuple or dict)
    prepare_inputs: Any  # small inputs for geta.prepare (graph capture and calibration)
    int8_linear: bool = False  # also time baked(..., int8_linear=True) (Linear-heavy models)


def _images(batch: int, hw: int = 224) -> tuple[torch.Tensor]:
    return (torch.randn(batch, 3, hw, hw, generator=torch.Generator().manual_seed(batch)),)


def _tokens(batch: int, seq: int = 128) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, 30522, (batch, seq), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long)}


CASES = {
    "resnet50": Case("resnet50", "ResNet-50, 224x224", resnet50, _images, _images(2, 64)),
    "bert": Case("bert", "BERT-Small (L4 H512 A8), seq 128", bert_small, _tokens, _tokens(2, 16), True),
}


@dataclass
class Variant:
    """A model form to time: a callable on the inputs of each batch size, and its reference."""

    label: str
    run: Callable[[Any], Any]
    reference: str | None = None  # label of the torch variant an ONNX variant must reproduce
    outputs: dict[int, np.ndarray] = field(default_factory=dict)


def _call(model: nn.Module) -> Callable[[Any], Any]:
    def run(x: Any) -> Any:
        with torch.inference_mode():
            out = model(**x) if isinstance(x, dict) else model(*x)
        return out if isinstance(out, torch.Tensor) else next(iter(out.values()))

    return run


def _session(path: str, threads: int, profile_prefix: str | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    for key, value in ORT_SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _ort(session: Any) -> Callable[[Any], Any]:
    names = [i.name for i in session.get_inputs()]

    def run(x: Any) -> Any:
        tensors = [x[n] for n in names] if isinstance(x, dict) else list(x)
        return session.run(None, {n: t.numpy() for n, t in zip(names, tensors)})[0]

    return run


def _numpy(out: Any) -> np.ndarray:
    return out.detach().float().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, np.float32)


def _parity(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max|a - b| / max|b|, argmax agreement over the last dim)."""
    rel = float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))
    return rel, float((a.argmax(-1) == b.argmax(-1)).mean())


def _timed(variants: list[Variant], x: Any, rounds: int, batch: int) -> dict[str, float]:
    """Median seconds per variant over ``rounds`` interleaved rounds (order alternating)."""
    for v in variants:  # warm-up: allocator, kernels, onnxruntime's arenas; keep one output
        v.outputs[batch] = _numpy(v.run(x))
        v.run(x)
    times: dict[str, list[float]] = {v.label: [] for v in variants}
    for r in range(rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            t0 = time.perf_counter()
            v.run(x)
            times[v.label].append(time.perf_counter() - t0)
    return {k: statistics.median(t) for k, t in times.items()}


def _kernels(path: str, x: Any, threads: int, folder: str) -> tuple[Counter[str], Counter[str]]:
    """(nodes per op type, microseconds per op type) of one profiled onnxruntime run."""
    session = _session(path, threads, os.path.join(folder, "profile"))
    _ort(session)(x)
    trace = session.end_profiling()
    nodes: dict[str, str] = {}
    micros: Counter[str] = Counter()
    with open(trace) as f:
        for ev in json.load(f):
            if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
                op = ev["args"]["op_name"]
                nodes[ev["name"]] = op
                micros[op] += ev.get("dur", 0)
    os.unlink(trace)
    return Counter(nodes.values()), micros


def _shares(micros: Counter[str]) -> dict[str, float]:
    """Percent of kernel time in integer kernels, in Quantize/DequantizeLinear, in the rest."""
    total = max(sum(micros.values()), 1)
    integer = 100 * sum(us for op, us in micros.items() if op.startswith(INTEGER_OPS)) / total
    qdq = 100 * sum(us for op, us in micros.items() if op in CONVERSION_OPS) / total
    return {"integer": integer, "Q/DQ": qdq, "float": 100 - integer - qdq}


def _kernel_lines(label: str, nodes: Counter[str], micros: Counter[str]) -> list[str]:
    total = max(sum(micros.values()), 1)
    ops = ", ".join(f"{op} x{nodes[op]} {100 * us / total:.0f}%" for op, us in micros.most_common(12))
    rest = len(micros) - 12
    share = _shares(micros)
    return [
        f"  {label}: {ops}" + (f" (+{rest} op types under 1%)" if rest > 0 else ""),
        f"    time in integer kernels {share['integer']:.0f}%, in Quantize/DequantizeLinear "
        f"{share['Q/DQ']:.0f}%, in float ops {share['float']:.0f}%",
    ]


def _why_lines(nodes: Counter[str], micros: Counter[str], speedup: dict[int, float], vnni: bool) -> list[str]:
    """What the QDQ file ran in integers, what in float, and why (from the profile's counts)."""
    integer = sum(n for op, n in nodes.items() if op.startswith(INTEGER_OPS))
    dense_float = sum(n for op, n in nodes.items() if op in HEAVY_FLOAT_OPS)
    total = max(sum(micros.values()), 1)
    cpu = (
        "AVX512-VNNI present: int8 dot products (VPDPBUSD) run natively"
        if vnni
        else "no VNNI: int8 kernels build the dot product from 16-bit multiply-adds"
    )
    transposes = 100 * micros["Transpose"] / total if nodes["QLinearConv"] else 0.0
    lines = [
        f"  QDQ file: {integer} of {integer + dense_float} convolution / matrix-product nodes ran integer "
        f"kernels, {dense_float} ran in float. onnxruntime multiplies on integers only when both inputs "
        "come quantized (DequantizeLinear), and a convolution only when its output is re-quantized "
        "too (DequantizeLinear -> Conv -> QuantizeLinear = QLinearConv). geta quantizes layer inputs, "
        "so a convolution whose output feeds a residual add (ResNet's third conv and shortcut) stays "
        "a float convolution on dequantized weights, as do products whose operands geta keeps float "
        "(integer_convolutions=True writes those convolutions as ConvInteger: the QDQ+CI row).",
        f"  CPU: {cpu}; {_shares(micros)['Q/DQ']:.0f}% of the QDQ file's kernel time is "
        "Quantize/DequantizeLinear"
        + (f", {transposes:.0f}% layout Transposes around QLinearConv (NHWC kernels)" if transposes else "")
        + ".",
    ]
    slower = [b for b, r in speedup.items() if r < 1.0]
    if slower:
        lines.append(
            f"  QDQ slower than float at batch {', '.join(map(str, slower))}: the integer share is "
            "too small to pay for the conversions and the float ops that read dequantized weights."
        )
    return lines


def _compressed(case: Case, fraction: float) -> tuple[nn.Module, nn.Module, list[str]]:
    """(converted model with its 8-bit quantizers, baked float model with BN folded, convert's warnings)."""
    model = case.build()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # geta's own checks: reported in the table, not on stderr
        plan = geta.prepare(model, case.prepare_inputs, geta.Config(weight_bits=(8, 8), act_bits=(8, 8)))
        zero_random_groups(plan, fraction, seed=0)
        with torch.no_grad():
            for q in plan.quantizers.values():
                q.set_bits(8)
        small = geta.convert(model, plan)
    notes = [str(w.message).split(";")[0] for w in caught if str(w.message).startswith("geta.")]
    return small, geta.export.baked(small, case.prepare_inputs, fold_batchnorm=True), notes


def _size(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + ".data") if os.path.exists(p))


def _params(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


@dataclass
class Built:
    """Everything one model's table is measured on."""

    variants: list[Variant]
    params: dict[str, float]
    files: dict[str, str]
    packed_bytes: int
    notes: list[str]
    seconds: float


def _build(case: Case, args: argparse.Namespace, folder: str, saturation_safe: bool) -> Built:
    """Dense and converted models (baked, BN folded), their ONNX files and the packed file."""
    t0 = time.perf_counter()
    dense = geta.export.baked(case.build(), case.prepare_inputs, fold_batchnorm=True)
    variants = [Variant("torch dense", _call(dense))]
    params = {"torch dense": _params(dense)}
    converted: dict[float, nn.Module] = {}
    fast: dict[float, nn.Module] = {}
    notes: list[str] = []
    for s in SPARSITIES:
        converted[s], fast[s], caught = _compressed(case, s)
        variants.append(Variant(f"torch {s:.0%}", _call(fast[s])))
        params[f"torch {s:.0%}"] = _params(fast[s])
        notes += [f"{s:.0%}: {m}" for m in caught if f"{s:.0%}: {m}" not in notes]
    if case.int8_linear:  # torch.ao's int8 Linear holding geta's codes (inputs quantized by torch)
        int8 = geta.export.baked(converted[0.5], case.prepare_inputs, fold_batchnorm=True, int8_linear=True)
        variants.append(Variant("torch 50% int8", _call(int8), "torch 50%"))
    params["torch 50% W8A8"] = params["torch 50% int8"] = params["torch 50%"]
    files = {k: os.path.join(folder, f"{case.name}-{k}.onnx") for k in ("dense", "float", "qdq")}
    x = case.inputs(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        geta.export.onnx(dense, x, files["dense"])
        geta.export.onnx(fast[0.5], x, files["float"])
        # compared below at batch 1 and 32; the export's own check (<= 1e-3) is not applied: in a
        # deep W8A8 network float rounding moves a few activations across a rounding boundary
        geta.export.onnx(converted[0.5], x, files["qdq"], saturation_safe=saturation_safe, check=False)
        # the same with the convolutions onnxruntime leaves in float written as ConvInteger
        files["qdq-int"] = os.path.join(folder, f"{case.name}-qdq-int.onnx")
        rewritten = geta.export.onnx(
            converted[0.5], x, files["qdq-int"], saturation_safe=saturation_safe, check=False,
            integer_convolutions=True,
        ).integer_convolutions  # fmt: skip
    if not rewritten:  # no such convolution (e.g. a transformer): nothing to compare
        os.unlink(files.pop("qdq-int"))
    packed = geta.export.packed(converted[0.5], os.path.join(folder, f"{case.name}.geta"))
    variants += [
        Variant("ort dense float", _ort(_session(files["dense"], args.threads)), "torch dense"),
        Variant("ort 50% float", _ort(_session(files["float"], args.threads)), "torch 50%"),
        Variant("ort 50% QDQ", _ort(_session(files["qdq"], args.threads)), "torch 50% W8A8"),
    ]
    if "qdq-int" in files:
        variants.append(
            Variant("ort 50% QDQ+CI", _ort(_session(files["qdq-int"], args.threads)), "torch 50% W8A8")
        )
    variants.append(Variant("torch 50% W8A8", _call(converted[0.5])))  # the QDQ file's reference, untimed
    return Built(variants, params, files, packed.file_bytes, notes, time.perf_counter() - t0)


def run_case(case: Case, args: argparse.Namespace, folder: str) -> tuple[list[str], float]:
    """The table lines of one model and its headline ratio (dense ÷ 50 % at batch 32, eager)."""
    vnni = bool(cpu_flags() & {"avx512_vnni", "avx_vnni"})
    built = _build(case, args, folder, saturation_safe=not vnni)  # u8s8 kernels are exact with VNNI
    timed = [v for v in built.variants if v.label != "torch 50% W8A8"]
    rounds = {1: args.rounds1, 32: args.rounds32}
    medians = {b: _timed(timed, case.inputs(b), rounds[b], b) for b in BATCHES}
    by_label = {v.label: v for v in built.variants}
    for b in BATCHES:  # the fake-quant model: once per batch, as the QDQ file's reference
        by_label["torch 50% W8A8"].outputs[b] = _numpy(by_label["torch 50% W8A8"].run(case.inputs(b)))
    lines = [
        f"{case.title}: setup (3 prepare + convert + bake, {len(built.files)} ONNX exports) "
        f"{built.seconds:.0f} s; "
        f"medians of {args.rounds1} (batch 1) / {args.rounds32} (batch 32) interleaved rounds",
        f"  {'variant':<18} {'params M':>9} {'b=1 ms':>9} {'b=32 ms':>9} {'speedup b=1':>12} "
        f"{'speedup b=32':>13}  parity at b=1, b=32: max rel diff, argmax agreement",
    ]
    for v in timed:
        base = "ort dense float" if v.label.startswith("ort") else "torch dense"
        ratios = [medians[b][base] / medians[b][v.label] for b in BATCHES]
        parity = ""
        if v.reference is not None:
            checks = [_parity(v.outputs[b], by_label[v.reference].outputs[b]) for b in BATCHES]
            parity = f"  vs {v.reference}: " + ", ".join(f"{r:.1e} {a:.0%}" for r, a in checks)
        lines.append(
            f"  {v.label:<18} {built.params.get(v.label, built.params.get(v.reference or '', 0.0)):>9.2f} "
            f"{1e3 * medians[1][v.label]:>9.1f} {1e3 * medians[32][v.label]:>9.1f} "
            f"{ratios[0]:>12.2f} {ratios[1]:>13.2f}{parity}"
        )
    speedup = {b: medians[b]["ort 50% float"] / medians[b]["ort 50% QDQ"] for b in BATCHES}
    sizes = {k: _size(p) / 2**20 for k, p in built.files.items()}
    lines += [
        "  (speedup: dense / this; torch rows against torch dense, ort rows against ort dense float)",
        f"  QDQ vs float ONNX at 50 %: float/QDQ latency {speedup[1]:.2f} (b=1), {speedup[32]:.2f} (b=32)"
        + (
            "; with integer_convolutions=True (QDQ+CI: every quantized convolution on integers, the ones "
            "onnxruntime would leave in float as ConvInteger) "
            + ", ".join(
                f"{medians[b]['ort 50% float'] / medians[b]['ort 50% QDQ+CI']:.2f} (b={b})" for b in BATCHES
            )
            if "qdq-int" in built.files
            else ""
        )
        + "; "
        f"QDQ weights {'int8 (u8s8 kernels)' if vnni else 'uint8 with zero point 128 (u8u8 kernels)'}",
        f"  files at 50 %: float ONNX {sizes['float']:.1f} MiB, QDQ ONNX {sizes['qdq']:.1f} MiB, packed "
        f"{built.packed_bytes / 2**20:.1f} MiB (dense float ONNX {sizes['dense']:.1f} MiB)",
        *[f"  note, {n}" for n in built.notes],
        "  onnxruntime kernels executed (one profiled run at batch 32; op x nodes, share of kernel time):",
    ]
    profiles = {k: _kernels(built.files[k], case.inputs(32), args.threads, folder) for k in built.files}
    for key, label in (
        ("dense", "dense float"),
        ("float", "50% float"),
        ("qdq", "50% QDQ"),
        ("qdq-int", "50% QDQ+CI"),
    ):
        if key in profiles:
            lines += _kernel_lines(label, *profiles[key])
    lines += _why_lines(*profiles["qdq"], speedup, vnni)
    return lines, medians[32]["torch dense"] / medians[32]["torch 50%"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="resnet50,bert", help="comma-separated: resnet50, bert")
    parser.add_argument("--rounds1", type=int, default=15, help="interleaved rounds at batch 1")
    parser.add_argument("--rounds32", type=int, default=5, help="interleaved rounds at batch 32")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--llm-only", action="store_true", help="only the LLM section (bench.deploy_llm)")
    parser.add_argument("--no-llm", action="store_true", help="skip the LLM section (llama.cpp)")
    parser.add_argument("--llm-rounds", type=int, default=21, help="interleaved llama.cpp timing rounds")
    args = parser.parse_args()
    if args.llm_only:
        write_llm_section(args)
        return
    torch.set_num_threads(args.threads)
    lines = [
        machine(),
        f"{args.threads} threads (torch.set_num_threads and onnxruntime intra-op), batch 1 and 32, "
        "BatchNorm folded in every torch model; group sparsity = share of prunable units removed "
        "(geta.testing.zero_random_groups, seed 0); 8-bit weights and layer inputs",
    ]
    print("\n".join(lines), flush=True)
    headline = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            case_lines, headline[name] = run_case(CASES[name], args, folder)
            lines += case_lines
            print("\n".join(case_lines), flush=True)
    lines.append(
        "headline: dense ÷ converted latency at 50 % group sparsity (PyTorch eager, batch 32) = "
        + ", ".join(f"{r:.2f}x {CASES[n].title}" for n, r in headline.items())
        + " (target >= 1.8x)"
    )
    if not args.no_write:
        write_section("deployment", lines)
    print(lines[-1])
    if not args.no_llm:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            print("LLM section skipped: it needs llama-cpp-python (make deploy-venv)")
            return
        write_llm_section(args)


if __name__ == "__main__":
    main()
