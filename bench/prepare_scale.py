"""Graph analysis at scale: `geta.prepare` beside Torch-Pruning's dependency graph.

    python -m bench.prepare_scale [--max-billions 405] [--limit 120] [--big-limit 600]

Every (tool, model) pair runs in a fresh subprocess under a time limit, so that its peak RSS
belongs to it alone and a hang is recorded as a hang (with its limit) instead of stopping the
benchmark. Each child first runs its tool once on a tiny model (imports, tracing and kernel
warm-up, not counted), then times one call on the model:

- geta: ``geta.prepare(model, inputs, Config(act_bits=(4, 8)))`` (weights and layer inputs
  quantized), split into its phases by timing the functions `geta.prepare` calls (wrapped in
  the child; no timing code in the library): *capture* (``torch.export``), *analysis* (op
  handlers, module constraints, prune groups), *trial* (the trial conversion that decides
  which groups really convert), *calibration* (the float forwards that record activation and
  product ranges), *quantizers* (attachment, the dense MAC count and the eager-attention
  re-capture's bookkeeping); beside them *forward*, one plain ``no_grad`` forward of the same
  model (not part of prepare: the unit the calibration and trial forwards are counted in);
- Torch-Pruning: ``torch_pruning.DependencyGraph().build_dependency(model, example_inputs)``.

Models: the zoo CNNs (`geta.testing.zoo`, tiny), a ResNet-50 (224x224, batch 1), a BERT-base
encoder (``transformers.BertModel``, random weights, 128 tokens), Llama-shaped decoders of 125 M
to 405 B parameters and a Mixtral-8x7B-shaped MoE built on the ``meta`` device (no weights;
Torch-Pruning is tried on the smallest Llama only). The headline: geta ÷ Torch-Pruning on the
models both handle (median), and the largest model geta analyses within 60 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import torch

from bench.results import machine, write_section

# name: (hidden, intermediate, layers, heads, kv_heads, vocab)
LLAMAS = {
    "llama-125M": (768, 2048, 12, 12, 4, 32000),
    "llama-1.1B": (2048, 5632, 22, 32, 4, 32000),
    "llama-7B": (4096, 11008, 32, 32, 32, 32000),
    "llama-70B": (8192, 28672, 80, 64, 8, 32000),
    "llama-405B": (16384, 53248, 126, 128, 8, 128256),
}
# Mixtral 8x7B: (hidden, expert intermediate, layers, heads, kv_heads, vocab, experts, top-k)
MIXTRAL = (4096, 14336, 32, 32, 8, 32000, 8, 2)
MID = ("resnet50", "bert-base")  # the mid-size models of the headline

_CHILD = r"""
import importlib, json, resource, sys, time, warnings
import torch
warnings.simplefilter("ignore")
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])

def build(spec):
    kind = spec["kind"]
    if kind == "zoo":
        from geta.testing import zoo
        return zoo.build(spec["name"])
    if kind == "resnet50":
        from bench.models import resnet50
        return resnet50(), (torch.randn(1, 3, 224, 224),)
    import transformers
    if kind == "bert":
        cfg = transformers.BertConfig(attn_implementation="eager")  # BERT-base: 768 x 12 layers
        return transformers.BertModel(cfg).eval(), {"input_ids": torch.randint(0, 1000, (1, 128))}
    ids = {"input_ids": torch.zeros(1, 32, dtype=torch.long, device="meta")}
    if kind == "llama":
        h, i, n, a, kv, v = spec["shape"]
        cfg = transformers.LlamaConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=n,
            num_attention_heads=a, num_key_value_heads=kv, vocab_size=v, use_cache=False)
        with torch.device("meta"):
            return transformers.LlamaForCausalLM(cfg), ids
    h, i, n, a, kv, v, e, k = spec["shape"]
    cfg = transformers.MixtralConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=n,
        num_attention_heads=a, num_key_value_heads=kv, vocab_size=v, num_local_experts=e,
        num_experts_per_tok=k, use_cache=False)
    with torch.device("meta"):
        return transformers.MixtralForCausalLM(cfg), ids

def warm_spec(spec, tool):
    # a tiny model of the same family (Torch-Pruning: always a CNN, HF decoders may hang it)
    family = {"bert": "hf_bert", "llama": "hf_llama", "mixtral": "hf_llama"}.get(spec["kind"], "resnet")
    return {"kind": "zoo", "name": family if tool == "geta" else "resnet"}

