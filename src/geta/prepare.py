"""`prepare`: capture a model, find its prune groups and attach its quantizers (the QADG).

Steps 1-3 (capture, analyse, groups: the float model's search space) are `geta.search_space`;
this module attaches and calibrates the quantizers on top of them.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrize import ParametrizationList

from geta.config import Config
from geta.errors import ConfigError
from geta.graph.activation_products import nonnegative, operand_sites, product_owners
from geta.graph.analysis import Analysis, QuantSite
from geta.graph.capture import capture, eval_mode, normalize_inputs, on_meta, run_model
from geta.graph.ir import Graph
from geta.ops.mha import eager_layer_inputs, eager_multihead_attention  # (+ nn.MultiheadAttention rules)
from geta.ops.modules import is_layer
from geta.plan import Plan, QuantBinding, QuantTarget
from geta.quant.attach import (
    attach_input_quantizer,
    attach_weight_quantizer,
    calibrate_input_ranges,
    input_quantizer,
    weight_quantizers,
)
from geta.quant.products import (
    attach_product_quantizers,
    detach_product_quantizers,
    product_quantizers,
    record_products,
)
from geta.quant.quantizer import LearnableQuantizer
from geta.quant.recompute import recompute_in_forward
from geta.reporting.count import dense_counts
from geta.savehook import guard_save_pretrained
from geta.search_space import analyze_model

__all__ = ["prepare", "analyze_model"]


def prepare(model: nn.Module, example_inputs: object, config: Config | None = None) -> Plan:
    """Find the prune groups of ``model`` and attach learnable quantizers to its layers.

    ``example_inputs`` is a tuple of positional inputs or a dict of keyword inputs (HF models).
    Quantizers are inserted in place: weights through ``torch.nn.utils.parametrize``, layer
    inputs through forward pre-hooks, and (both when ``config.act_bits`` is set) the operands
    of activation x activation products (attention's q·kᵀ and p·v, named
    ``'<module>.qk.q'``, ``'.qk.k'``, ``'.pv.p'``, ``'.pv.v'``) at the module that runs them
    (`geta.quant.products`); ``nn.MultiheadAttention`` then computes in its eager form
    (`geta.ops.mha.eager_multihead_attention`, the same function, captured once more to find
    its products). The plan records the MACs and parameter count of the model as it was
    (``plan.dense``, counts only), the reference of `geta.report` for the converted model. A
    model that already carries geta quantizers keeps them, all bound again, and its groups are
    the same as its float model's.

    Steps, each run once: 1. **capture** (``torch.export``); 2. **analyse** the graph, with the
    module types' constraints; 3. **groups** (a group whose removal breaks the forward is made
    unprunable); 4. **dense counts**; 5. **quantizers**: weights, layer inputs, products;
    6. **calibrate** the products on one float forward (those it did not run as captured stay
    float); then the quantizers the model carried are bound again. Layer inputs are
    calibrated as they are attached, on a forward before their quantizers exist (§1.4); the
    layers of an eager attention exist only after its swap, which follows the weights (torch's
    form shows ``in_proj_weight`` whole), and its products need the second capture.

    >>> import torch, geta
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> plan = geta.prepare(model, (torch.randn(2, 4),), geta.Config(weight_bits=(4, 8)))
    >>> [(g.size, g.prunable) for g in plan.groups]
    [(8, True), (2, False)]
    >>> sorted(plan.quantizers)
    ['0.weight', '2.weight']
    """
    config = _checked(model, example_inputs, config)
    analysis, plan = analyze_model(model, example_inputs, config)  # 1-3: capture, analyse, groups
    dense = dense_counts(model, plan.graph, example_inputs)  # 4: before quantizers, the original model
    weights, bound = _weight_quantizers(model, analysis, config)  # 5: quantizers
    inputs = _input_quantizers(model, bound, example_inputs, config)
    products, fresh = _product_quantizers(model, plan.graph, example_inputs, config)
    failed = _calibrate_products(model, fresh, example_inputs)  # 6: calibrate
    bindings = weights + inputs + [b for b in products if b.module not in failed]
    bindings += _carried_quantizers(model, bindings)
    guard_save_pretrained(model)  # HF's save_pretrained would write parametrization keys
    recompute_in_forward(model, config.recompute_quantized)  # less memory (geta.quant.recompute)
    return dataclasses.replace(plan, bindings=bindings, dense=dense)


def _checked(model: nn.Module, example_inputs: object, config: Config | None) -> Config:
    """The config in force (default `Config()`); wrong argument types are a `ConfigError`."""
    config = Config() if config is None else config
    if not isinstance(config, Config):
        raise ConfigError(f"prepare(config=...) must be a geta.Config, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"prepare(model=...) must be a torch.nn.Module, got {type(model).__name__}")
    normalize_inputs(example_inputs)
    return config


def _weight_quantizers(
    model: nn.Module, analysis: Analysis, config: Config
) -> tuple[list[QuantBinding], list[QuantSite]]:
    """Step 5a: a quantizer on every weight the graph uses as one (once per tensor; embeddings only
    with ``quantize_embeddings``); returns the bindings and the sites bound, in graph order."""
    names = {m: n for n, m in model.named_modules()}
    bindings: list[QuantBinding] = []
    bound: list[QuantSite] = []
    seen: set[int] = set()
    for site in analysis.quant_sites:
        if id(site.weight.tensor) in seen or (site.embedding and not config.quantize_embeddings):
            continue
        seen.add(id(site.weight.tensor))
        binding = _weight_binding(site, names, config)
        if binding is not None:
            bindings.append(binding)
            bound.append(site)
    return bindings, bound


def _input_quantizers(
    model: nn.Module, bound: list[QuantSite], example_inputs: object, config: Config
) -> list[QuantBinding]:
    """Step 5b (with ``act_bits``): a quantizer on the input of every layer whose weight was bound,
    calibrated from the float inputs (`_float_input_peaks`)."""
    if config.act_bits is None:
        return []
    sites = [
        s
        for s in bound
        if not s.embedding and s.module is not None and is_layer(s.module) and s.input_node is not None
    ]
    return _attach_inputs(model, sites, example_inputs, config)


def _product_quantizers(
    model: nn.Module, graph: Graph, example_inputs: object, config: Config
) -> tuple[list[QuantBinding], list[nn.Module]]:
    """Step 5c (with ``act_bits``): operand quantizers on every activation x activation product;
    returns the bindings and the modules that got fresh ones (to calibrate).

    ``nn.MultiheadAttention`` turns eager first: the layers its eager form calls get input
    quantizers (their bindings come first), and the model is captured again to show its products.
    """
    if config.act_bits is None:
        return [], []
    bindings: list[QuantBinding] = []
    eager = eager_multihead_attention(model)  # after binding its weights: torch's form shows them
    if eager:
        bindings += _attach_eager_inputs(model, eager, example_inputs, config)
        graph = capture(model, example_inputs)  # the products of the eager form
    products, fresh = _attach_products(model, graph, config)
    return bindings + products, fresh


def _carried_quantizers(model: nn.Module, bound: list[QuantBinding]) -> list[QuantBinding]:
    """Bindings of the geta quantizers ``model`` already carries that were not found again
    (``in_proj_weight`` of an attention in eager form, whose q/k/v weights are chunks of it;
    product quantizers under a config without ``act_bits``), so that a second prepare trains
    and bounds them all."""
    seen = {id(b.quantizer) for b in bound}
    out: list[QuantBinding] = []
    for name, module in model.named_modules():
        for attr, q in weight_quantizers(module).items():
            if id(q) not in seen:
                original = getattr(module.parametrizations, attr).original
                out.append(
                    QuantBinding(f"{name}.{attr}".lstrip("."), q, module, QuantTarget.WEIGHT, original)
                )
                seen.add(id(q))
        q_in = input_quantizer(module)
        if q_in is not None and id(q_in) not in seen:
            out.append(QuantBinding(f"{name}.input".lstrip("."), q_in, module, QuantTarget.INPUT, None))
            seen.add(id(q_in))
        if product_quantizers(module) is not None:
            fresh = [b for b in _product_bindings(module, name) if id(b.quantizer) not in seen]
            out += fresh
            seen.update(id(b.quantizer) for b in fresh)
    return out


def _excluded(name: str, patterns: tuple[str, ...], module_name: str | None = None) -> bool:
    module_name = name.rsplit(".", 1)[0] if module_name is None else module_name
    return any(fnmatch.fnmatchcase(module_name, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def _new_quantizer(config: Config, *, signed: bool = True) -> LearnableQuantizer:
    return LearnableQuantizer(
        signed=signed, init_bits=config.init_bits, learn_exponent=config.learn_exponent, ste=config.ste
    )


def _holder(site: QuantSite) -> tuple[nn.Module, str]:
    """The module (and attribute) to parametrize: the consuming layer if it holds the tensor.

    A tied weight (an LM head sharing the embedding table) is quantized where it is used as a
    layer's weight, not at the first module that happens to hold it.
    """
    layer = site.module
    if layer is not None:
        for attr, p in layer.named_parameters(recurse=False):
            if p is site.weight.tensor:
                return layer, attr
    return site.weight.owner, site.weight.attr


def _weight_binding(site: QuantSite, names: dict[nn.Module, str], config: Config) -> QuantBinding | None:
    ref = site.weight
    if isinstance(ref.owner, ParametrizationList):  # already parametrized: ours, or someone else's
        found = _existing_weight_quantizer(site)
        if found is None:
            return None
        q, layer, attr = found
    else:
        layer, attr = _holder(site)
        if _excluded(f"{names.get(layer, '?')}.{attr}", config.exclude_quant):
            return None
        q = _new_quantizer(config).to(ref.tensor.device)
        q.init_from(ref.tensor.detach())
        attach_weight_quantizer(layer, attr, q)
    return QuantBinding(f"{names.get(layer, '?')}.{attr}", q, layer, QuantTarget.WEIGHT, ref.tensor)


def _existing_weight_quantizer(site: QuantSite) -> tuple[LearnableQuantizer, nn.Module, str] | None:
    layer = site.module
    if layer is None or not parametrize.is_parametrized(layer):
        return None
    for attr, q in weight_quantizers(layer).items():
        if getattr(layer.parametrizations, attr).original is site.weight.tensor:
            return q, layer, attr
    return None


def _attach_inputs(
    model: nn.Module, sites: list[QuantSite], example_inputs: object, config: Config
) -> list[QuantBinding]:
    names = {m: n for n, m in model.named_modules()}
    unique = list(dict((id(s.module), s) for s in sites).values())
    fresh = [s.module for s in unique if input_quantizer(s.module) is None]  # type: ignore[arg-type]
    peaks = _float_input_peaks(model, fresh, example_inputs)
    out: list[QuantBinding] = []
    for site in unique:
        layer = site.module
        assert layer is not None and site.input_node is not None
        q = input_quantizer(layer)
        if q is None:
            q = _new_quantizer(config, signed=not nonnegative(site.input_node))
            _init_input(q.to(site.weight.tensor.device), peaks.get(layer))
            attach_input_quantizer(layer, q)
        out.append(QuantBinding(f"{names.get(layer, '?')}.input", q, layer, QuantTarget.INPUT, None))
    return out


def _attach_eager_inputs(
    model: nn.Module, attentions: list[nn.Module], example_inputs: object, config: Config
) -> list[QuantBinding]:
    """Input quantizers on the layers an attention's eager form calls (`eager_layer_inputs`)."""
    names = {m: n for n, m in model.named_modules()}
    fresh = [
        layer
        for attention in attentions
        for layer in eager_layer_inputs(attention)  # type: ignore[arg-type]
        if input_quantizer(layer) is None
        and not _excluded(_join(names[layer], "input"), config.exclude_quant)
    ]
    fresh = list(dict.fromkeys(fresh))
    peaks = _float_input_peaks(model, fresh, example_inputs)
    out: list[QuantBinding] = []
    for layer in fresh:
        q = _new_quantizer(config)
        _init_input(q, peaks.get(layer))
        attach_input_quantizer(layer, q)
        out.append(QuantBinding(_join(names[layer], "input"), q, layer, QuantTarget.INPUT, None))
    return out


