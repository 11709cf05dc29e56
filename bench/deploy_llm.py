"""Deployment of a compressed language model: geta's GGUF against the float GGUF, in llama.cpp.

    python -m bench.deploy --llm-only [--threads 2] [--llm-rounds 21]
    python -m bench.deploy_llm          (the same, on its own)

Needs the ``deploy`` extra (llama-cpp-python: ``make deploy-venv``). What it does, as a user
would (the commands of docs/deploy.md, "Deploy a compressed LLM"):

1. a Llama (hidden 128, 2 layers, 4 query over 2 key/value heads of 32, MLP 384) with a
   byte-level BPE tokenizer of 512 tokens trained on the default corpus
   (`geta.recipes.text.default_corpus`), written as a Hugging Face checkpoint;
2. ``geta compress --model hf:CKPT --data text --seq-len 64 --dense-epochs 6 --epochs 6
   --sparsity 0.5 --act-bits none --uniform-layers``: dense training, then weights-only
   compression with the same sizes in every layer;
3. ``geta export RUN --format gguf``, and the run's dense model as float GGUFs (F16, the usual
   llama.cpp baseline, and F32) with `geta.export.gguf`;
4. in llama.cpp: perplexity on held-out text (the source of ``pprint``, not in the training
   corpus; windows of 128 tokens), greedy next-token agreement with geta's torch model, and
   tokens per second for a 128-token prompt and 64 generated tokens (wall clock through
   llama-cpp-python, medians of interleaved rounds);
5. file sizes: the original checkpoint, the run's ``hf/`` folder, the GGUFs and ``model.geta``.
"""

from __future__ import annotations

import argparse
import os
import pprint
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.results import machine, write_section

__all__ = ["SECTION", "run_llm"]

SECTION = "deployment: a compressed LLM in llama.cpp"
WINDOW, WINDOWS, PROMPT, GENERATE = 128, 8, 128, 64
# The checkpoint is random, so its dense phase trains from scratch: at the transformer recipes'
# rate (hf:DIR's own defaults, 1e-4 and distillation, are for a pretrained checkpoint: from
# scratch they left this model at perplexity 275 against 70)
COMPRESS = ["--data", "text", "--seq-len", "64", "--dense-epochs", "6", "--dense-lr", "3e-3",
            "--distill", "0", "--epochs", "6", "--batch-size", "32", "--sparsity", "0.5",
            "--act-bits", "none", "--uniform-layers", "--no-plots", "--quiet"]  # fmt: skip


def _checkpoint(folder: Path) -> None:
    """The Llama and its tokenizer, randomly initialised, as a save_pretrained folder."""
    import transformers

    from geta.recipes.tiny import tiny_config, train_tokenizer

    tok = train_tokenizer(vocab_size=512)
    config = tiny_config(
        "llama", len(tok), hidden_size=128, intermediate_size=384, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)


