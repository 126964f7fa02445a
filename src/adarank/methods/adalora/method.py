"""AdaLoRA (Zhang et al., ICLR 2023) as a method: its plan resolved from the run's flags, and the
PeftModel built with the allocation callback that drives it.

The adapters are SVD-form, W + P diag(lambda) Q, pruned by importance to a budget
(``schedule``: the plan and the budget schedule; ``allocation``: the callback and the
allocator state checkpoints carry; ``fast``: PEFT's per-step loops batched).
"""

from __future__ import annotations

import math

import torch
from peft import AdaLoraConfig, PeftModel, get_peft_model
from torch import nn

from adarank.errors import UsageError
from adarank.methods.adalora.allocation import AdaLoraAllocation
from adarank.methods.adalora.fast import distances_from_orthogonal, vectorise_allocator, vectorise_regulariser
from adarank.methods.adalora.schedule import AdaLoraPlan, check_allocations, fit_budget_schedule, init_rank
from adarank.methods.base import (LORA_FLAGS, AdapterMethod, AdapterRequest, BuiltAdapter, Ranks, Shapes, ShapeChanging,
                                  adapter_placement, budget_rank, check_lora_arguments, positive)
from adarank.tasks import recipe_of

INITS = {
    "paper": "E = 0, A and B ~ N(0, 0.02) (the paper; PEFT's default)",
    "lora": "E = 1, B = 0, A Kaiming-uniform as LoRA's A (departs from the paper)",
}


class AdaLora(ShapeChanging, AdapterMethod):
    """SVD-form adapters pruned by importance to a budget."""

    name = "adalora"
    title = "AdaLoRA"
    reads = LORA_FLAGS | {"init_r", "target_r", "tinit", "tfinal", "delta_t", "orth_reg_weight", "adalora_init",
                          "beta1", "beta2"}
    ranks_hint = "its ranks: --init_r and --target_r, or --budget"
    allocator_tensors = 3  # the allocator's importance, its average and its uncertainty, per adapter parameter

    def plan(self, request: AdapterRequest) -> AdaLoraPlan:
        a, task = request.args, request.task
        check_lora_arguments(a)
        if a.orth_reg_weight is not None and a.orth_reg_weight < 0:
            raise UsageError(f"--orth_reg_weight {a.orth_reg_weight} must be >= 0 (the paper: 0.1 to 0.5)")
        recipe = recipe_of(task, a.recipe)
        # The official recipe's small budget has its own ranks, when the user gave neither.
        from_recipe = a.budget == "small" and recipe.target_r is not None and a.target_r is None
        target_r = positive("target_r", recipe.target_r if from_recipe else
                            a.target_r if a.target_r is not None else budget_rank(a.budget))
        init_r = positive("init_r", a.init_r if a.init_r is not None else
                          recipe.init_r if from_recipe else init_rank(target_r))
        if target_r > init_r:
            raise UsageError(
                f"--target_r {target_r} is larger than --init_r {init_r}: AdaLoRA only prunes, "
                f"so use --init_r {init_rank(target_r)} or more (or a smaller --target_r)"
            )
        if target_r == init_r:
            raise UsageError(
                f"--target_r {target_r} equals --init_r {init_r}: AdaLoRA needs target_r below init_r (it prunes "
                f"from one to the other), so use --init_r {init_rank(target_r)} or a smaller --target_r; a fixed "
                "rank is --method lora"
            )
        if a.adalora_init not in INITS:
            raise UsageError(f"--adalora_init {a.adalora_init!r}: choose one of {', '.join(INITS)}")
        for name in ("beta1", "beta2"):
            if not 0.0 < getattr(a, name) < 1.0:
                raise UsageError(f"--{name} {getattr(a, name)} must lie strictly between 0 and 1 (the paper: 0.85)")
        schedule = fit_budget_schedule(task, request.total_step, a.tinit, a.tfinal, a.delta_t, a.recipe)
        check_allocations(schedule, explicit=any(value is not None for value in (a.tinit, a.tfinal, a.delta_t)))
        return AdaLoraPlan(
            init_r=init_r, target_r=target_r, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
            orth_reg_weight=a.orth_reg_weight if a.orth_reg_weight is not None else recipe.orth_reg_weight,
            beta1=a.beta1, beta2=a.beta2, schedule=schedule,
            compared_with_lora_r=budget_rank(a.budget) if from_recipe else target_r,
            init=a.adalora_init,
        )

    def largest_rank(self, plan: AdaLoraPlan) -> tuple[str, int]:
        return "init_r", plan.init_r

    def build(self, model: nn.Module, plan: AdaLoraPlan, request: AdapterRequest) -> BuiltAdapter:
        config = AdaLoraConfig(**plan.peft_arguments(), **adapter_placement(request))
        peft_model = get_peft_model(model, config)
        if plan.init == "lora":
            _lora_like_start(peft_model)
        vectorise_allocator(peft_model)
        vectorise_regulariser(peft_model)
        allocation = AdaLoraAllocation(peft_model, request.rank_log)
        return BuiltAdapter(peft_model, callbacks=[allocation], summary=allocation.summary,
                            scalars=lambda: {**regulariser_scalars(peft_model),
                                             "num_live_param": float(allocation.live_params())})

    def parameters_at_rank(self, rank: int, shapes: Shapes) -> int:
        return sum(rank * (i + o + 1) for i, o in shapes)  # P, Q and the diagonal E (section 3.1)

    def budget_ranks(self, rank: int, start_rank: int | None = None) -> Ranks:
        """From ``start_rank`` (--init_r; default 1.5x the budget's, ``init_rank``) down to the budget's rank."""
        return Ranks(start_rank or init_rank(rank), rank)


def regulariser_scalars(model: PeftModel, adapter: str | None = None) -> dict[str, float]:
    """The orthogonal regulariser now, for the logs (run/scalars.py, run/diagnostics.py): each half's
    mean distance from orthogonal, R (the mean over every A and B, eq. 4) and gamma R, the part of the
    loss it is; nothing for adapters without it."""
    adapter = adapter or model.active_adapter
    distances: dict[str, list[float]] = {"A": [], "B": []}
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "lora_E") and adapter in module.lora_E:
                for kind in ("A", "B"):
                    matrix = getattr(module, f"lora_{kind}")[adapter]
                    distances[kind].append(float(distances_from_orthogonal(kind, matrix)))
    every = distances["A"] + distances["B"]
    if not every:
        return {}
    regulariser = sum(every) / len(every)
    return {"Orth_regu_loss/lora_A": sum(distances["A"]) / len(distances["A"]),
            "Orth_regu_loss/lora_B": sum(distances["B"]) / len(distances["B"]),
            "orth_regu_loss": regulariser,
            "regu_loss": model.peft_config[adapter].orth_reg_weight * regulariser}


def _lora_like_start(model: PeftModel) -> None:
    """E = 1, B = 0 and A as LoRA draws it: the update starts at zero as in the paper, but B
    gets a gradient from the first step instead of waiting for E and the 0.02-scale A, B to grow."""
    adapter = model.active_adapter
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "lora_E") and adapter in module.lora_E:
                nn.init.ones_(module.lora_E[adapter])
                nn.init.zeros_(module.lora_B[adapter])
                nn.init.kaiming_uniform_(module.lora_A[adapter], a=math.sqrt(5))
