"""Adapter methods: each is a small object that plans its budget and builds a PeftModel.

A method first ``plan``s (checks the user's numbers and resolves every
default, before any model is loaded, so bad input fails fast), then
``build``s the adapters and the callbacks that drive them during training.
New methods register themselves with ``register_method``; the pipeline
looks them up by name and knows nothing else about them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from peft import AdaLoraConfig, LoraConfig, PeftModel, TaskType, get_peft_model, prepare_model_for_kbit_training
from torch import nn
from transformers import TrainerCallback

from adarank.callbacks import AdaLoraAllocation
from adarank.errors import UsageError
from adarank.ranks import RankLog
from adarank.schedule import fit_budget_schedule
from adarank.tasks import GlueTask

# The paper's two budgets: the final average rank of every adapted matrix (Table 1).
BUDGET_RANKS = {"small": 2, "large": 8}
# AdaLoRA starts from 1.5x the final budget, b(0) = 1.5 b(T) (section 4, setup).
INIT_RANK_FACTOR = 1.5


@dataclass
class AdapterRequest:
    """What a method needs to know about the run."""

    task: GlueTask
    args: object  # AdapterArguments (plus a method's own fields)
    total_step: int
    target_modules: list[str] = field(default_factory=list)
    head_modules: list[str] = field(default_factory=list)
    rank_log: RankLog | None = None
    gradient_checkpointing: bool = False
    resume_from: str | None = None  # the checkpoint a resumed run starts from
    extra: tuple = ()  # a method's own argument dataclasses, parsed with the rest
    steps_per_epoch: int | None = None  # optimizer steps of one epoch (None: unknown)


@dataclass
class BuiltAdapter:
    model: PeftModel
    callbacks: list[TrainerCallback]
    summary: Callable[[], dict] | None = None  # the method's own figures for metrics.json, after training


class AdapterMethod:
    """The interface every method implements."""

    name: str = ""
    quantized: bool = False  # True: the base model is loaded in 4 bits (NF4) before adapters are added
    # False where adapter shapes change during training, so an earlier checkpoint cannot be
    # loaded back into the final model (--load_best_model_at_end).
    reloads_checkpoints: bool = True

    def plan(self, request: AdapterRequest) -> dict:
        """Check and resolve the method's hyperparameters; returns them for config.json.

        ``budget_rank`` in the plan is the rank per adapted matrix the run's budget stands
        for (LoRA's r, AdaLoRA's final average, a growing method's ceiling); config.json
        labels the run with it, so runs of one budget are compared with each other.
        """
        raise NotImplementedError

    def build(self, model: nn.Module, plan: dict, request: AdapterRequest) -> BuiltAdapter:
        raise NotImplementedError


METHODS: dict[str, AdapterMethod] = {}


def register_method(method: AdapterMethod) -> AdapterMethod:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> AdapterMethod:
    if name not in METHODS:
        raise UsageError(f"unknown method {name!r}: choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def budget_rank(budget: str) -> int:
    if budget not in BUDGET_RANKS:
        raise UsageError(f"unknown budget {budget!r}: choose one of {', '.join(BUDGET_RANKS)}")
    return BUDGET_RANKS[budget]


def budget_label(rank: int) -> str:
    """The paper's name for a budget of this rank per matrix, else r<rank>."""
    names = {r: name for name, r in BUDGET_RANKS.items()}
    return names.get(rank, f"r{rank}")


def check_lora_arguments(args) -> None:
    """Checks shared by every LoRA-style method."""
    if not 0.0 <= args.lora_dropout < 1.0:
        raise UsageError(f"--lora_dropout {args.lora_dropout} must be in [0, 1)")
    if args.lora_alpha <= 0:
        raise UsageError(f"--lora_alpha {args.lora_alpha} must be positive (updates are scaled by alpha / r)")


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise UsageError(f"--{name} {value} must be at least 1")
    return value


class Lora(AdapterMethod):
    """LoRA (Hu et al., 2022): a fixed rank r in every adapted matrix."""

    name = "lora"

    def plan(self, request: AdapterRequest) -> dict:
        a = request.args
        check_lora_arguments(a)
        r = _positive("lora_r", a.lora_r if a.lora_r is not None else budget_rank(a.budget))
        return {"r": r, "lora_alpha": a.lora_alpha, "lora_dropout": a.lora_dropout, "budget_rank": r}

    def build(self, model: nn.Module, plan: dict, request: AdapterRequest) -> BuiltAdapter:
        config = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=plan["r"],
            lora_alpha=plan["lora_alpha"],
            lora_dropout=plan["lora_dropout"],
            target_modules=request.target_modules,
            modules_to_save=request.head_modules,
        )
        return BuiltAdapter(get_peft_model(model, config), callbacks=[])