def _dense(ckpt: Path, run: Path) -> Any:
    """The run's dense reference: the checkpoint's class with the weights of dense.pt."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt)
    state = torch.load(run / "dense.pt", weights_only=True)
    state = {k.removeprefix("lm."): v for k, v in state.items()}
    model.load_state_dict(state)
    return model.eval()


def _bytes(path: Path) -> int:
    return (
        sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def _quality(path: Path, ids: list[int], torch_model: Any, threads: int) -> tuple[float, float]:
    """(llama.cpp's perplexity on ``ids``, greedy agreement with ``torch_model``), windows of WINDOW."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=WINDOW, logits_all=True, verbose=False, n_threads=threads)
    nll, count, agree = 0.0, 0, 0
    for start in range(0, WINDOWS * WINDOW, WINDOW):
        window = ids[start : start + WINDOW]
        llm.reset()
        llm.eval(window)
        theirs = torch.from_numpy(np.array(llm.scores[: len(window)], dtype=np.float32))
        with torch.no_grad():
            ours = torch_model(input_ids=torch.tensor([window])).logits[0].float()
        nll += float(
            torch.nn.functional.cross_entropy(theirs[:-1], torch.tensor(window[1:]), reduction="sum")
        )
        count += len(window) - 1
        agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
    return float(np.exp(nll / count)), agree / (WINDOWS * WINDOW)


def _torch_perplexity(model: Any, ids: list[int]) -> float:
    nll, count = 0.0, 0
    for start in range(0, WINDOWS * WINDOW, WINDOW):
        window = torch.tensor([ids[start : start + WINDOW]])
        with torch.no_grad():
            nll += float(model(input_ids=window, labels=window).loss) * (window.shape[1] - 1)
        count += window.shape[1] - 1
    return float(np.exp(nll / count))


def _one_round(llm: Any, prompt: list[int]) -> tuple[float, float]:
    """(prompt tokens/s, generated tokens/s) of one greedy generation of GENERATE tokens.

    Wall clock through llama-cpp-python, as a Python user sees it: the first token arrives after
    the prompt's evaluation, each later one after one decoding step (and a greedy sampling step).
    """
    stamps = []
    llm.reset()  # else generate() reuses the cached prompt of the previous round
    t0 = time.perf_counter()
    for _, _token in zip(range(GENERATE), llm.generate(prompt, top_k=1, temp=0.0, reset=True)):
        stamps.append(time.perf_counter())
    return len(prompt) / (stamps[0] - t0), (len(stamps) - 1) / (stamps[-1] - stamps[0])


def _speed(
    paths: dict[str, Path], prompt: list[int], threads: int, rounds: int
) -> dict[str, tuple[float, float]]:
    """label -> (prompt tokens/s, generated tokens/s): medians of interleaved rounds."""
    import llama_cpp

    llms = {k: llama_cpp.Llama(str(p), n_ctx=PROMPT + GENERATE + 8, n_batch=PROMPT, n_threads=threads,
                               n_threads_batch=threads, verbose=False) for k, p in paths.items()}  # fmt: skip
    rates: dict[str, list[tuple[float, float]]] = {k: [] for k in paths}
    order = list(paths)
    for r in range(rounds + 1):  # round 0 warms up
        for label in order if r % 2 else order[::-1]:
            rate = _one_round(llms[label], prompt)
            if r:
                rates[label].append(rate)
    return {
        k: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v)) for k, v in rates.items()
    }


@dataclass
class Measured:
    """Everything the section reports."""

    setup_seconds: float
    quality: dict[str, tuple[float, float]]  # GGUF label -> (llama.cpp perplexity, argmax agreement)
    speed: dict[str, tuple[float, float]]  # GGUF label -> (prompt tokens/s, generated tokens/s)
    sizes_kib: dict[str, float]
    torch_ppl: dict[str, float]
    types: list[str]  # ggml types in geta's GGUF


def _measure(root: Path, threads: int, rounds: int) -> Measured:
    """Build, compress, export and run everything in folder ``root`` (module docstring)."""
    from transformers import AutoTokenizer

    import geta.export
    from geta.cli.main import main as geta_main
    from geta.export.gguf_layout import causal_lm

    ckpt, run = root / "ckpt", root / "run"
    t0 = time.perf_counter()
    _checkpoint(ckpt)
    assert geta_main(["compress", "--model", f"hf:{ckpt}", *COMPRESS, "--out", str(run)]) == 0
    assert geta_main(["export", str(run), "--format", "gguf", "--out", str(run / "model.gguf")]) == 0
    setup = time.perf_counter() - t0
    dense = _dense(ckpt, run)
    files = {"geta Q": run / "model.gguf", "float F16": root / "f16.gguf", "float F32": root / "f32.gguf"}
    for kind in ("F16", "F32"):
        geta.export.gguf(dense, files[f"float {kind}"], tokenizer=ckpt, float_type=kind)
    small = causal_lm(torch.load(run / "compressed.pt", weights_only=False)).eval()
    ids = AutoTokenizer.from_pretrained(ckpt)(Path(pprint.__file__).read_text())["input_ids"]
    sizes = {"original checkpoint": ckpt / "model.safetensors", "hf/": run / "hf",
             "model.geta": run / "model.geta", **{f"GGUF {k}": p for k, p in files.items()}}  # fmt: skip
    return Measured(
        setup_seconds=setup,
        quality={k: _quality(p, ids, small if k == "geta Q" else dense, threads) for k, p in files.items()},
        speed=_speed({k: files[k] for k in ("geta Q", "float F16")}, ids[:PROMPT], threads, rounds),
        sizes_kib={k: _bytes(p) / 1024 for k, p in sizes.items()},
        torch_ppl={"dense": _torch_perplexity(dense, ids), "geta": _torch_perplexity(small, ids)},
        types=sorted({t.type for t in geta.export.gguf(small, root / "again.gguf").tensors}),
    )


