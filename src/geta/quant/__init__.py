"""The learnable quantizer (docs/method.md §1): pure math, the module, and binding it to layers.

- `geta.quant.functional`: ``fake_quant`` (one registered op, ``torch.ops.geta.fake_quant``,
  with the straight-through backward of §1.3) and the bit algebra of §1.2;
- `geta.quant.quantizer`: `LearnableQuantizer`, the module holding step (d), qmax (q_m) and
  exponent (t);
- `geta.quant.attach`: weight quantizers as parametrizations, input quantizers as pre-hooks,
  and activation-range calibration;
- `geta.quant.fusable`: the same fake-quantizer as plain ops, which ``torch.compile`` fuses;
- `geta.quant.kernels`: those plain ops compiled once into one fused CPU loop for the forward and
  one for the backward, which the eager op runs on large tensors (``use_fused_kernels``);
- `geta.quant.recompute`: `recompute_quantized`, which keeps fake-quant outputs for the backward
  as recipes (recomputed) instead of a second full-size copy;
- `geta.quant.products`: quantizers on the operands of activation x activation products
  (attention's q·kᵀ and p·v), applied at the call inside the module that runs them;
- `geta.quant.eager_attention`: ``F.scaled_dot_product_attention`` in eager form with its
  operands quantized (what an attention call becomes under product quantizers).
"""

from __future__ import annotations

from geta.quant.attach import (
    attach_input_quantizer,
    attach_weight_quantizer,
    calibrate_input_ranges,
    init_input_quantizers,
    input_quantizer,
    is_quantized,
    weight_quantizers,
)
from geta.quant.functional import (
    bits,
    code_range,
    fake_quant,
    integer_codes,
    project_step,
    step_for_bits,
    step_interval,
)
from geta.quant.kernels import use_fused_kernels
from geta.quant.products import (
    ProductQuantizers,
    attach_product_quantizers,
    detach_product_quantizers,
    product_quantizers,
    quantized_attention,
    record_products,
)
from geta.quant.quantizer import LearnableQuantizer
from geta.quant.recompute import recompute_in_forward, recompute_quantized

__all__ = [
    "LearnableQuantizer",
    "ProductQuantizers",
    "attach_input_quantizer",
    "attach_product_quantizers",
    "attach_weight_quantizer",
    "bits",
    "calibrate_input_ranges",
    "code_range",
    "detach_product_quantizers",
    "fake_quant",
    "init_input_quantizers",
    "input_quantizer",
    "integer_codes",
    "is_quantized",
    "product_quantizers",
    "project_step",
    "quantized_attention",
    "record_products",
    "recompute_in_forward",
    "recompute_quantized",
    "step_for_bits",
    "step_interval",
    "use_fused_kernels",
    "weight_quantizers",
]
