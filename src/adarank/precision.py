"""Frozen base weights held in the compute dtype.

Under bf16 autocast every frozen base weight is cast to bf16 again at every use: autocast's cast
cache keeps only leaf tensors that require grad, and a frozen weight does not. Held in bf16 for the
whole run, the weight is already in the dtype its matmul computes in, so the casts (two a layer, a
weight and a bias, at every forward) go. It changes no value the matmul sees (autocast would have
rounded the weight to bf16 the same way); adapters, the task head, gradients, optimizer state and
AdaLoRA's importance scores stay fp32.
"""

from __future__ import annotations

import torch
from torch import nn


def hold_frozen_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast the weight and bias of every linear layer that trains none of them to ``dtype``;
    returns how many layers. Subclasses (bitsandbytes' 4-bit layers, PEFT's) keep their own storage."""
    held = 0
    for module in model.modules():
        if type(module) is not nn.Linear:
            continue
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        module.to(dtype)
        held += 1
    return held


def holds_bf16_weights(training, method, run) -> bool:
    """Where a run holds its frozen weights in bf16: bf16 autocast on the CPU (TrainingArguments.bf16),
    a method that trains, and no merged model to save (--merge_adapter saves the base weights)."""
    return training.bf16 and not torch.cuda.is_available() and method.trains and not run.merge_adapter
