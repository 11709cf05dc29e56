"""Hugging Face checkpoints: per-layer shapes and quantizers survive save_pretrained / load_pretrained.

Each zoo model is prepared (weights and inputs quantized at 4 bits, so every rounding matters),
half its units are zeroed, it is converted, written with `geta.export.pretrained` and read back
with `geta.export.load_pretrained`. The invariants: the loaded model computes what the
converted one computes; the saved weights are the fake-quantized k·step; the config's "geta"
field lists exactly what differs from the global config; the original model is untouched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import geta
from geta.export import ExportError, load_pretrained, pretrained
from geta.export.intweights import unpack_rows
from geta.quant.attach import input_quantizer, weight_quantizers
from geta.quant.quantizer import LearnableQuantizer
from geta.testing import max_relative_error, model_outputs, zero_random_groups, zoo

pytest.importorskip("transformers")

CASES = ["hf_llama", "hf_gpt2", "hf_bert"]  # grouped-query attention, fused Conv1D q|k|v + tied head, encoder


@dataclass
class RoundTrip:
    name: str
    converted: nn.Module
    inputs: dict[str, torch.Tensor]
    before: dict[str, torch.Tensor]  # the converted model's outputs before export
    folder: Path
    loaded: nn.Module

    @property
    def field(self) -> dict[str, Any]:
        return json.loads((self.folder / "config.json").read_text())["geta"]


@pytest.fixture(scope="module", params=CASES)
def trip(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> RoundTrip:
    name = request.param
    model, inputs = zoo.build(name)
    plan = geta.prepare(model, inputs, geta.Config(weight_bits=(4, 8), act_bits=(4, 8)))
    zero_random_groups(plan, 0.5, seed=0)
    with torch.no_grad():
        for q in plan.quantizers.values():
            q.set_bits(4)
    converted = geta.convert(model, plan)
    before = model_outputs(converted, inputs)
    folder = tmp_path_factory.mktemp(name)
    pretrained(converted, folder)
    return RoundTrip(name, converted, inputs, before, folder, load_pretrained(folder))


def _names_with_input_quantizers(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if input_quantizer(m) is not None}


def test_loaded_model_computes_what_the_converted_model_computes(trip: RoundTrip) -> None:
    after = model_outputs(trip.loaded, trip.inputs)
    assert set(after) == set(trip.before)
    assert max_relative_error(after, trip.before) <= 1e-4
    assert type(trip.loaded) is type(trip.converted) and not trip.loaded.training
    attn = trip.converted.config._attn_implementation  # eager here; HF alone would load sdpa
    assert trip.loaded.config._attn_implementation == attn
    assert not any(weight_quantizers(m) for m in trip.loaded.modules())  # plain HF weights


def test_input_quantizers_are_reattached_with_their_exact_scalars(trip: RoundTrip) -> None:
    names = _names_with_input_quantizers(trip.converted)
    assert names and _names_with_input_quantizers(trip.loaded) == names
    for name in names:
        saved = input_quantizer(trip.converted.get_submodule(name))
        again = input_quantizer(trip.loaded.get_submodule(name))
        assert saved is not None and again is not None and again.signed == saved.signed
        for scalar in ("step", "qmax", "exponent"):
            assert torch.equal(getattr(again, scalar), getattr(saved, scalar))


def test_saved_weights_are_integer_codes_whose_values_are_the_fake_quantized_ones(trip: RoundTrip) -> None:
    saved = load_file(str(trip.folder / "model.safetensors"))
    groups = json.loads((trip.folder / "config.json").read_text())["quantization_config"]["config_groups"]
    bits_of = {name: g["weights"]["num_bits"] for g in groups.values() for name in g["targets"]}
    checked = 0
    for name, module in trip.converted.named_modules():
        for attr, q in weight_quantizers(module).items():
            with torch.no_grad():
                expected = getattr(module, attr)  # Q(W): what the converted model computes with
            if f"{name}.{attr}" in saved:  # kept in float: not a Linear (GPT-2's Conv1D) or wider than 8 bits
                assert torch.equal(saved[f"{name}.{attr}"], expected) and not isinstance(module, nn.Linear)
                continue
            words, scale = saved[f"{name}.weight_packed"], saved[f"{name}.weight_scale"]
            assert words.dtype == torch.int32 and bits_of[name] == 4  # set_bits(4), and the codes fit
            assert words.numel() * 32 == expected.shape[0] * -(-expected.shape[1] * 4 // 32) * 32
            codes = unpack_rows(words, 4, tuple(expected.shape))
            assert torch.equal(codes.float() * scale, expected) and codes.abs().max() <= 7
            assert torch.equal(scale, q.step.detach().reshape(1))
            checked += 1
    assert checked > 0


def test_config_field_lists_every_shape_that_differs_from_the_global_config(trip: RoundTrip) -> None:
    field = trip.field
    assert field["format"] == 1 and field["version"] == geta.__version__
    assert set(field["input_quantizers"]) == _names_with_input_quantizers(trip.converted)
    entries = field["input_quantizers"].values()
    assert all(set(e) == {"step", "qmax", "exponent", "signed", "bits"} for e in entries)
    shapes = {n: list(p.shape) for n, p in trip.loaded.state_dict().items()}
    assert field["shapes"] and all(shapes[k] == v for k, v in field["shapes"].items())
    saved = load_file(str(trip.folder / "model.safetensors"))
    assert all(list(saved[k].shape) == shapes[k] for k in saved if k in shapes)
    packed = (".weight_packed", ".weight_scale", ".weight_shape")
    assert all(k.endswith(packed) for k in set(saved) - set(shapes))
    for key in (k for k in saved if k.endswith(".weight_shape")):  # integer codes: the weight's shape
        assert saved[key].tolist() == shapes[key.removesuffix("_shape")]
    for module_name, attrs in field["attributes"].items():  # size attributes restored on load
        module = trip.loaded.get_submodule(module_name)
        assert all(getattr(module, a) == (tuple(v) if isinstance(v, list) else v) for a, v in attrs.items())


def test_original_model_still_works_after_export(trip: RoundTrip) -> None:
    quantized = [m for m in trip.converted.modules() if weight_quantizers(m)]
    assert quantized and all(type(m).__name__.startswith("Parametrized") for m in quantized)
    assert all(isinstance(m.weight, torch.Tensor) for m in quantized)  # the class kept its properties
    again = model_outputs(trip.converted, trip.inputs)
    assert max_relative_error(again, trip.before) == 0.0
    pretrained(trip.converted, trip.folder / "again")  # a second export of the same model works
    assert max_relative_error(model_outputs(trip.converted, trip.inputs), trip.before) == 0.0


def test_loading_without_input_quantizers_and_with_an_explicit_class(trip: RoundTrip) -> None:
    plain = load_pretrained(trip.folder, type(trip.converted), with_input_quantizers=False)
    assert not any(isinstance(m, LearnableQuantizer) for m in plain.modules())
    state, loaded = plain.state_dict(), trip.loaded.state_dict()
    activation = set(loaded) - set(state)  # layer-input and attention-product quantizer scalars
    assert all(".geta_input_quantizer." in k or ".geta_product_quantizers." in k for k in activation)
    extra = {k.rsplit(".geta_input_quantizer.", 1)[0] for k in activation if ".geta_input_quantizer." in k}
    assert set(state) <= set(loaded) and extra == _names_with_input_quantizers(trip.loaded)
    assert all(torch.equal(state[k], loaded[k]) for k in state)


@pytest.mark.parametrize("trip", ["hf_llama"], indirect=True)
def test_llama_layers_keep_their_own_mlp_widths_and_kv_heads(trip: RoundTrip) -> None:
    cfg, layers = trip.loaded.config, trip.loaded.model.layers
    widths = [layer.mlp.up_proj.out_features for layer in layers]
    kv = [layer.self_attn.k_proj.out_features // layer.self_attn.head_dim for layer in layers]
    q = [layer.self_attn.q_proj.out_features // layer.self_attn.head_dim for layer in layers]
    assert len(set(widths)) > 1 and any(w != cfg.intermediate_size for w in widths)
    assert len(set(kv)) > 1 and any(h != cfg.num_key_value_heads for h in kv)
    assert all(qh == kh * cfg.num_attention_heads // cfg.num_key_value_heads for qh, kh in zip(q, kv))
    assert [layer.mlp.gate_proj.weight.shape[0] for layer in layers] == widths


@pytest.mark.parametrize("trip", ["hf_gpt2"], indirect=True)
def test_gpt2_quantized_head_is_saved_untied_from_its_embedding(trip: RoundTrip) -> None:
    assert trip.converted.config.tie_word_embeddings  # the user's model is not changed
    assert json.loads((trip.folder / "config.json").read_text())["tie_word_embeddings"] is False
    assert trip.loaded.lm_head.weight is not trip.loaded.transformer.wte.weight
    assert not torch.equal(trip.loaded.lm_head.weight, trip.loaded.transformer.wte.weight)


def test_non_hf_model_raises_and_names_the_alternatives(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ExportError, match=r"torch\.save or geta\.export\.packed"):
        pretrained(model, tmp_path)
    assert isinstance(ExportError("x"), geta.GetaError)
    assert not any(tmp_path.iterdir())


def test_folder_not_written_by_geta_is_refused(tmp_path: Path) -> None:
    model, _ = zoo.build("hf_gpt2")
    model.save_pretrained(tmp_path)
    with pytest.raises(ExportError, match="from_pretrained"):
        load_pretrained(tmp_path)