def run_llm(threads: int, rounds: int) -> list[str]:
    """The section's lines (module docstring)."""
    import llama_cpp

    with tempfile.TemporaryDirectory() as tmp:
        m = _measure(Path(tmp), threads, rounds)
    lines = [
        "Llama hidden 128, 2 layers, 4/2 heads of 32, MLP 384, BPE vocab 512; "
        f"geta compress {' '.join(COMPRESS[:-2])} + export gguf: {m.setup_seconds:.0f} s; "
        f"llama-cpp-python {llama_cpp.__version__}, {threads} threads",
        f"  held-out perplexity (pprint.py, {WINDOWS} windows of {WINDOW} tokens) in torch: dense "
        f"{m.torch_ppl['dense']:.2f}, geta {m.torch_ppl['geta']:.2f}",
        f"  {'GGUF':<10} {'KiB':>8} {'ppl':>8} {'argmax = torch':>15} {'prompt tok/s':>13} {'gen tok/s':>10}",
    ]
    for label, (ppl, agree) in m.quality.items():
        rate = m.speed.get(label)
        timing = f"{rate[0]:>13.0f} {rate[1]:>10.0f}" if rate else f"{'-':>13} {'-':>10}"
        size = m.sizes_kib[f"GGUF {label}"]
        lines.append(f"  {label:<10} {size:>8.0f} {ppl:>8.2f} {agree:>15.1%} {timing}")
    geta_q, f16 = m.speed["geta Q"], m.speed["float F16"]
    lines += [
        f"  (geta Q: ggml types {', '.join(m.types)}; argmax agreement with the torch model each came from; "
        f"tokens/s: wall clock through llama-cpp-python, {PROMPT}-token prompt, {GENERATE} generated, "
        f"median of {rounds})",
        "  file sizes (KiB): " + ", ".join(f"{k} {v:.0f}" for k, v in m.sizes_kib.items()),
        "  (tokens/s move between runs. The F16 weights are 1 MB, so per-token time is mostly "
        "llama.cpp's and Python's fixed cost, not weight reads)",
        f"headline: geta's GGUF generates {geta_q[1] / f16[1]:.2f}x as fast as the F16 GGUF (prompt "
        f"{geta_q[0] / f16[0]:.2f}x) at {m.sizes_kib['GGUF geta Q'] / m.sizes_kib['GGUF float F16']:.0%} of "
        f"its size; llama.cpp perplexity {m.quality['geta Q'][0]:.2f} vs {m.quality['float F16'][0]:.2f}",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument("--llm-rounds", type=int, default=21, help="interleaved timing rounds")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    write_llm_section(args)


def write_llm_section(args: argparse.Namespace) -> None:
    """Run the section, print it, and write it into docs/benchmarks.md unless ``args.no_write``."""
    torch.set_num_threads(args.threads)
    lines = [machine(), *run_llm(args.threads, args.llm_rounds)]
    print("\n".join(lines), flush=True)
    if not args.no_write:
        write_section(SECTION, lines)


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
