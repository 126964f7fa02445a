"""DoRA (Liu et al., ICML 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation").

Every adapted weight is split into a magnitude and a direction (section 4.1, eq. 5):
W' = m (W0 + s B A) / ||W0 + s B A||_c, with m trained and initialised to ||W0||_c, the norm of each of
W0's output rows (PEFT's layout, out x in: one magnitude per output feature), and the direction
trained as LoRA. So a matrix of (in, out) features trains r (in + out) + out parameters.
The paper trains DoRA with the hyperparameters of the LoRA it is compared with (section 5): rank,
alpha and the rest are LoRA's here too. PEFT: ``LoraConfig(use_dora=True)``; its DoRA layers run
PEFT's own forward (the fused one, methods/fused.py, takes plain LoRA layers only).
"""

from __future__ import annotations

from dataclasses import dataclass

from adarank.methods.base import AdapterRequest, Shapes, lora_parameters
from adarank.methods.four_bit import FourBitBase
from adarank.methods.lora import LoraPlan
from adarank.methods.variants.common import LoraVariant, VariantPlan, extended


@dataclass(frozen=True)
class DoraPlan(VariantPlan):
    use_dora: bool = True

    def peft_options(self) -> dict:
        return {"use_dora": True}


def dora_parameters(rank: int, shapes: Shapes) -> int:
    """LoRA's B and A, and a magnitude per output feature, in every adapted matrix."""
    return lora_parameters(rank, shapes) + sum(out for _, out in shapes)


class Dora(LoraVariant):
    """LoRA on the direction of each weight, and a trained magnitude per output feature."""

    name = "dora"
    title = "DoRA"

    def variant_plan(self, lora: LoraPlan, request: AdapterRequest) -> DoraPlan:
        return extended(lora, DoraPlan)

    def parameters_at_rank(self, rank: int, shapes: Shapes) -> int:
        return dora_parameters(rank, shapes)


class QDora(FourBitBase, Dora):
    """DoRA on a 4-bit NF4 base: PEFT dequantises each weight to compute its norm."""

    name = "qdora"
    title = "QDoRA"
