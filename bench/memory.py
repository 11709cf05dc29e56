"""Peak memory of training: float AdamW vs geta (QASSO adamw) on a Llama shape.

    python -m bench.memory [--shape 125M] [--steps 3] [--device cpu]

Each configuration runs in a fresh process: a random Llama (``transformers``), ``steps`` training
steps on one batch (causal-LM loss), and its peak memory — on CUDA
``torch.cuda.max_memory_allocated``; on the CPU the resident set sampled every millisecond by a
thread during the steps, with glibc's mmap threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``)
so that every tensor of any size is its own mapping and is returned to the system when freed:
the peak then follows the live tensors, as the CUDA allocator's statistics do. "training MiB"
is that peak minus the resident set just before the first step (Python, torch, the model).
Configurations:

- ``float``: the model, ``torch.optim.AdamW``;
- ``geta W`` / ``geta W+A``: prepared with weight (and layer-input) quantizers, QASSO adamw
  in its joint (pruning) stage;
- ``... recompute``: the same with ``Config.recompute_quantized`` (geta's default): every
  training forward runs inside ``geta.quant.recompute_quantized()``, so the fake-quant outputs
  are recomputed in the backward instead of kept; the rows without it set it to False.

Target (issue 19): geta W+A <= 1.15 x float.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import torch

from bench.results import machine, write_section

__all__ = ["SHAPES", "measure", "worker"]

SHAPES = {  # (hidden, intermediate, layers, heads, kv heads, vocab, batch, seq)
    "125M": (768, 2048, 12, 12, 4, 32000, 2, 256),
    "10M": (256, 688, 4, 4, 2, 8000, 2, 128),
}
MODES = ("float", "geta W", "geta W+A", "geta W recompute", "geta W+A recompute")


def worker(mode: str, shape: str, device: str, steps: int) -> dict[str, float]:
    """Peak memory (MiB) of ``steps`` training steps of one configuration, in this process."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import geta
    from geta.optim import QASSO, Schedule

    torch.set_num_threads(1)
    dev = torch.device(device)
    hidden, inter, layers, heads, kv, vocab, batch, seq = SHAPES[shape]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=seq,
                      use_cache=False, attn_implementation="sdpa")  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(dev)
    ids = torch.randint(0, vocab, (batch, seq), device=dev)
    if mode == "float":
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    else:
        act = (4, 8) if "W+A" in mode else None
        config = geta.Config(
            target_sparsity=0.3, weight_bits=(4, 8), act_bits=act, recompute_quantized="recompute" in mode
        )
        plan = geta.prepare(model, {"input_ids": ids[:1]}, config)
        opt = QASSO(plan, lr=1e-4, variant="adamw", schedule=Schedule(joint=steps + 1, pruning_periods=1))
    sampler = _RssSampler()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev) / 2**20
    else:
        before = sampler.start()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        return {"peak": torch.cuda.max_memory_allocated(dev) / 2**20, "before": before}
    return {"peak": sampler.stop(), "before": before}


class _RssSampler:
    """Peak resident set (MiB) of this process, read from /proc every millisecond by a thread."""

    def __init__(self) -> None:
        self.peak, self.running = 0.0, False
        self.page = os.sysconf("SC_PAGE_SIZE") / 2**20

    def rss(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def start(self) -> float:
        self.running, self.peak = True, self.rss()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self.peak

    def _run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.001)

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        return max(self.peak, self.rss())


def measure(device: torch.device, shape: str, steps: int) -> list[str]:
    """One row per configuration: peak MiB and its ratio to float."""
    peaks: dict[str, dict[str, float]] = {}
    for mode in MODES:
        call = f"m.worker({mode!r}, {shape!r}, {str(device)!r}, {steps})"
        code = f"import json, bench.memory as m; print(json.dumps({call}))"
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        ).stdout
        peaks[mode] = json.loads(out.strip().splitlines()[-1])
    kind = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "sampled peak RSS"
    batch, seq = SHAPES[shape][6:]
    lines = [
        f"Llama {shape}, batch {batch} x seq {seq}, {steps} AdamW steps on {device}; {kind}",
        f"{'run':<20} {'peak MiB':>9} {'÷ float':>8}  {'training MiB':>12} {'÷ float':>8}",
    ]
    f = peaks["float"]
    for mode, p in peaks.items():
        grow, grow_f = p["peak"] - p["before"], f["peak"] - f["before"]
        lines.append(
            f"{mode:<20} {p['peak']:9.0f} {p['peak'] / f['peak']:8.3f}  {grow:12.0f} {grow / grow_f:8.3f}"
        )
    lines.append("training MiB = peak minus the memory held before the first step (model, optimizer set-up)")
    w = peaks["geta W+A recompute"]["peak"] / f["peak"]
    lines.append(f"headline: geta W+A (recompute, the default) peak ÷ float AdamW {w:.3f} (target <= 1.15)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="125M")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    lines = [machine(), *measure(torch.device(args.device), args.shape, args.steps)]
    print("\n".join(lines))
    write_section("training memory", lines)


if __name__ == "__main__":
    main()
