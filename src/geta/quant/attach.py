"""Binding quantizers to layers, by object identity (docs/method.md §2.4).

Two kinds of binding:

- **weight** (an "attached branch"): `attach_weight_quantizer` registers the quantizer as a
  ``torch.nn.utils.parametrize`` parametrization, so that ``module.weight`` *is* the
  fake-quantized weight wherever the module reads it. The original ``nn.Parameter`` object
  keeps its identity (optimizers and prune groups that hold it stay valid); it now lives at
  ``module.parametrizations.weight.original``.
- **input** (an "inserted branch"): `attach_input_quantizer` stores the quantizer as the
  submodule ``module.geta_input_quantizer`` and adds a forward pre-hook that fake-quantizes
  the first positional input (every positional argument that is that same tensor).

What is attached is read back from the module itself (`weight_quantizers`,
`input_quantizer`), never by matching names. Models with attached quantizers survive
``copy.deepcopy`` and whole-model ``torch.save`` / ``torch.load(weights_only=False)``.

Activation ranges come from real inputs (§1.4): `calibrate_input_ranges` records max|x| at
the given layers during one user-supplied forward, and `init_input_quantizers` applies it.

>>> layer = nn.Linear(3, 2)
>>> w = layer.weight
>>> q = LearnableQuantizer(init_bits=4)
>>> attach_weight_quantizer(layer, "weight", q) is w
True
>>> q.init_from(w)
>>> bool((layer.weight == q(w)).all()), weight_quantizers(layer) == {"weight": q}
(True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from geta.errors import GetaError
from geta.quant.quantizer import LearnableQuantizer

__all__ = [
    "INPUT_QUANTIZER_ATTR",
    "attach_input_quantizer",
    "attach_weight_quantizer",
    "calibrate_input_ranges",
    "detach_input_quantizer",
    "init_input_quantizers",
    "input_quantizer",
    "is_quantized",
    "weight_quantizers",
]

INPUT_QUANTIZER_ATTR = "geta_input_quantizer"  # submodule name of a layer's input quantizer


# ---------------------------------------------------------------------------------------------
# Weights: parametrizations
# ---------------------------------------------------------------------------------------------


def attach_weight_quantizer(
    module: nn.Module, param_name: str, quantizer: LearnableQuantizer
) -> nn.Parameter:
    """Make ``module.<param_name>`` the fake-quantized parameter; return the original parameter.

    The returned object is the very ``nn.Parameter`` that was on the module before (same
    identity), so prune groups and optimizer param groups that hold it stay valid. The
    quantizer is moved to that parameter's device; initialise it with ``init_from`` (before or
    after attaching).
    """
    if parametrize.is_parametrized(module, param_name):
        raise GetaError(
            f"{type(module).__name__}.{param_name} is already parametrized "
            f"({weight_quantizers(module).get(param_name) or 'not by geta'}); "
            "geta attaches at most one quantizer to an unparametrized parameter"
        )
    own = dict(module.named_parameters(recurse=False))
    original = own.get(param_name)
    if original is None:
        raise GetaError(
            f"{type(module).__name__} has no parameter named {param_name!r}; its own parameters "
            f"are {list(own)}"
        )
    quantizer.to(device=original.device)
    # unsafe: torch would evaluate the fake-quant of the whole weight once to check that it keeps
    # shape and dtype, which it does by construction (the cost of a forward pass on large models)
    parametrize.register_parametrization(module, param_name, quantizer, unsafe=True)
    _make_picklable(module)
    return module.parametrizations[param_name].original


def weight_quantizers(module: nn.Module) -> dict[str, LearnableQuantizer]:
    """The geta weight quantizers attached to ``module``'s own parameters, by parameter name."""
    if not parametrize.is_parametrized(module):
        return {}
    found: dict[str, LearnableQuantizer] = {}
    for name, chain in module.parametrizations.items():
        for p in chain:
            if isinstance(p, LearnableQuantizer):
                found[name] = p
    return found


# Whole-model pickling. `register_parametrization` swaps the module's class for a class created
# on the fly ("ParametrizedLinear"), which pickle cannot find by name; torch therefore refuses to
# pickle parametrized modules. We give that one dynamic class a reducer that pickles the module
# as its ordinary class plus its state, and re-attaches the parametrizations on load through the
# public `register_parametrization`. Parameters keep their identity within the loaded object.


def _make_picklable(module: nn.Module) -> None:
    cls = type(module)
    if "__reduce_ex__" not in cls.__dict__:
        cls.__reduce_ex__ = _reduce_parametrized  # type: ignore[method-assign,assignment]


def _reduce_parametrized(module: nn.Module, protocol: int) -> tuple[Any, ...]:
    for name, chain in module.parametrizations.items():
        if not chain.is_tensor or any(hasattr(p, "right_inverse") for p in chain):
            raise GetaError(
                f"cannot pickle {type(module).__name__}: the parametrization of {name!r} has a "
                "right_inverse or several originals; save its state_dict() instead"
            )
    base = type(module).__bases__[0]  # the user's class, e.g. nn.Linear
    return (_new_module, (base,), module.__dict__.copy(), None, None, _restore_parametrized)


