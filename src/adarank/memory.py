"""Parameter counts and measured peak memory."""

from __future__ import annotations

import resource
import sys

import torch
from torch import nn


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters split into adapter and task head, and the total model size."""
    adapter = head = frozen = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            frozen += param.numel()
        elif "lora_" in name:
            adapter += param.numel()
        else:
            head += param.numel()
    return {
        "trainable_params": adapter + head,
        "adapter_params": adapter,
        "head_params": head,
        "total_params": adapter + head + frozen,
    }


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict:
    """Peak memory so far: CUDA allocations on a GPU, the process's peak RSS on a CPU."""
    if torch.cuda.is_available():
        return {
            "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20,
            "peak_memory_measured_by": "torch.cuda.max_memory_allocated (since training began)",
        }
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    unit = 1 if sys.platform == "darwin" else 1024
    return {
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20,
        "peak_memory_measured_by": "peak resident set size of the process (getrusage ru_maxrss)",
    }