def _float_input_peaks(
    model: nn.Module, layers: list[nn.Module], example_inputs: object
) -> dict[nn.Module, float]:
    """max|x| at the input of each of ``layers``, recorded *before* their quantizers exist.

    Calibrating after attaching would let each fresh quantizer (q_m = 1 until initialised)
    clip what reaches the layers after it, so that their ranges came out too small (§1.4).
    A model on the meta device has no values: no peaks.
    """
    if not layers or on_meta(model):
        return {}
    return calibrate_input_ranges(model, layers, example_inputs, _run_eval)


def _init_input(q: LearnableQuantizer, peak: float | None) -> None:
    """q_m from the calibrated peak; a layer that never ran (or saw only zeros) starts at 1."""
    if q.step.device.type == "meta":
        return
    q.init_from(torch.tensor(peak if peak is not None and peak > 0 else 1.0))


def _run_eval(model: nn.Module, example_inputs: object) -> object:
    """One forward in eval mode (calibration must not update BatchNorm statistics)."""
    with eval_mode(model):
        return run_model(model, example_inputs)


# ---------------------------------------------------------------------------------------------
# Activation x activation products (attention): found in the graph, quantized at their module
# ---------------------------------------------------------------------------------------------


def _attach_products(
    model: nn.Module, graph: Graph, config: Config
) -> tuple[list[QuantBinding], list[nn.Module]]:
    """Operand quantizers on every activation x activation product
    (`geta.graph.activation_products`), and the modules that got fresh ones. Product quantizers
    the model already carries (a second prepare) are kept and bound again."""
    names = {m: n for n, m in model.named_modules()}
    out: dict[nn.Module, list[QuantBinding]] = {}
    for module in model.modules():
        if product_quantizers(module) is not None:
            out[module] = _product_bindings(module, names[module])
    fresh: list[nn.Module] = []
    for owner in product_owners(model, graph):
        if owner.module in out:
            continue
        slots: dict[int, list[nn.Module]] = {}
        labels: dict[int, list[str]] = {}
        for site in operand_sites(owner):
            excluded = _excluded(_join(owner.name, site.label), config.exclude_quant, owner.name)
            q = nn.Identity() if excluded else _new_quantizer(config, signed=site.signed)
            slots.setdefault(site.call, []).append(q)
            labels.setdefault(site.call, []).append(site.label)
        if any(isinstance(q, LearnableQuantizer) for qs in slots.values() for q in qs):
            attach_product_quantizers(owner.module, owner.kinds, slots, labels)
            out[owner.module] = _product_bindings(owner.module, owner.name)
            fresh.append(owner.module)
    return [b for bs in out.values() for b in bs], fresh