def _new_module(cls: type[nn.Module]) -> nn.Module:
    return cls.__new__(cls)


def _restore_parametrized(module: nn.Module, state: dict[str, Any]) -> None:
    state = dict(state)
    order = list(state["_modules"])  # keep the submodule order: named_parameters() is unchanged
    children = dict(state["_modules"])
    chains = children.pop("parametrizations")
    state["_modules"] = children
    module.__setstate__(state)
    for name, chain in chains.items():
        original = chain.original
        if isinstance(original, nn.Parameter):
            module.register_parameter(name, original)
        else:
            module.register_buffer(name, original)
        for p in chain:
            parametrize.register_parametrization(module, name, p, unsafe=chain.unsafe)
    _make_picklable(module)
    restored = dict(module._modules)
    module._modules.clear()
    module._modules.update({key: restored[key] for key in order})


# ---------------------------------------------------------------------------------------------
# Inputs: a submodule and a forward pre-hook
# ---------------------------------------------------------------------------------------------


def _quantize_first_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Forward pre-hook: replace the first positional input x by input_quantizer(x), wherever x
    is passed again positionally (self-attention's ``attn(x, x, x)``: one quantized tensor).

    A module-level function (not a closure), so deepcopy and pickle of the model keep it.
    """
    quantizer = input_quantizer(module)
    if quantizer is None or not args or not isinstance(args[0], Tensor):
        return None
    x = args[0]
    q = quantizer(x)
    return tuple(q if a is x else a for a in args)


def attach_input_quantizer(module: nn.Module, quantizer: LearnableQuantizer) -> None:
    """Fake-quantize the first positional input of ``module`` on every call.

    A positional argument that is the same tensor object as the first gets the same quantized
    tensor (``attn(x, x, x)`` stays a self-attention call).

    The quantizer becomes the submodule ``module.geta_input_quantizer`` (so it is saved, moved
    and listed with the model) and is moved to the device of the module's parameters.
    """
    if input_quantizer(module) is not None:
        raise GetaError(f"{type(module).__name__} already has an input quantizer")
    device = next((p.device for p in module.parameters()), None)
    if device is not None:
        quantizer.to(device=device)
    module.add_module(INPUT_QUANTIZER_ATTR, quantizer)
    module.register_forward_pre_hook(_quantize_first_input)


def detach_input_quantizer(module: nn.Module) -> LearnableQuantizer | None:
    """Remove ``module``'s input quantizer and its pre-hook (inputs then pass untouched); return it.

    Returns None if the module has none. Torch has no public way to remove a hook without the
    handle `attach_input_quantizer` dropped, so the hook is found by identity in the module's
    hook table.
    """
    quantizer = input_quantizer(module)
    if quantizer is None:
        return None
    delattr(module, INPUT_QUANTIZER_ATTR)
    hooks = module._forward_pre_hooks
    for key in [k for k, fn in hooks.items() if fn is _quantize_first_input]:
        del hooks[key]
        module._forward_pre_hooks_with_kwargs.pop(key, None)
    return quantizer


def input_quantizer(module: nn.Module) -> LearnableQuantizer | None:
    """The input quantizer attached to ``module``, or None."""
    found = getattr(module, INPUT_QUANTIZER_ATTR, None)
    return found if isinstance(found, LearnableQuantizer) else None


def is_quantized(module: nn.Module) -> bool:
    """True if ``module`` has a geta weight or input quantizer attached."""
    return input_quantizer(module) is not None or bool(weight_quantizers(module))


# ---------------------------------------------------------------------------------------------
# Calibration of activation ranges
# ---------------------------------------------------------------------------------------------


def calibrate_input_ranges(
    model: nn.Module,
    modules: Sequence[nn.Module],
    example_inputs: Any,
    run: Callable[[nn.Module, Any], object],
) -> dict[nn.Module, float]:
    """max|x| of the first positional input of each of ``modules`` during ``run(model, inputs)``.

    ``run`` performs the forward pass(es), e.g. ``lambda m, xs: m(*xs)``; it is called once,
    under ``torch.no_grad()``; if it runs several batches the maximum over all is kept. The
    recording hooks are prepended, so they see the float input *before* any input quantizer,
    and are removed afterwards even if ``run`` raises. A module that never ran is absent from
    the result.
    """
    ranges: dict[nn.Module, float] = {}

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], Tensor) and args[0].numel() > 0:
            peak = float(args[0].detach().abs().amax())
            ranges[module] = max(peak, ranges.get(module, 0.0))

    handles = [m.register_forward_pre_hook(record, prepend=True) for m in modules]
    try:
        with torch.no_grad():
            run(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return ranges


def init_input_quantizers(ranges: dict[nn.Module, float]) -> None:
    """``init_from`` each module's input quantizer with its calibrated range (§1.4).

    Modules without an input quantizer are skipped; the quantizer's ``init_bits`` is kept.
    """
    for module, peak in ranges.items():
        quantizer = input_quantizer(module)
        if quantizer is not None:
            quantizer.init_from(torch.tensor(peak, device=quantizer.qmax.device))
