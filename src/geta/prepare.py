"""`prepare`: capture a model, find its prune groups and attach its quantizers (the QADG)."""

from __future__ import annotations

import dataclasses
import fnmatch
import sys

import torch
from torch import fx, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrize import ParametrizationList

from geta.config import Config
from geta.errors import ConfigError
from geta.graph.analysis import Analysis, QuantSite, analyze
from geta.graph.capture import capture, eval_mode, normalize_inputs, on_meta, run_model
from geta.graph.groups import build_groups
from geta.graph.trial import unconvertible_groups
from geta.ops import mha as _mha  # noqa: F401  (registers nn.MultiheadAttention rules)
from geta.ops.elementwise import NONNEGATIVE, PASSTHROUGH
from geta.ops.modules import apply_module_constraints, is_layer
from geta.plan import Plan, QuantBinding, QuantTarget
from geta.quant.attach import (
    attach_input_quantizer,
    attach_weight_quantizer,
    calibrate_input_ranges,
    input_quantizer,
    weight_quantizers,
)
from geta.quant.quantizer import LearnableQuantizer
from geta.reporting.count import dense_counts

__all__ = ["prepare", "analyze_model"]


def analyze_model(model: nn.Module, example_inputs: object, config: Config) -> tuple[Analysis, Plan]:
    """Capture and analyse without attaching quantizers (the float model's search space)."""
    _register_known_layers()
    graph = capture(model, example_inputs)
    analysis = analyze(graph, model)
    apply_module_constraints(analysis, model)
    groups, spaces = build_groups(analysis, config.exclude_prune)
    plan = Plan(
        model,
        config,
        graph,
        groups,
        [],
        analysis=analysis,
        group_spaces=spaces,
        example_inputs=example_inputs,
    )
    for gid in unconvertible_groups(plan):
        g = plan.groups[gid]
        g.prunable, g.reason = False, "removing a unit breaks the model's forward (a size fixed in its code)"
    return analysis, plan


def prepare(model: nn.Module, example_inputs: object, config: Config | None = None) -> Plan:
    """Find the prune groups of ``model`` and attach learnable quantizers to its layers.

    ``example_inputs`` is a tuple of positional inputs or a dict of keyword inputs (HF models).
    Quantizers are inserted in place: weights through ``torch.nn.utils.parametrize``, layer
    inputs through forward pre-hooks (when ``config.act_bits`` is set). The plan records the
    MACs and parameter count of the model as it was (``plan.dense``, counts only), the
    reference of `geta.report` for the converted model. A model that already
    carries geta quantizers keeps them, and its groups are the same as its float model's.

    >>> import torch, geta
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> plan = geta.prepare(model, (torch.randn(2, 4),), geta.Config(weight_bits=(4, 8)))
    >>> [(g.size, g.prunable) for g in plan.groups]
    [(8, True), (2, False)]
    >>> sorted(plan.quantizers)
    ['0.weight', '2.weight']
    """
    config = Config() if config is None else config
    if not isinstance(config, Config):
        raise ConfigError(f"prepare(config=...) must be a geta.Config, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"prepare(model=...) must be a torch.nn.Module, got {type(model).__name__}")
    normalize_inputs(example_inputs)
    analysis, plan = analyze_model(model, example_inputs, config)
    dense = dense_counts(model, plan.graph, example_inputs)  # before quantizers: the original model
    return dataclasses.replace(plan, bindings=_attach(model, analysis, example_inputs, config), dense=dense)


def _excluded(name: str, patterns: tuple[str, ...]) -> bool:
    module_name = name.rsplit(".", 1)[0]
    return any(fnmatch.fnmatchcase(module_name, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def _new_quantizer(config: Config, *, signed: bool = True) -> LearnableQuantizer:
    return LearnableQuantizer(
        signed=signed, init_bits=config.init_bits, learn_exponent=config.learn_exponent, ste=config.ste
    )


def _attach(
    model: nn.Module, analysis: Analysis, example_inputs: object, config: Config
) -> list[QuantBinding]:
    names = {m: n for n, m in model.named_modules()}
    bindings: list[QuantBinding] = []
    seen: set[int] = set()
    act_sites: list[QuantSite] = []
    for site in analysis.quant_sites:
        if id(site.weight.tensor) in seen or (site.embedding and not config.quantize_embeddings):
            continue
        seen.add(id(site.weight.tensor))
        binding = _weight_binding(site, names, config)
        if binding is None:
            continue
        bindings.append(binding)
        if (
            config.act_bits is not None
            and not site.embedding
            and site.module is not None
            and is_layer(site.module)
            and site.input_node is not None
        ):
            act_sites.append(site)
    bindings.extend(_attach_inputs(model, act_sites, example_inputs, config))
    return bindings


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
    fresh: list[nn.Module] = []
    out: list[QuantBinding] = []
    for site in dict((id(s.module), s) for s in sites).values():
        layer = site.module
        assert layer is not None and site.input_node is not None
        q = input_quantizer(layer)
        if q is None:
            q = _new_quantizer(config, signed=not _nonnegative(site.input_node))
            attach_input_quantizer(layer, q.to(site.weight.tensor.device))
            fresh.append(layer)
        out.append(QuantBinding(f"{names.get(layer, '?')}.input", q, layer, QuantTarget.INPUT, None))
    if fresh and not on_meta(model):
        ranges = calibrate_input_ranges(model, fresh, example_inputs, _run_eval)
        for layer in fresh:
            q = input_quantizer(layer)
            assert q is not None
            peak = ranges.get(layer, 1.0)
            q.init_from(torch.tensor(peak if peak > 0 else 1.0))
    return out


def _run_eval(model: nn.Module, example_inputs: object) -> object:
    """One forward in eval mode (calibration must not update BatchNorm statistics)."""
    with eval_mode(model):
        return run_model(model, example_inputs)


def _nonnegative(node: fx.Node) -> bool:
    """Is the value of ``node`` never negative? (looks through views, pools and casts)."""
    from geta.ops.shape import VIEW_LIKE

    while isinstance(node, fx.Node) and node.op == "call_function":
        target = node.target
        packet = getattr(target, "overloadpacket", target)
        if packet in NONNEGATIVE:
            return True
        if packet in PASSTHROUGH or packet in VIEW_LIKE:
            node = node.args[0]
            continue
        return False
    return False


def _register_known_layers() -> None:
    if "transformers" in sys.modules:
        from geta.ops import hf  # registers HF layer types and module rules

        hf.register_loaded_attention_classes()