def _join(module_name: str, label: str) -> str:
    return f"{module_name}.{label}" if module_name else label


def _product_bindings(module: nn.Module, name: str) -> list[QuantBinding]:
    holder = product_quantizers(module)
    assert holder is not None
    return [
        QuantBinding(_join(name, label), q, module, QuantTarget.INPUT, None)
        for call, slots in holder.operands.items()
        for label, q in zip(holder.labels[call], slots, strict=True)
        if isinstance(q, LearnableQuantizer)
    ]


def _calibrate_products(
    model: nn.Module, modules: list[nn.Module], example_inputs: object
) -> list[nn.Module]:
    """Step 6: initialise the fresh product quantizers of ``modules`` from one float forward
    (§1.4); return the modules that did not run the products the graph showed: their
    quantizers are detached, with a warning. No forward without fresh ones, or on meta."""
    if not modules or on_meta(model):
        return []
    with record_products(modules) as record, torch.no_grad():
        _run_eval(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    failed = []
    for module in modules:
        holder = product_quantizers(module)
        assert holder is not None
        runs = record.kinds.get(module, [])
        if not runs or any(run != holder.kinds for run in runs):
            detach_product_quantizers(module)
            failed.append(module)
            ran = "; ".join(str(list(r)) for r in runs) if runs else "never"
            warnings.warn(
                f"geta: the products of {names[module] or 'the model'} stay in float: its forward "
                f"called {ran} where the captured graph shows {list(holder.kinds)} (a product "
                "inside a call geta cannot see into, e.g. F.multi_head_attention_forward)",
                stacklevel=3,
            )
            continue
        for q in holder.quantizers():
            peak = record.peaks.get(q, 0.0)
            q.init_from(torch.tensor(peak if peak > 0 else 1.0))
    return failed
