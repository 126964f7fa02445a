"""The same methods on a base model quantised to 4-bit NF4 (QLoRA, Dettmers et al., 2023).

The adapters, and so their parameter counts, are those of the method on a full-precision base."""

from __future__ import annotations

from peft import prepare_model_for_kbit_training
from torch import nn

from adarank.methods.adalora import AdaLora
from adarank.methods.base import AdapterRequest, BuiltAdapter, Plan
from adarank.methods.lora import Lora


class FourBitBase:
    """Mixin: load the base in 4 bits and prepare it for training before adapters are added."""

    quantized = True
    reads = frozenset({"bnb_4bit_compute_dtype"})
    refuses = {"merge_adapter": (
        "--merge_adapter cannot merge into a 4-bit base ({name}): bitsandbytes cannot add the "
        "update to NF4 weights exactly; load adapter/ onto a full-precision base and merge there")}

    def build(self, model: nn.Module, plan: Plan, request: AdapterRequest) -> BuiltAdapter:
        # Casts the unquantised parameters (norms, embeddings) to fp32 for stable training.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=request.gradient_checkpointing)
        return super().build(model, plan, request)


class QLora(FourBitBase, Lora):
    """QLoRA: LoRA on a 4-bit base."""

    name = "qlora"
    title = "QLoRA"


class QAdaLora(FourBitBase, AdaLora):
    """QLoRA + AdaLoRA: AdaLoRA on a 4-bit base (PEFT's SVDLinear4bit)."""

    name = "qadalora"
    title = "QLoRA + AdaLoRA"