PHASES = {"capture": "capture", "analyze": "analysis", "apply_module_constraints": "analysis",
          "build_groups": "analysis", "_register_known_layers": "analysis",
          "unconvertible_groups": "trial", "dense_counts": "quant", "_weight_quantizers": "quant",
          "_attach_inputs": "quant",
          "_float_input_peaks": "calib", "_calibrate_products": "calib",
          "eager_multihead_attention": "quant", "_attach_eager_inputs": "quant",
          "_attach_products": "quant", "_carried_quantizers": "quant"}

def run_geta():
    import geta
    # prepare's steps live in two modules: each name is timed where it is looked up
    modules = [importlib.import_module(m) for m in ("geta.prepare", "geta.search_space")]
    times, stack = {}, []
    def timed(name, f):
        def g(*a, **k):
            t = time.process_time(); stack.append(name)
            try:
                return f(*a, **k)
            finally:
                dt = time.process_time() - t
                stack.pop()
                times[PHASES[name]] = times.get(PHASES[name], 0.0) + dt
                if stack:  # exclusive times: the caller's phase does not count it again
                    times[PHASES[stack[-1]]] -= dt
        return g
    for name in PHASES:
        for M in modules:
            if hasattr(M, name):
                setattr(M, name, timed(name, getattr(M, name)))
    config = geta.Config(act_bits=(4, 8))
    geta.prepare(*build(warm_spec(spec, "geta")), config)
    times.clear()
    model, inputs = build(spec)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t, c = time.perf_counter(), time.process_time()
    plan = geta.prepare(model, inputs, config)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return {"seconds": cpu, "wall": wall, **times, "groups": len(plan.groups),
            "prunable": len(plan.prunable_groups), "quantizers": len(plan.bindings),
            "params": sum(p.numel() for p in model.parameters()), "rss0": rss0}

def one_forward():
    model, inputs = build(spec)
    if any(p.is_meta for p in model.parameters()):
        return 0.0
    model.eval()
    args, kwargs = (inputs, {}) if isinstance(inputs, tuple) else ((), inputs)
    with torch.no_grad():
        model(*args, **kwargs)  # warm
        c = time.process_time()
        model(*args, **kwargs)
        return time.process_time() - c

def run_tp():
    import torch_pruning as tp
    m, x = build(warm_spec(spec, "tp"))
    tp.DependencyGraph().build_dependency(m, example_inputs=x)
    model, inputs = build(spec)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t, c = time.perf_counter(), time.process_time()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return {"seconds": cpu, "wall": wall, "groups": len(list(graph.get_all_groups())),
            "params": sum(p.numel() for p in model.parameters()), "rss0": rss0}

out = run_geta() if spec["tool"] == "geta" else run_tp()
out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if spec["tool"] == "geta":
    out["forward"] = one_forward()  # after the peak RSS: a second copy of the model
