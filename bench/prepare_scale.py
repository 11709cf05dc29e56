"""Graph analysis at scale: wall time and memory of `geta.prepare` on models of growing size.

Llama-shaped configurations are built on the ``meta`` device, so no weights exist: what is
measured is capture, channel-space analysis, the trial conversion (shape-only on meta) and
quantizer attachment. Each model is prepared in a fresh subprocess so that peak RSS belongs to
it alone. The headline is the largest model analysed within 60 s.

    python -m bench.prepare_scale [--max-billions 7]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench.results import write_section

# name: (hidden, intermediate, layers, heads, kv_heads, vocab)
LLAMAS = {
    "llama-125M": (768, 2048, 12, 12, 4, 32000),
    "llama-1.1B": (2048, 5632, 22, 32, 4, 32000),
    "llama-7B": (4096, 11008, 32, 32, 32, 32000),
}

_CHILD = r"""
import json, resource, sys, time, torch, geta
spec = json.loads(sys.argv[1])
if spec["kind"] == "zoo":
    from geta.testing import zoo
    model, inputs = zoo.build(spec["name"])
else:
    import transformers
    h, i, n, a, kv, v = spec["shape"]
    cfg = transformers.LlamaConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=n,
                                   num_attention_heads=a, num_key_value_heads=kv, vocab_size=v)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    inputs = {"input_ids": torch.zeros(1, 32, dtype=torch.long, device="meta")}
t = time.perf_counter()
plan = geta.prepare(model, inputs, geta.Config(act_bits=(4, 8)))
seconds = time.perf_counter() - t
print(json.dumps({"params": sum(p.numel() for p in model.parameters()), "seconds": seconds,
                  "groups": len(plan.groups), "prunable": len(plan.prunable_groups),
                  "quantizers": len(plan.bindings),
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _measure(spec: dict[str, object]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(spec)],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-billions", type=float, default=7.0, help="skip Llama shapes larger than this")
    args = parser.parse_args()
    specs: list[tuple[str, dict[str, object]]] = [
        (n, {"kind": "zoo", "name": n}) for n in ("resnet", "hf_bert", "hf_llama")
    ]
    for name, shape in LLAMAS.items():
        if float(name.split("-")[1].rstrip("MB")) / (1000 if name.endswith("M") else 1) <= args.max_billions:
            specs.append((name, {"kind": "llama", "shape": shape}))
    lines = [
        f"{'model':<12} {'params':>14} {'prepare s':>10} {'peak RSS MiB':>13} {'groups':>7} "
        f"{'prunable':>9} {'quantizers':>11}"
    ]
    largest = ("none", 0.0)
    for name, spec in specs:
        r = _measure(spec)
        lines.append(
            f"{name:<12} {int(r['params']):>14,} {r['seconds']:>10.2f} {r['peak_mib']:>13.0f} "
            f"{int(r['groups']):>7} {int(r['prunable']):>9} {int(r['quantizers']):>11}"
        )
        if r["seconds"] <= 60 and r["params"] > largest[1]:
            largest = (name, r["params"])
    lines.append(
        "Torch-Pruning's DependencyGraph is not installed in this environment: no side-by-side ratio."
    )
    lines.append(
        f"headline: largest model analysed within 60 s = {largest[0]} ({largest[1] / 1e9:.2f} B parameters)"
    )
    print("\n".join(lines))
    write_section("prepare at scale", lines)


if __name__ == "__main__":
    main()
