"""HF habits are safe: ``save_pretrained`` / ``Trainer.save_model`` on a model geta prepared or converted.

Either the folder loads in plain transformers (a fresh process that never imports geta) with the
logits of geta's model, or the call raises naming ``geta.export.pretrained`` and writes nothing;
never a folder that loads other weights.
"""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import geta
from geta.export import ExportError
from geta.savehook import SavePretrained
from geta.testing import max_relative_error, zoo

transformers = pytest.importorskip("transformers")

LOADER = """
import json, sys, torch, transformers
ids = torch.load(sys.argv[1])
out = {}
for folder in sys.argv[2:]:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        out[folder] = model(input_ids=ids).logits
torch.save(out, sys.argv[1] + ".out")
print(json.dumps({"geta_imported": any(m.split(".")[0] == "geta" for m in sys.modules)}))
"""


def _prepared(**config: object) -> tuple[nn.Module, geta.Plan, dict[str, torch.Tensor]]:
    model, inputs = zoo.build("hf_llama")
    plan = geta.prepare(model, inputs, geta.Config(weight_bits=(4, 8), **config))
    return model.eval(), plan, inputs


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _trainer(model: nn.Module, tmp: Path) -> object:
    args = transformers.TrainingArguments(
        str(tmp / "trainer-tmp"), use_cpu=True, report_to="none", save_strategy="no"
    )
    return transformers.Trainer(model=model, args=args)


def test_saved_folders_load_in_plain_transformers_with_the_same_logits(tmp_path: Path) -> None:
    pytest.importorskip("compressed_tensors")
    model, plan, inputs = _prepared(uniform_layers=True)
    ids = inputs["input_ids"]
    with torch.no_grad():
        for q in plan.quantizers.values():
            q.set_bits(5)  # within what compressed-tensors packs (prepare starts at 16 bits)
    model.save_pretrained(tmp_path / "prepared")  # while training: dense shapes, quantized weights
    expected = {str(tmp_path / "prepared"): _logits(model, ids)}
    for group, count in zip(plan.prunable_groups, (1, 20, 1, 20), strict=True):  # heads, MLP per layer
        group.zero_(torch.arange(count))
    small = geta.convert(model, plan).eval()
    _trainer(small, tmp_path).save_model(str(tmp_path / "trainer"))
    expected[str(tmp_path / "trainer")] = _logits(small, ids)
    torch.save(ids, tmp_path / "ids.pt")
    done = subprocess.run(
        [sys.executable, "-c", LOADER, str(tmp_path / "ids.pt"), *expected],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert not json.loads(done.stdout.strip().splitlines()[-1])["geta_imported"]
    got = torch.load(str(tmp_path / "ids.pt") + ".out")
    for folder, logits in expected.items():
        assert max_relative_error(got[folder], logits) <= 1e-5, folder
    config = json.loads((tmp_path / "trainer" / "config.json").read_text())
    assert config["intermediate_size"] == small.model.layers[0].mlp.up_proj.out_features < 64
    groups = config["quantization_config"]["config_groups"]
    assert [g["weights"]["num_bits"] for g in groups.values()] == [5] and len(groups["int5"]["targets"]) == 15


def test_layers_of_different_sizes_raise_with_the_fix_and_write_nothing(tmp_path: Path) -> None:
    model, plan, _ = _prepared()
    plan.prunable_groups[1].zero_(torch.arange(5))  # layer 0's MLP only
    small = geta.convert(model, plan)
    for save in (small.save_pretrained, lambda p: _trainer(small, tmp_path).save_model(p)):
        with pytest.raises(ExportError, match=r"geta\.export\.pretrained\(model, path\).*load_pretrained"):
            save(str(tmp_path / "out"))
        assert not (tmp_path / "out" / "model.safetensors").exists()


def test_activation_quantizers_raise_with_the_fix(tmp_path: Path) -> None:
    model, plan, _ = _prepared(act_bits=(4, 8))
    for m in (model, geta.convert(model, plan)):
        with pytest.raises(ExportError, match=r"quantizes activations.*geta\.export\.pretrained"):
            m.save_pretrained(tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_the_guard_follows_copies_and_pickles_and_push_to_hub_is_refused(tmp_path: Path) -> None:
    model, plan, _ = _prepared()
    small = geta.convert(model, plan)
    for m in (model, small, copy.deepcopy(small), pickle.loads(pickle.dumps(small))):
        guard = vars(m)["save_pretrained"]
        assert isinstance(guard, SavePretrained) and guard.model is m
    with pytest.raises(ExportError, match="push_to_hub"):
        small.save_pretrained(tmp_path / "hub", push_to_hub=True)
    small.save_pretrained(tmp_path / "other-rank", is_main_process=False)
    assert not (tmp_path / "other-rank").exists()
