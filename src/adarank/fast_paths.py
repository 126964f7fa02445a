"""The fast paths a run takes on the model once its adapters are built: none changes a value the
model computes (the fused adapter forward, frozen weights held in bf16 under bf16 autocast) or the
distribution it draws from (dropout masks from adarank/dropout.py, with --fast_dropout). config.json
records each."""

from __future__ import annotations

import torch
from torch import nn

from adarank.dropout import use_fast_attention_dropout, use_fast_dropout
from adarank.methods.fused import fuse_adapter_forward
from adarank.precision import hold_frozen_weights, holds_bf16_weights


def take_fast_paths(model: nn.Module, training, method, run) -> dict[str, int]:
    """How many layers take each path (``training``: TrainingArguments; ``run``: RunArguments)."""
    return apply_fast_paths(model, fused=not run.peft_forward,
                            bf16_weights=holds_bf16_weights(training, method, run),
                            fast_dropout=run.fast_dropout and not torch.cuda.is_available())


def apply_fast_paths(model: nn.Module, fused: bool, bf16_weights: bool, fast_dropout: bool) -> dict[str, int]:
    """The paths asked for, taken; how many layers take each."""
    return {
        "fused_adapter_layers": fuse_adapter_forward(model) if fused else 0,
        "frozen_linear_weights_bf16": hold_frozen_weights(model, torch.bfloat16) if bf16_weights else 0,
        "fast_dropout_layers": use_fast_dropout(model) if fast_dropout else 0,
        "fast_attention_dropout_layers": use_fast_attention_dropout(model) if fast_dropout else 0,
    }
