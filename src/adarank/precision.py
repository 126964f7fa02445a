"""The precision a run computes in: each CPU kind's default (from measurements on that kind), the
record of who chose it, and frozen base weights held in the compute dtype.

Under bf16 autocast every frozen base weight is cast to bf16 again at every use: autocast's cast
cache keeps only leaf tensors that require grad, and a frozen weight does not. Held in bf16 for the
whole run, the weight is already in the dtype its matmul computes in, so the casts (two a layer, a
weight and a bias, at every forward) go. It changes no value the matmul sees (autocast would have
rounded the weight to bf16 the same way); adapters, the task head, gradients, optimizer state and
AdaLoRA's importance scores stay fp32.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from adarank.tasks import Task

log = logging.getLogger(__name__)


# bf16 autocast on CPUs with bf16 units: matmuls in bf16, adapters, gradients, optimizer state and
# AdaLoRA's importance scores in fp32. Each CPU kind's default comes from a measurement on that kind
# (BENCHMARKS.md): the training throughput of LoRA in bf16 over fp32, with the accuracy of bf16 autocast
# matching fp32's within seed noise on SST-2. Without bf16 units bf16 is emulated, and fp32 is the default:
# BF16_EMULATED is that measurement.
BF16_MEASURED = {
    "amx": "bf16 1.44x fp32 on SST-2 and 1.46x on RTE, measured on a Sapphire Rapids CPU",
    "avx512_bf16": "bf16 1.95-2.28x fp32 on SST-2 and 1.87-1.93x on RTE, measured on an AVX512-BF16 CPU "
                   "without AMX",
}
BF16_EMULATED = ("bf16 matmuls at 0.03x fp32's rate and LoRA training 24x slower on SST-2, measured on an AVX2 CPU "
                 "without bf16 units")
FOUR_BIT_EMULATED = ("QLoRA's steps 10x slower in bfloat16 and 11x in float16 than in float32 on CoLA, measured "
                     "on an AVX2 CPU without bf16 units")


def cpu_kind() -> str:
    """amx, avx512_bf16 (bf16 units without AMX), or other (bf16 emulated)."""
    if torch.cpu._is_amx_tile_supported():
        return "amx"
    return "avx512_bf16" if torch.cpu._is_avx512_bf16_supported() else "other"


def cpu_has_bf16_units() -> bool:
    return cpu_kind() in BF16_MEASURED


def four_bit_compute_note(compute_dtype: str) -> None:
    """Say where a 4-bit base's compute dtype is emulated on this CPU."""
    if compute_dtype != "float32" and not torch.cuda.is_available() and not cpu_has_bf16_units():
        log.warning("--bnb_4bit_compute_dtype %s on a CPU without bf16 units: its matmuls are emulated (%s); "
                    "without the flag this CPU computes in float32", compute_dtype, FOUR_BIT_EMULATED)


def bf16_by_default(task: Task) -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return task.cpu_bf16_measured and cpu_has_bf16_units()


def precision_note(training, explicit: set[str], task: Task) -> dict:
    """config.json's record of the precision and who chose it."""
    if "no_bf16" in explicit:
        why = "--no_bf16"
    elif getattr(training, "fp16", False) and "bf16" not in explicit:
        why = f"--fp16 (fp16 autocast instead of the {'bf16' if bf16_by_default(task) else 'fp32'} default)"
    elif "bf16" in explicit and not torch.cuda.is_available() and not cpu_has_bf16_units():
        why = f"--bf16, on a CPU without bf16 units: emulated ({BF16_EMULATED})"
        log.warning("--bf16 on a CPU without bf16 units: bf16 is emulated here (%s); without --bf16 this CPU "
                    "trains in fp32", BF16_EMULATED)
    elif "bf16" in explicit:
        why = "--bf16"
    elif torch.cuda.is_available():
        why = "default: the GPU " + ("computes" if training.bf16 else "cannot compute") + " in bf16"
    elif cpu_has_bf16_units() and training.bf16:
        why = f"default: this CPU has bf16 units ({cpu_kind()}: {BF16_MEASURED[cpu_kind()]})"
    elif cpu_has_bf16_units():
        why = (f"default: fp32 (bf16 autocast on the CPU is not yet measured against fp32 for "
               f"{task.family}; --bf16 asks for it)")
    else:
        why = f"default: fp32 (this CPU has no bf16 units: bf16 would be emulated; {BF16_EMULATED})"
    fp16 = {"fp16_autocast": True} if getattr(training, "fp16", False) else {}
    return {"bf16_autocast": bool(training.bf16), **fp16, "chosen_by": why}


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
