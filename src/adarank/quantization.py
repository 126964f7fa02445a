"""bitsandbytes' 4-bit layers: telling them apart (``is_linear_4bit``), and their packed CPU
kernel: where to use it, and keeping it exact.

On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a ``Linear4bit`` weight for a
fused kernel the first time the layer runs in eval mode without gradients. That
kernel computes in bfloat16 whatever the compute dtype, repacking asserts
``out_features % 32 == 0`` (and needs ``in_features`` to be a multiple of the
quantisation block), a packed layer cannot train (its matmul has no backward), and
bitsandbytes' own unpacking re-quantises the block constants, so the weights after
an evaluation are not the weights before it.

So the choice is made per layer: the packed kernel where the CPU has it, the
layer's shape allows it and the compute dtype is bfloat16 (it changes no precision
the user asked for); the plain kernel everywhere else. Layers that may pack keep
their plain weight and quantisation state aside while packed, and get exactly
those back before any step that needs gradients and before their state is saved.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

PACK_BLOCK_N = 32  # bitsandbytes' packed layout groups 32 output rows


def is_linear_4bit(module: nn.Module) -> bool:
    """bitsandbytes' layer itself (PEFT's LoRA wrapper around it has the same class name)."""
    kind = type(module)
    return kind.__name__ == "Linear4bit" and kind.__module__.startswith("bitsandbytes")


def packable(layer: nn.Module) -> bool:
    """Whether bitsandbytes' repacking can handle this layer's shape."""
    state = layer.weight.quant_state
    return layer.out_features % PACK_BLOCK_N == 0 and layer.in_features % state.blocksize == 0


def is_packed(layer: nn.Module) -> bool:
    return bool(getattr(layer.weight.quant_state, "packing_format_for_cpu", False))


def choose_kernels(model: nn.Module, compute_dtype: torch.dtype) -> None:
    """Per 4-bit layer: packed kernel where it is exact to use (see above), plain elsewhere.

    ``support_avx512bf16_for_cpu`` is bitsandbytes' own per-layer switch, set at
    construction from the CPU; it is only ever narrowed here.
    """
    for layer in model.modules():
        if not is_linear_4bit(layer):
            continue
        allowed = bool(layer.support_avx512bf16_for_cpu) and compute_dtype == torch.bfloat16 and packable(layer)
        layer.support_avx512bf16_for_cpu = allowed
        if allowed and not getattr(layer, "_plain_weights_kept", False):
            layer.register_forward_pre_hook(_before_forward)
            layer.register_state_dict_pre_hook(_before_state_dict)
            layer._plain_weights_kept = True


def fold_backward_matmuls(model: nn.Module) -> int:
    """Make the gradient that reaches every 4-bit layer's output contiguous; returns the layers hooked.

    bitsandbytes' backward computes ``torch.matmul(grad_output, dequantized W)``. Where the gradient
    arrives transposed within each sequence (the key layer's, from attention with dropout in
    training), ``torch.matmul`` cannot fold the batch into one matrix product: it expands W to one
    copy per sequence, copies that ([batch, out, in]) and runs a batched product. Copying the
    gradient (tokens x out_features) instead is cheap, and the product is the same.
    """
    layers = [layer for layer in model.modules() if is_linear_4bit(layer)]
    for layer in layers:
        if not getattr(layer, "_gradient_made_contiguous", False):
            layer.register_forward_hook(_contiguous_gradient)
            layer._gradient_made_contiguous = True
    return len(layers)


def _contiguous_gradient(layer: nn.Module, args: tuple, output: torch.Tensor) -> None:
    if isinstance(output, torch.Tensor) and output.requires_grad:
        output.register_hook(torch.Tensor.contiguous)


def describe_kernels(model: nn.Module) -> dict:
    """For config.json: which 4-bit layers may use the packed CPU kernel."""
    layers = [m for m in model.modules() if is_linear_4bit(m)]
    packed = sum(bool(m.support_avx512bf16_for_cpu) for m in layers)
    return {
        "packed_kernel_layers": packed,
        "plain_kernel_layers": len(layers) - packed,
        "contiguous_gradient_layers": sum(bool(getattr(m, "_gradient_made_contiguous", False)) for m in layers),
        "rule": "packed (bitsandbytes' bf16 CPU kernel, evaluation only) where the CPU has AVX512-BF16, "
                "the compute dtype is bfloat16, out_features % 32 == 0 and in_features is a multiple of the "
                "quantisation block; plain elsewhere",
    }


def _before_forward(layer: nn.Module, args: tuple) -> None:
    x = args[0] if args else None
    needs_gradients = layer.training or (x is not None and x.requires_grad)
    if is_packed(layer):
        if needs_gradients:
            _restore_plain(layer)
    elif x is not None and x.device.type == "cpu" and not needs_gradients:
        # bitsandbytes is about to pack this layer in place: keep the plain form to return to.
        layer._plain = (layer.weight.data, copy.copy(layer.weight.quant_state))


def _before_state_dict(layer: nn.Module, prefix: str, keep_vars: bool) -> None:
    if is_packed(layer):
        _restore_plain(layer)


def _restore_plain(layer: nn.Module) -> None:
    data, state = layer._plain
    layer.weight.data = data
    layer.weight.quant_state = state
    layer.quant_state = state
    del layer._plain
