"""``Config(uniform_layers=True)`` + ``pretrained(..., plain=True)``: a folder plain transformers loads.

A tiny random 3-layer Llama / Qwen2 checkpoint is written with ``save_pretrained``, read back,
compressed by a short QASSO run (weights only, so that plain HF computes what geta computes),
converted and exported with ``plain=True``. A fresh Python process that never imports geta
then loads the folder with ``AutoModelForCausalLM.from_pretrained`` and must give the
converted model's logits. Around it: convert keeps groups of a kind at one count, the plain
export refuses a model whose layers differ, and the option's validation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import geta
from geta.export import ExportError, load_pretrained, pretrained
from geta.testing import max_relative_error

pytest.importorskip("transformers")

FAMILIES = ["llama", "qwen2"]
VOCAB, SEQ = 96, 16
# 3 layers of (2 kv heads, 48 MLP units): at sparsity 0.35 the uniform quotas are (1, 17, 1, 17, 0, 17),
# so the layers differ unless the option evens them out
SIZES = dict(num_hidden_layers=3, intermediate_size=48, attn_implementation="eager")

LOADER = """
import json, sys, torch, transformers
logits = {}
for folder in sys.argv[2:]:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        logits[folder] = model(input_ids=torch.load(sys.argv[1])).logits
torch.save(logits, sys.argv[1] + ".out")
print(json.dumps({"geta_imported": any(m.split(".")[0] == "geta" for m in sys.modules)}))
"""


@dataclass
class Run:
    family: str
    converted: nn.Module
    folder: Path
    logits: torch.Tensor  # the converted model's, on IDS


def _checkpoint(family: str, folder: Path) -> nn.Module:
    """A random tiny checkpoint written with save_pretrained and read back as a user would."""
    import transformers

    from geta.recipes.tiny import tiny_config

    transformers.AutoModelForCausalLM.from_config(tiny_config(family, VOCAB, **SIZES)).save_pretrained(folder)
    return transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")


def _compress(model: nn.Module, ids: torch.Tensor) -> nn.Module:
    """A short QASSO run (weights at 4-8 bits, no activation quantizers), then convert."""
    config = geta.Config(target_sparsity=0.35, weight_bits=(4, 8), uniform_layers=True)
    plan = geta.prepare(model, {"input_ids": ids[:2]}, config)
    schedule = geta.Schedule(
        warmup=1, projection=2, joint=4, cooldown=1, projection_periods=1, pruning_periods=2
    )
    opt = geta.QASSO(plan, 1e-3, lr_quant=1e-3, variant="adamw", schedule=schedule)
    model.train()
    for _ in range(8):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert plan.group_sparsity() > 0.2
    return geta.convert(model.eval(), plan).eval()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("plain")
    ids = torch.randint(0, VOCAB, (4, SEQ))
    out: dict[str, Run] = {}
    for family in FAMILIES:
        converted = _compress(_checkpoint(family, root / f"{family}-dense"), ids)
        with torch.no_grad():
            logits = converted(input_ids=ids).logits
        pretrained(converted, root / family, plain=True)
        out[family] = Run(family, converted, root / family, logits)
    torch.save(ids, root / "ids.pt")
    return out


@pytest.fixture(scope="module")
def plain_logits(runs: dict[str, Run]) -> tuple[dict[str, torch.Tensor], bool]:
    """Logits of every folder loaded by plain transformers in a process without geta."""
    ids = next(iter(runs.values())).folder.parent / "ids.pt"
    folders = [str(r.folder) for r in runs.values()]
    done = subprocess.run(
        [sys.executable, "-c", LOADER, str(ids), *folders], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    flags = json.loads(done.stdout.strip().splitlines()[-1])
    return torch.load(str(ids) + ".out"), flags["geta_imported"]


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_transformers_loads_the_folder_and_gives_the_converted_logits(
    family: str, runs: dict[str, Run], plain_logits: tuple[dict[str, torch.Tensor], bool]
) -> None:
    logits, geta_imported = plain_logits
    assert not geta_imported  # transformers alone read it
    run = runs[family]
    assert max_relative_error(logits[str(run.folder)], run.logits) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_every_layer_keeps_the_same_units_and_the_config_says_them(family: str, runs: dict[str, Run]) -> None:
    run = runs[family]
    layers = run.converted.model.layers
    attn = layers[0].self_attn
    mlp = {layer.mlp.up_proj.out_features for layer in layers} | {
        layer.mlp.gate_proj.out_features for layer in layers
    }
    kv = {layer.self_attn.k_proj.out_features // attn.head_dim for layer in layers}
    q = {layer.self_attn.q_proj.out_features // attn.head_dim for layer in layers}
    assert len(mlp) == len(kv) == len(q) == 1
    config = json.loads((run.folder / "config.json").read_text())
    assert config["intermediate_size"] == mlp.pop() < 48  # pruned, and said by the config
    assert (config["num_key_value_heads"], config["num_attention_heads"]) == (kv.pop(), q.pop())
    assert config["num_attention_heads"] % config["num_key_value_heads"] == 0  # GQA ratio whole
    assert config["head_dim"] == attn.head_dim and config["geta"]["shapes"] == {}


def test_geta_loader_reads_the_plain_folder_too(runs: dict[str, Run]) -> None:
    run = runs["llama"]
    ids = torch.randint(0, VOCAB, (4, SEQ))
    with torch.no_grad():
        again, ref = load_pretrained(run.folder)(input_ids=ids).logits, run.converted(input_ids=ids).logits
    assert max_relative_error(again, ref) <= 1e-5


def _uneven(uniform: bool) -> tuple[nn.Module, geta.Plan, dict[str, torch.Tensor]]:
    """Layer 0 loses a kv head and 5 MLP units, layer 1 loses 9 MLP units (zeroed by hand)."""
    from geta.testing import zoo

    model, inputs = zoo.build("hf_llama")
    plan = geta.prepare(model, inputs, geta.Config(weight_bits=(4, 8), uniform_layers=uniform))
    heads0, mlp0, heads1, mlp1 = plan.prunable_groups
    assert (heads0.size, mlp0.size) == (heads1.size, mlp1.size) == (2, 64)
    heads0.zero_(torch.tensor([1]))
    mlp0.zero_(torch.arange(5))
    mlp1.zero_(torch.arange(10, 19))
    return model, plan, inputs


def test_uniform_layers_keeps_the_count_of_the_group_losing_fewest() -> None:
    model, plan, inputs = _uneven(uniform=True)
    assert plan.group_kinds() == [0, 1, 0, 1]
    small = geta.convert(model, plan)
    layers = small.model.layers
    assert [layer.mlp.up_proj.out_features for layer in layers] == [59, 59]  # 64 - min(5, 9)
    assert [layer.self_attn.k_proj.out_features for layer in layers] == [16, 16]  # no head lost in layer 1
    with torch.no_grad():
        assert (
            max_relative_error(small(**inputs).logits, model(**inputs).logits) <= 1e-4
        )  # kept units are zero


def test_plain_export_of_uneven_layers_names_the_sizes_and_the_fix(tmp_path: Path) -> None:
    model, plan, inputs = _uneven(uniform=False)
    small = geta.convert(model, plan)
    with pytest.raises(ExportError, match=r"intermediate_size per layer \[59, 55\].*uniform_layers=True"):
        pretrained(small, tmp_path / "plain", plain=True)
    pretrained(small, tmp_path / "geta")  # geta's own format keeps per-layer sizes
    with torch.no_grad():
        again = load_pretrained(tmp_path / "geta")(**inputs).logits
        assert max_relative_error(again, small(**inputs).logits) <= 1e-4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"uniform_layers": "yes"}, r"Config.uniform_layers='yes' must be True or False"),
        ({"uniform_layers": True, "selection": "global"}, r"uniform_layers=True needs selection='uniform'"),
    ],
)
def test_uniform_layers_is_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(geta.ConfigError, match=message):
        geta.Config(**kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_layers_gives_every_layer_the_same_quota(family: str, tmp_path: Path) -> None:
    """QASSO's quotas under the option: equal inside every kind, so convert has nothing to pad."""
    model = _checkpoint(family, tmp_path / "ckpt")
    ids = torch.randint(0, VOCAB, (2, SEQ))
    config = geta.Config(target_sparsity=0.35, weight_bits=(4, 8), uniform_layers=True)
    plan = geta.prepare(model, {"input_ids": ids}, config)
    schedule = geta.Schedule(warmup=1, projection=1, joint=2, cooldown=1, pruning_periods=2)
    opt = geta.QASSO(plan, 1e-3, variant="adamw", schedule=schedule)
    for _ in range(schedule.total):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    kinds = plan.group_kinds()
    zeroed = [int((g.unit_norms() == 0).sum()) for g in plan.prunable_groups]
    for kind in set(kinds):
        counts = {z for z, k in zip(zeroed, kinds, strict=True) if k == kind}
        assert len(counts) == 1, f"kind {kind}: zeroed units per layer {counts}"
    assert sum(zeroed) > 0
