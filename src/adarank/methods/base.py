"""What every adapter method is: it plans its budget, then builds a PeftModel.

A method first ``plan``s (checks the user's numbers and resolves every default,
before any model is loaded, so bad input fails fast) into a typed, frozen plan,
then ``build``s the adapters and the callbacks that drive them during training.
The pipeline talks to a method and its plan through this interface only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from peft import PeftModel
from torch import nn
from transformers import TrainerCallback

from adarank.errors import UsageError
from adarank.ranks import RankLog
from adarank.tasks import Task

# The paper's two budget labels: the final average rank of every adapted matrix (Table 1).
BUDGET_RANKS = {"small": 2, "large": 8}


@dataclass
class AdapterRequest:
    """What a method needs to know about the run."""

    task: Task
    args: object  # AdapterArguments (plus a method's own fields)
    total_step: int
    target_modules: list[str] = field(default_factory=list)
    head_modules: list[str] = field(default_factory=list)
    rank_log: RankLog | None = None
    gradient_checkpointing: bool = False
    resume_from: str | None = None  # the checkpoint a resumed run starts from
    extra: tuple = ()  # a method's own argument dataclasses, parsed with the rest
    steps_per_epoch: int | None = None  # optimizer steps of one pass over the training set
    task_type: object = None  # PEFT's TaskType for the loaded model (the task's peft_task_type)


@dataclass(frozen=True)
class Plan:
    """A method's resolved hyperparameters. ``budget_rank`` is the rank per adapted matrix
    the run's budget stands for (LoRA's r, AdaLoRA's final average, a growing method's
    ceiling): config.json labels the run with it, so runs of one budget are compared."""

    @property
    def budget_rank(self) -> int:
        raise NotImplementedError

    def describe(self) -> str | None:
        """A line for the log, where the plan holds something a user should see."""
        return None

    def as_dict(self) -> dict:
        """config.json's ``adapter`` entry."""
        return {**asdict(self), "budget_rank": self.budget_rank}


@dataclass
class BuiltAdapter:
    model: PeftModel
    callbacks: list[TrainerCallback]
    summary: Callable[[], dict] | None = None  # the method's own figures for metrics.json, after training
    plan: Plan | None = None  # the plan as built, where building resolved more of it


class AdapterMethod:
    """The interface every method implements."""

    name: str = ""
    quantized: bool = False  # True: the base model is loaded in 4 bits (NF4) before adapters are added
    trains: bool = True  # False: the base model is evaluated as it is (--method none)
    arguments: type | None = None  # the method's own flags, a dataclass parsed beside the others
    script_defaults: dict = {}  # defaults of entry scripts made for this method (main(task, method=...))

    def plan(self, request: AdapterRequest) -> Plan:
        raise NotImplementedError

    def build(self, model: nn.Module, plan: Plan, request: AdapterRequest) -> BuiltAdapter:
        raise NotImplementedError

    def check_run(self, training, run) -> None:
        """Refuse run options this method cannot honour (TrainingArguments, RunArguments)."""


class ShapeChanging:
    """Mixin for methods whose adapter shapes change during training (pruning or growth)."""

    def check_run(self, training, run) -> None:
        if training.load_best_model_at_end:
            raise UsageError(
                f"--load_best_model_at_end cannot be used with {self.name}: its adapter shapes change during "
                "training, so an earlier checkpoint does not fit the final model; pick the best run from history.jsonl"
            )
        super().check_run(training, run)


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
    """The paper's name for a budget of this rank per matrix, else r<rank>; "none" for no adapters."""
    names = {0: "none", **{r: name for name, r in BUDGET_RANKS.items()}}
    return names.get(rank, f"r{rank}")


def check_lora_arguments(args) -> None:
    """Checks shared by every LoRA-style method."""
    if not 0.0 <= args.lora_dropout < 1.0:
        raise UsageError(f"--lora_dropout {args.lora_dropout} must be in [0, 1)")
    if args.lora_alpha <= 0:
        raise UsageError(f"--lora_alpha {args.lora_alpha} must be positive (updates are scaled by alpha / r)")


def positive(name: str, value: int) -> int:
    if value < 1:
        raise UsageError(f"--{name} {value} must be at least 1")
    return value
