"""The adapted linear layers' forward with the low-rank update added inside the output of the base
layer's matmul, instead of as a separate tensor.

PEFT computes LoRA as ``result + lora_B(lora_A(x)) * scaling`` and AdaLoRA as
``result += (x @ (A * E).T @ B.T) * scaling / ranknum``: the scaling, and for LoRA the sum, are passes
over a tokens x out tensor, forward and backward, in every adapted matrix at every step. Here the
scale is applied to the tokens x r product, and ``B`` is accumulated straight into the base
output with one in-place ``addmm_`` (the base layer's backward needs its input and weight, never its
output, so autograd allows it). Same function, other rounding: outputs and gradients agree with
PEFT's to float32 precision (tests/test_fused_adapters.py). AdaLoRA's scale is its package's
(``adarank.methods.adalora.update_scale``).

The 4-bit layers (QLoRA, QLoRA + AdaLoRA) take it too: PEFT's 4-bit forward also clones the base
output before adding to it, and under CPU autocast casts the input to fp32 and the update back
(it asks for CUDA's autocast state), three more passes over tokens x out. bitsandbytes' backward
needs the layer's input and the quantised weight, never its output, so the in-place add is as safe
there; the product is on the flattened tokens, so the gradient reaching bitsandbytes is already a
plain matrix.

Only the plain case takes this path: one active adapter, not merged, adapters enabled, no LoRA
variant (DoRA ...), no extra arguments; anything else runs PEFT's own forward. The layers'
parameters, state dict and saved adapters are PEFT's, untouched.
"""

from __future__ import annotations

import importlib
import types

import torch
import torch.nn.functional as F
from peft.tuners.adalora.layer import SVDLinear
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from adarank.methods.adalora import update_scale


def _four_bit_class(module: str, name: str) -> tuple:
    """PEFT's 4-bit layer class, where PEFT defines it (only with bitsandbytes installed)."""
    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return ()
    return (cls,) if cls is not None else ()


LORA_LAYERS = (LoraLinear, *_four_bit_class("peft.tuners.lora.bnb", "Linear4bit"))
ADALORA_LAYERS = (SVDLinear, *_four_bit_class("peft.tuners.adalora.bnb", "SVDLinear4bit"))


def fuse_adapter_forward(model: nn.Module) -> int:
    """Give every plain LoRA and AdaLoRA linear layer of ``model`` (4-bit ones too) the fused forward;
    returns how many layers compute it, counting those whose class has it as its own
    (``fused_forward``: IncreLoRA's, SoRA's). A layer with a LoRA variant (DoRA's magnitude) keeps PEFT's forward and is not counted."""
    count = 0
    for module in model.modules():
        if type(module) in LORA_LAYERS and not getattr(module, "lora_variant", None):
            module.forward = types.MethodType(_lora_forward, module)
            count += 1
        elif type(module) in ADALORA_LAYERS:
            module.forward = types.MethodType(_adalora_forward, module)
            count += 1
        elif getattr(type(module), "fused_forward", False):
            count += 1
    return count


def plain_adapter(layer, args, kwargs) -> str | None:
    """The one active adapter, where the layer is in the plain case; else None."""
    if args or kwargs or layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    adapter = layer.active_adapters[0]
    if adapter not in layer.lora_A or adapter in getattr(layer, "lora_variant", {}):
        return None
    return adapter


def fused_output(layer, x: torch.Tensor, low_rank) -> torch.Tensor:
    """base(x) + low_rank(x) @ B.T, the second term accumulated into the base output's storage, in
    its dtype (bf16 under autocast with the frozen weights held in bf16; a 4-bit layer returns its
    input's dtype, fp32 in QLoRA, where PEFT adds a bf16 product: the same sum, less rounding).
    ``low_rank``: x (tokens x in) -> (the scaled tokens x r product, B). On the flattened tokens, so
    that the in-place add is never on a view (a hook on the returned tensor, such as the plateau
    method's, then sees an ordinary history)."""
    flat = x.reshape(-1, x.shape[-1])
    result = layer.base_layer(flat)
    low, b = low_rank(flat)
    result.addmm_(low.to(result.dtype), b.t().to(result.dtype))
    return result.view(*x.shape[:-1], result.shape[-1])


def diagonal_forward(layer, x: torch.Tensor, adapter: str, diagonal: torch.Tensor) -> torch.Tensor:
    """base(x) + B diag(``diagonal``) A x times the layer's scaling, fused: the update of layers with a
    vector between A and B (SoRA's gate, IncreLoRA's lambda)."""
    a, dropout = layer.lora_A[adapter].weight, layer.lora_dropout[adapter]
    scale = diagonal * layer.scaling[adapter]
    return fused_output(layer, x, lambda flat: (F.linear(dropout(adapter_input(layer, flat, a.dtype)), a) * scale,
                                                layer.lora_B[adapter].weight))


def adapter_input(layer, flat: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The input of the low-rank path. PEFT casts it to the adapter's dtype (fp32); under autocast the
    product is computed in the autocast dtype anyway, so a bf16 input would make a round trip
    bf16 -> fp32 -> bf16 (exact, but two casts a layer forward and two backward): keep it as it is."""
    if torch.is_autocast_enabled(flat.device.type):
        return flat
    return layer._cast_input_dtype(flat, dtype)


def _lora_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    adapter = plain_adapter(self, args, kwargs)
    if adapter is None:
        return type(self).forward(self, x, *args, **kwargs)
    a, dropout, scaling = self.lora_A[adapter].weight, self.lora_dropout[adapter], self.scaling[adapter]
    return fused_output(self, x, lambda flat: (F.linear(dropout(adapter_input(self, flat, a.dtype)), a) * scaling,
                                         self.lora_B[adapter].weight))


def _adalora_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    adapter = plain_adapter(self, args, kwargs)
    if adapter is None:
        return type(self).forward(self, x, *args, **kwargs)
    a, e, dropout = self.lora_A[adapter], self.lora_E[adapter], self.lora_dropout[adapter]
    scale = update_scale(self.scaling[adapter], self.ranknum[adapter])
    return fused_output(self, x, lambda flat: ((dropout(adapter_input(self, flat, a.dtype)) @ (a * e).T) * scale,
                                         self.lora_B[adapter]))
