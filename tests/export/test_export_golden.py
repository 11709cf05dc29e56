"""Files written before the exporter registry and `LearnableQuantizer.to_config` still load.

``golden/mha_v2.geta`` (packed format version 2) and ``golden/hf_llama_v1/`` (the "geta"
config field, format 1) were written by geta at commit da9b599, before exporters shared one
signature and quantizer entries one schema, from exactly the models `_compressed` builds
(zoo "mha" and "hf_llama", 4-bit weights and inputs, exponent 1.25, half the groups zeroed).
Loading them must give models that compute what those models compute, and writing the same
models again must give the same bytes (the formats did not change).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import geta
from geta.quant.quantizer import LearnableQuantizer
from geta.testing import model_outputs, zero_random_groups, zoo

GOLDEN = Path(__file__).parent / "golden"


def _compressed(name: str) -> tuple[nn.Module, object]:
    model, x = zoo.build(name)
    plan = geta.prepare(model, x, geta.Config(weight_bits=(2, 8), act_bits=(2, 8)))
    zero_random_groups(plan, 0.5, seed=0)
    with torch.no_grad():
        for q in plan.quantizers.values():
            q.exponent.fill_(1.25)
            q.set_bits(4)
    return geta.convert(model, plan), x


def _same_outputs(a: nn.Module, b: nn.Module, x: object) -> None:
    torch.testing.assert_close(model_outputs(a.eval(), x), model_outputs(b.eval(), x), rtol=0, atol=0)


def test_a_packed_file_of_the_old_code_loads_and_is_written_again_byte_for_byte(tmp_path: Path) -> None:
    small, x = _compressed("mha")
    loaded = geta.export.load_packed(GOLDEN / "mha_v2.geta", zoo.build("mha")[0])
    _same_outputs(loaded, small, x)
    geta.export.packed(small, tmp_path / "again.geta")
    assert (tmp_path / "again.geta").read_bytes() == (GOLDEN / "mha_v2.geta").read_bytes()


def test_an_hf_folder_of_the_old_code_loads(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    small, x = _compressed("hf_llama")
    folder = tmp_path / "hf"  # load_pretrained may write nothing, but the golden copy stays pristine
    folder.mkdir()
    for f in (GOLDEN / "hf_llama_v1").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    loaded = geta.export.load_pretrained(folder)
    _same_outputs(loaded, small.lm if hasattr(small, "lm") else small, x)
    field = json.loads((folder / "config.json").read_text())["geta"]
    for entry in field["input_quantizers"].values():  # the entries are the to_config schema
        assert LearnableQuantizer.from_config(entry).to_config(settings=False) == entry


def test_an_entry_of_a_newer_schema_is_refused() -> None:
    with pytest.raises(geta.ConfigError, match="version=2"):
        LearnableQuantizer.from_config({"version": 2, "signed": True})
