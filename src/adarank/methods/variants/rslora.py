"""rsLoRA (Kalajdzievski, 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA"):
LoRA whose update is scaled by alpha / sqrt(r) instead of alpha / r.

The paper (section 3, its theorem on rank-stabilised adapters) shows that only a scale of order
1 / sqrt(r) keeps the adapter's activations and gradients of the same size as r grows; alpha / r
shrinks them, so that higher ranks learn no more than low ones. The ranks, parameters and every
other default are LoRA's (PEFT: ``LoraConfig(use_rslora=True)``). With the same alpha, the update
scale at r = 2 is alpha / 1.41 instead of alpha / 2, at r = 8 alpha / 2.83 instead of alpha / 8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from adarank.methods.base import AdapterRequest
from adarank.methods.four_bit import FourBitBase
from adarank.methods.lora import LoraPlan
from adarank.methods.variants.common import LoraVariant, VariantPlan, extended


@dataclass(frozen=True)
class RsLoraPlan(VariantPlan):
    use_rslora: bool = True

    @property
    def update_scale(self) -> float:
        return self.lora_alpha / math.sqrt(self.r)

    def peft_options(self) -> dict:
        return {"use_rslora": True}


class RsLora(LoraVariant):
    """LoRA scaled by alpha / sqrt(r)."""

    name = "rslora"
    title = "rsLoRA"

    def variant_plan(self, lora: LoraPlan, request: AdapterRequest) -> RsLoraPlan:
        return extended(lora, RsLoraPlan)


class QRsLora(FourBitBase, RsLora):
    """rsLoRA on a 4-bit NF4 base: the scale is the adapter's alone, so PEFT's 4-bit LoRA layers take it."""

    name = "qrslora"
    title = "QrsLoRA"
