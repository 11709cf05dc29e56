"""The sweep that chose ``hf:DIR``'s training defaults, on the compression benchmark's ``lm`` task.

    python -m bench.lm_defaults [--seeds 1] [--lrs 3e-3,1e-3,3e-4,1e-4] [--distill 0,1] [--jobs 2]

A pretrained model (`bench.compression_lm`: dense on the pretraining split, cached per seed)
compressed by geta (W+A, bits in [2, 8], sparsity 0.3, the default budget) on the calibration
split with the task's fixed step budget, at each learning rate with and without distillation
from the dense model (weight 1, T = 2, the CLI's ``--distill``); the dense float fine-tune at
each learning rate for reference. Prints held-out perplexity (mean ± std over seeds) against the
dense model's; writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from bench.compression import _run

SPARSITY = 0.3


def _fmt(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--lrs", default="3e-3,1e-3,3e-4,1e-4")
    parser.add_argument("--distill", default="0,1")
    parser.add_argument("--float", action="store_true", help="also the dense float fine-tune per lr")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    lrs = [float(v) for v in args.lrs.split(",")]
    distills = [float(v) for v in args.distill.split(",")]
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        dense = [pool.submit(_run, "job_dense", "lm", s) for s in seeds]
        start = [f.result()["acc"] for f in dense]
        runs = {
            (lr, d): [pool.submit(_run, "job_geta", "lm", s, {"sparsity": SPARSITY, "lr": lr, "distill": d})
                      for s in seeds]
            for lr in lrs for d in distills
        }  # fmt: skip
        floats = {
            lr: [pool.submit(_run, "job_float", "lm", s, lr) for s in seeds] for lr in lrs if args.float
        }
        rows = [f"dense (start): held-out perplexity {_fmt(start)}"]
        for (lr, d), futures in runs.items():
            rs = [f.result() for f in futures]
            rows.append(f"geta lr {lr:g} distill {d:g}: {_fmt([r['acc'] for r in rs])} "
                        f"(joint max {_fmt([r['joint_min'] for r in rs])}, "
                        f"rel. BOPs {100 * statistics.fmean(r['bops'] for r in rs):.3f} %, "
                        f"{statistics.fmean(r['seconds'] for r in rs):.0f} s)")  # fmt: skip
            print(rows[-1], flush=True)
        for lr, futures in floats.items():
            rows.append(f"dense float fine-tune lr {lr:g}: {_fmt([f.result()['acc'] for f in futures])}")
            print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
