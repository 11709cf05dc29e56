"""The training-cost check on a GPU (issue 19), about 8 minutes on one CUDA device.

    python -m bench.gpu [--device cuda] [--quick]

Three parts, each printed as it finishes:

1. step ratios: `bench.compile_step.measure_compile` on the CNN and the Llama of
   `bench.qasso_step` — geta (W+A, QASSO joint stage) ÷ float (SGD), eager and compiled;
2. memory: `bench.memory` on the device — peak memory of 5 AdamW training steps of a Llama
   (125 M parameters, batch 2 x 256; ``--quick``: a 10 M shape), float vs geta;
3. a short compression: ``geta compress`` on the default recipe for 4 epochs on the device.

Nothing is written to docs/: paste the output into docs/benchmarks.md with the machine's name.
``--device cpu --quick`` runs the same code on the CPU in a few minutes (to keep it working).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

import torch

__all__ = ["main"]


def _clock(device: torch.device):
    if device.type == "cuda":
        return lambda: (torch.cuda.synchronize(device), time.perf_counter())[1]
    return time.perf_counter


def step_ratios(device: torch.device, steps: int) -> list[str]:
    from bench.compile_step import measure_compile
    from bench.qasso_step import cnn_task, llama_task

    lines = []
    for make in (cnn_task, llama_task):
        task = make()
        task.model.to(device)
        task.batch = (
            tuple(t.to(device) for t in task.batch)
            if isinstance(task.batch, tuple)
            else task.batch.to(device)
        )
        ex = task.example
        task.example = (
            {k: v.to(device) for k, v in ex.items()}
            if isinstance(ex, dict)
            else tuple(t.to(device) for t in ex)
        )
        lines += measure_compile(task, steps, _clock(device))[0]
    return lines


def memory(device: torch.device, shape: str) -> list[str]:
    from bench.memory import measure

    return measure(device, shape, steps=5)


def compression(device: torch.device, epochs: int) -> list[str]:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "geta.cli.main", "compress", "--out", out, "--overwrite",
               "--device", str(device), "--epochs", str(epochs), "--dense-epochs", "1"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        return [f"compression: geta compress, {epochs} epochs on {device}: exit {done.returncode}, "
                f"{time.perf_counter() - t0:.0f} s", *("  " + line for line in tail)]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="fewer steps, the 10 M memory shape, 2 epochs")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "bench.gpu: --device cuda but torch sees no CUDA device (use --device cpu to try it on the CPU)"
        )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device}: {name}; torch {torch.__version__}")
    for part in (
        lambda: step_ratios(device, 4 if args.quick else 24),
        lambda: memory(device, "10M" if args.quick else "125M"),
        lambda: compression(device, 2 if args.quick else 4),
    ):
        print("\n".join(part()), flush=True)


if __name__ == "__main__":
    main()