print(json.dumps(out))
"""


def measure(spec: dict[str, object], limit: float) -> dict[str, object]:
    """Run one (tool, model) child; its JSON result, or {"error": ...} / {"hang": limit}."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=limit,
        )
    except subprocess.TimeoutExpired:
        return {"hang": limit}
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
        return {"error": lines[-1][:90] if lines else f"exit status {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cell(r: dict[str, object]) -> str:
    if "hang" in r:
        return f"hang >{r['hang']:.0f}s"
    if "error" in r:
        return "fails"
    return f"{r['seconds']:.2f}"


def _models(max_billions: float) -> list[tuple[str, dict[str, object], bool]]:
    """(name, spec, run Torch-Pruning too) in order of size."""
    from geta.testing import zoo

    out: list[tuple[str, dict[str, object], bool]] = [
        (n, {"kind": "zoo", "name": n}, True) for n in zoo.names(["cnn"])
    ]
    out.append(("resnet50", {"kind": "resnet50"}, True))
    out.append(("bert-base", {"kind": "bert"}, True))
    for name, shape in LLAMAS.items():
        size = float(name.split("-")[1][:-1]) * (1e-3 if name.endswith("M") else 1.0)
        if size <= max_billions:
            out.append((name, {"kind": "llama", "shape": shape}, name == "llama-125M"))
    out.append(("mixtral-8x7B", {"kind": "mixtral", "shape": MIXTRAL}, False))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-billions", type=float, default=405.0, help="skip Llama shapes larger")
    parser.add_argument("--limit", type=float, default=120.0, help="seconds per run (small models)")
    parser.add_argument("--big-limit", type=float, default=600.0, help="seconds per meta-device run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every child")
    parser.add_argument("--only", default="", help="comma-separated model names (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # as in the children (and in the section's stamp)
    header = (
        f"{'model':<14} {'params':>16} {'TP s':>10} {'geta s':>8} {'ratio':>6} {'capture':>8} "
        f"{'analysis':>8} {'trial':>6} {'calib':>6} {'quant':>6} {'after/TP':>8} {'fwd':>6} "
        f"{'geta wall':>9} {'geta MiB':>9} "
        f"{'TP MiB':>7} {'groups':>7} {'prunable':>8}"
    )
    lines = [
        machine(),
        f"{args.threads} torch thread(s) per run; seconds are CPU seconds of the call (robust to a "
        "shared machine; equal to wall time on an idle one), 'geta wall' is wall time",
        "",
        header,
    ]
    print("\n".join(lines), flush=True)
    ratios: dict[str, tuple[float, float]] = {}  # model -> (geta ÷ TP, after capture ÷ TP)
    failures: list[str] = []
    largest = ("none", 0.0, 0.0, 0.0)
    only = set(filter(None, args.only.split(",")))
    for name, spec, with_tp in _models(args.max_billions):
        if only and name not in only:
            continue
        limit = args.big_limit if spec["kind"] in ("llama", "mixtral") else args.limit
        g = measure({**spec, "tool": "geta", "threads": args.threads}, limit)
        t = measure({**spec, "tool": "tp", "threads": args.threads}, args.limit) if with_tp else {}
        for tool, r in (("geta", g), ("Torch-Pruning", t)):
            if "error" in r:
                failures.append(f"{name}: {tool} fails: {r['error']}")
        if "seconds" not in g:
            lines.append(f"{name:<14} {'':>16} {_cell(t) if t else '-':>10} {_cell(g):>8}")
            print(lines[-1], flush=True)
            continue
        both = "seconds" in t
        if both:
            after = g["seconds"] - g.get("capture", 0.0)
            ratios[name] = (g["seconds"] / t["seconds"], after / t["seconds"])
        if g["wall"] <= 60 and g["params"] > largest[1]:
            largest = (name, g["params"], g["wall"], g["peak_mib"])
        ratio, after_ratio = (f"{x:.2f}" for x in ratios[name]) if both else ("-", "-")
        lines.append(
            f"{name:<14} {g['params']:>16,} {_cell(t) if t else '-':>10} {g['seconds']:>8.2f} "
            f"{ratio:>6} {g.get('capture', 0.0):>8.2f} {g.get('analysis', 0.0):>8.2f} "
            f"{g.get('trial', 0.0):>6.2f} {g.get('calib', 0.0):>6.2f} {g.get('quant', 0.0):>6.2f} "
            f"{after_ratio:>8} {g.get('forward', 0.0):>6.2f} "
            f"{g['wall']:>9.2f} {g['peak_mib']:>9.0f} {t['peak_mib'] if both else 0:>7.0f} "
            f"{g['groups']:>7} {g['prunable']:>8}"
        )
        print(lines[-1], flush=True)
    tail = len(lines)
    lines += ["", *failures] if failures else []
    lines.append(
        "ratio = geta ÷ Torch-Pruning (whole prepare vs whole build, target <= 2); after/TP = "
        "geta after capture ÷ Torch-Pruning's whole build (target <= 1); trial = trial "
        "conversion (meta-device forwards above 20 M parameters); calib = the calibration forwards "
        "(layer inputs, then attention products); quant = quantizer attachment and dense counts; "
        "fwd = one no_grad forward of the float model (not part of prepare; Torch-Pruning's build "
        "runs one forward with autograd)"
    )
    mid = [f"{n} {r:.1f}x (after capture {a:.1f}x)" for n, (r, a) in ratios.items() if n in MID]
    tiny = [r for n, (r, _) in ratios.items() if n not in MID and not n.startswith("llama")]
    zoo = f"zoo CNNs median {statistics.median(tiny):.0f}x" if tiny else "zoo CNNs not run"
    lines.append(
        f"headline: geta ÷ Torch-Pruning {', '.join(mid) or 'not run'}; {zoo}; largest model "
        f"analysed within 60 s = {largest[0]} ({largest[1] / 1e9:.1f} B parameters, "
        f"{largest[2]:.1f} s wall, {largest[3] / 1024:.2f} GiB peak RSS)"
    )
    print("\n".join(lines[tail:]))
    write_section("prepare at scale", lines)


if __name__ == "__main__":
    main()
