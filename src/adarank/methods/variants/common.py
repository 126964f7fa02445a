"""What PEFT's LoRA variants share here: LoRA's plan (the rank from the budget or --lora_r, alpha,
dropout, and their checks) and LoRA's parameter count, plus the ``LoraConfig`` options that make
the variant. A variant is LoRA with one more thing in PEFT's config, so it subclasses ``Lora``."""

from __future__ import annotations

from dataclasses import dataclass, fields

from peft import LoraConfig, get_peft_model
from torch import nn

from adarank.methods.base import AdapterRequest, BuiltAdapter, adapter_placement
from adarank.methods.lora import Lora, LoraPlan


@dataclass(frozen=True)
class VariantPlan(LoraPlan):
    """LoRA's plan and the variant's own settings."""

    @property
    def update_scale(self) -> float:
        """What the update B A is multiplied by: alpha / r, as in LoRA."""
        return self.lora_alpha / self.r

    def peft_options(self) -> dict:
        """The ``LoraConfig`` arguments that make the variant."""
        raise NotImplementedError

    def as_dict(self) -> dict:
        return {**super().as_dict(), "update_scale": self.update_scale}


def extended(lora: LoraPlan, kind: type[VariantPlan], **settings) -> VariantPlan:
    """LoRA's resolved plan as a variant's plan with the variant's ``settings``."""
    return kind(**{f.name: getattr(lora, f.name) for f in fields(LoraPlan)}, **settings)


class LoraVariant(Lora):
    """LoRA with the options of one of PEFT's variants: LoRA's plan and checks, then the variant's
    (``variant_plan``); LoRA's parameter count unless the variant trains more."""

    def plan(self, request: AdapterRequest) -> VariantPlan:
        return self.variant_plan(super().plan(request), request)

    def variant_plan(self, lora: LoraPlan, request: AdapterRequest) -> VariantPlan:
        raise NotImplementedError

    def peft_config(self, plan: VariantPlan, request: AdapterRequest) -> LoraConfig:
        return LoraConfig(r=plan.r, lora_alpha=plan.lora_alpha, lora_dropout=plan.lora_dropout,
                          **plan.peft_options(), **adapter_placement(request))

    def build(self, model: nn.Module, plan: VariantPlan, request: AdapterRequest) -> BuiltAdapter:
        return BuiltAdapter(get_peft_model(model, self.peft_config(plan, request)), callbacks=[])