class AdaLora(AdapterMethod):
    """AdaLoRA (Zhang et al., ICLR 2023): SVD-form adapters pruned by importance to a budget."""

    name = "adalora"
    reloads_checkpoints = False

    def plan(self, request: AdapterRequest) -> dict:
        a, task = request.args, request.task
        check_lora_arguments(a)
        if a.orth_reg_weight is not None and a.orth_reg_weight < 0:
            raise UsageError(f"--orth_reg_weight {a.orth_reg_weight} must be >= 0 (the paper: 0.1 to 0.5)")
        target_r = _positive("target_r", a.target_r if a.target_r is not None else budget_rank(a.budget))
        init_r = _positive("init_r", a.init_r if a.init_r is not None else math.ceil(INIT_RANK_FACTOR * target_r))
        if target_r > init_r:
            raise UsageError(
                f"--target_r {target_r} is larger than --init_r {init_r}: AdaLoRA only prunes, "
                f"so use --init_r {math.ceil(INIT_RANK_FACTOR * target_r)} or more (or a smaller --target_r)"
            )
        for name in ("beta1", "beta2"):
            if not 0.0 < getattr(a, name) < 1.0:
                raise UsageError(f"--{name} {getattr(a, name)} must lie strictly between 0 and 1 (the paper: 0.85)")
        schedule = fit_budget_schedule(task, request.total_step, a.tinit, a.tfinal, a.delta_t)
        return {
            "init_r": init_r,
            "target_r": target_r,
            "budget_rank": target_r,
            "lora_alpha": a.lora_alpha,
            "lora_dropout": a.lora_dropout,
            "orth_reg_weight": a.orth_reg_weight if a.orth_reg_weight is not None else task.paper.orth_reg_weight,
            "beta1": a.beta1,
            "beta2": a.beta2,
            "schedule": schedule.as_dict(),
            "schedule_note": schedule.describe(),
        }

    def build(self, model: nn.Module, plan: dict, request: AdapterRequest) -> BuiltAdapter:
        s = plan["schedule"]
        config = AdaLoraConfig(
            task_type=TaskType.SEQ_CLS,
            init_r=plan["init_r"],
            target_r=plan["target_r"],
            lora_alpha=plan["lora_alpha"],
            lora_dropout=plan["lora_dropout"],
            orth_reg_weight=plan["orth_reg_weight"],
            beta1=plan["beta1"],
            beta2=plan["beta2"],
            tinit=s["tinit"],
            tfinal=s["tfinal"],
            deltaT=s["delta_t"],
            total_step=s["total_step"],
            target_modules=request.target_modules,
            modules_to_save=request.head_modules,
        )
        peft_model = get_peft_model(model, config)
        return BuiltAdapter(peft_model, callbacks=[AdaLoraAllocation(peft_model, request.rank_log)])


class FourBitBase:
    """Mixin: the same method on a base model quantised to 4-bit NF4 (QLoRA, Dettmers et al., 2023)."""

    quantized = True

    def build(self, model: nn.Module, plan: dict, request: AdapterRequest) -> BuiltAdapter:
        # Casts the unquantised parameters (norms, embeddings) to fp32 for stable training.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=request.gradient_checkpointing)
        return super().build(model, plan, request)


class QLora(FourBitBase, Lora):
    """QLoRA: LoRA on a 4-bit base."""

    name = "qlora"


class QAdaLora(FourBitBase, AdaLora):
    """QLoRA + AdaLoRA: AdaLoRA on a 4-bit base (PEFT's SVDLinear4bit)."""

    name = "qadalora"


for _method in (Lora(), AdaLora(), QLora(), QAdaLora()):
    register_method(_method)
