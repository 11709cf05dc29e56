"""llama.cpp runs geta's GGUF as geta runs the model (``make test-deploy``; needs llama-cpp-python).

A tiny Llama and a tiny Qwen2 with tied embeddings, each with a BPE tokenizer trained here,
are trained and compressed weights-only with ``--uniform-layers`` by ``geta compress``, then
written by ``geta export --format gguf``. On held-out text (another standard-library module)
llama.cpp must tokenize exactly as the tokenizer does, reach a perplexity within 2 % of the
geta model's and agree on the greedy next token at ≥ 95 % of the positions. (llama.cpp
quantizes activations to 8 bits per block of 32 in its dot products and keeps the key/value
cache in fp16, so bit equality is not expected; the weights themselves are exact up to the
fp16 block scale.)
"""

from __future__ import annotations

import fnmatch
import glob
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from geta.cli.main import main

pytestmark = pytest.mark.deploy
llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")

TRAIN, HELD_OUT = Path(fnmatch.__file__), Path(glob.__file__)
WINDOW = 128


def _checkpoint(folder: Path, family: str) -> Path:
    """A random tiny checkpoint and its BPE tokenizer; Qwen2's embeddings are tied, as in Qwen2 releases."""
    import transformers

    from geta.recipes.tiny import tiny_config, train_tokenizer

    tokenizer = train_tokenizer(vocab_size=384)
    config = tiny_config(family, len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    config.tie_word_embeddings = family == "qwen2"
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder, GGUF file) of a compressed tiny model."""
    root = tmp_path_factory.mktemp(request.param)
    ckpt = _checkpoint(root / "ckpt", request.param)
    run, target = root / "run", root / "model.gguf"
    argv = ["compress", "--model", f"hf:{ckpt}", "--data", f"text:{TRAIN}", "--seq-len", "32",
            "--dense-epochs", "4", "--epochs", "4", "--batch-size", "32", "--sparsity", "0.35",
            "--act-bits", "none", "--uniform-layers", "--no-plots", "--no-export", "--quiet",
            "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    assert main(["export", str(run), "--format", "gguf", "--out", str(target)]) == 0
    return run, target


def _logits(llm: Any, model: Any, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(geta's, llama.cpp's) logits of one window of token ids."""
    llm.reset()
    llm.eval(ids)
    theirs = torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))
    with torch.no_grad():
        ours = model(input_ids=torch.tensor([ids])).logits[0].float()
    return ours, theirs


def test_llama_cpp_computes_what_geta_computes(exported: tuple[Path, Path]) -> None:
    from transformers import AutoTokenizer

    from geta.export.gguf_layout import causal_lm

    run, target = exported
    reader = gguf.GGUFReader(target)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    kinds = (".attn_q.weight", ".attn_k.weight", ".attn_v.weight", ".attn_output.weight", ".ffn_gate.weight",
             ".ffn_up.weight", ".ffn_down.weight")  # fmt: skip
    projections = [n for n in types if n.endswith(kinds)]
    assert len(projections) == 14 and all(types[n] in {"Q4_0", "Q5_0", "Q8_0"} for n in projections)
    model = causal_lm(torch.load(run / "compressed.pt", weights_only=False)).eval()
    tokenizer = AutoTokenizer.from_pretrained(run.parent / "ckpt")
    text = HELD_OUT.read_text()
    llm = llama_cpp.Llama(str(target), n_ctx=WINDOW, logits_all=True, verbose=False, n_threads=1)
    ids = tokenizer(text)["input_ids"]
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids  # the embedded tokenizer
    nll = {"geta": 0.0, "llama.cpp": 0.0}
    agree = count = 0
    for start in range(0, min(len(ids), 8 * WINDOW) - WINDOW + 1, WINDOW):
        window = ids[start : start + WINDOW]
        ours, theirs = _logits(llm, model, window)
        targets = torch.tensor(window[1:])
        for name, logits in (("geta", ours), ("llama.cpp", theirs)):
            nll[name] += float(torch.nn.functional.cross_entropy(logits[:-1], targets, reduction="sum"))
        agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
        count += len(window)
    ppl = {name: float(np.exp(total / (count - count // WINDOW))) for name, total in nll.items()}
    assert abs(ppl["llama.cpp"] / ppl["geta"] - 1) <= 0.02, ppl
    assert agree / count >= 0.95, agree / count


@pytest.mark.parametrize("bits", [5, 8])
def test_wider_codes_run_in_q5_0_and_q8_0(exported: tuple[Path, Path], bits: int, tmp_path: Path) -> None:
    """The run's dense model at ``bits``-bit weights (a quarter of the groups pruned, no training)."""
    import transformers

    import geta

    run, _ = exported
    ckpt = run.parent / "ckpt"
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt)
    state = torch.load(run / "dense.pt", weights_only=True)
    model.load_state_dict({k.removeprefix("lm."): v for k, v in state.items()})
    ids = torch.tensor([list(range(2, 2 + WINDOW))])
    plan = geta.prepare(
        model, {"input_ids": ids[:, :8]}, geta.Config(weight_bits=(bits, bits), uniform_layers=True)
    )
    geta.testing.zero_random_groups(plan, 0.25, seed=0)
    with torch.no_grad():
        for q in plan.quantizers.values():
            q.set_bits(bits)
    small = geta.convert(model.eval(), plan).eval()
    info = geta.export.gguf(small, tmp_path / "m.gguf", tokenizer=ckpt)
    assert {t.type for t in info.tensors if t.rounding} == {"Q5_0" if bits == 5 else "Q8_0"}
    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), n_ctx=WINDOW, logits_all=True, verbose=False, n_threads=1)
    ours, theirs = _logits(llm, small, ids[0].tolist())
    assert float((ours - theirs).abs().max() / ours.abs().max()) <= 0.02  # llama.cpp's 8-bit activations
    assert float((ours.argmax(-1) == theirs.argmax(-1)).float().mean()) >= 0.95
