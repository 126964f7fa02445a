"""LoRA (Hu et al., 2022): a fixed rank r in every adapted matrix."""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig, get_peft_model
from torch import nn

from adarank.methods.base import (LORA_FLAGS, AdapterMethod, AdapterRequest, BuiltAdapter, Plan, Ranks, Shapes, adapter_placement,
                                  budget_rank, check_lora_arguments, lora_parameters, positive)


@dataclass(frozen=True)
class LoraPlan(Plan):
    r: int
    lora_alpha: float
    lora_dropout: float

    @property
    def ranks(self) -> Ranks:
        return Ranks(self.r, self.r)


class Lora(AdapterMethod):
    name = "lora"
    title = "LoRA"
    reads = LORA_FLAGS | {"lora_r"}
    ranks_hint = "its rank: --lora_r, or --budget"

    def plan(self, request: AdapterRequest) -> LoraPlan:
        a = request.args
        check_lora_arguments(a)
        r = positive("lora_r", a.lora_r if a.lora_r is not None else budget_rank(a.budget))
        return LoraPlan(r=r, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout)

    def largest_rank(self, plan: LoraPlan) -> tuple[str, int]:
        return "lora_r", plan.r

    def build(self, model: nn.Module, plan: LoraPlan, request: AdapterRequest) -> BuiltAdapter:
        config = LoraConfig(r=plan.r, lora_alpha=plan.lora_alpha, lora_dropout=plan.lora_dropout,
                            **adapter_placement(request))
        return BuiltAdapter(get_peft_model(model, config), callbacks=[])

    def parameters_at_rank(self, rank: int, shapes: Shapes) -> int:
        return lora_parameters(rank, shapes)
