"""No adapters: the pretrained model evaluated as it is (``--method none``), the zero-shot
baseline of a generation task. Nothing is trained and no adapter is saved."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from adarank.errors import UsageError
from adarank.methods.base import AdapterMethod, AdapterRequest, BuiltAdapter, Plan, Ranks, Shapes


@dataclass(frozen=True)
class NoAdapterPlan(Plan):
    @property
    def ranks(self) -> Ranks:
        return Ranks(0, 0)


class NoAdapter(AdapterMethod):
    name = "none"
    trains = False
    reads = frozenset()
    ranks_hint = "it trains no adapter, so it has no rank, alpha or dropout"
    refuses = {
        "diagnostics": "--diagnostics records the adapters' updates during training, and --method {name} trains no "
                       "adapter: leave it out",
        "merge_adapter": "--merge_adapter merges a trained adapter into the base, and --method {name} trains none: "
                         "leave it out"}

    def plan(self, request: AdapterRequest) -> NoAdapterPlan:
        if not request.task.allows_no_adapter:
            raise UsageError(f"--method none evaluates the base model untrained, but {request.task.name}'s "
                             "classification head starts random: train with --method lora or adalora")
        return NoAdapterPlan()

    def build(self, model: nn.Module, plan: NoAdapterPlan, request: AdapterRequest) -> BuiltAdapter:
        model.requires_grad_(False)
        return BuiltAdapter(model, callbacks=[])

    def parameters_at_rank(self, rank: int, shapes: Shapes) -> int:
        return 0

    def budget_ranks(self, rank: int, start_rank: int | None = None) -> Ranks:
        return Ranks(0, 0)
