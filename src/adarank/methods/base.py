"""What every adapter method is: it plans its budget, then builds a PeftModel.

A method first ``plan``s (checks the user's numbers and resolves every default,
before any model is loaded, so bad input fails fast) into a typed, frozen plan,
then ``build``s the adapters and the callbacks that drive them during training.
The pipeline talks to a method and its plan through this interface only.

A method also answers how many trainable adapter parameters a plan means on a model
(``adapter_parameters``), from the adapted matrices' shapes alone, so that a planner
(``adarank.memory_plan``) or a harness that matches methods at equal parameter budgets
needs no knowledge of any method's rules.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from peft import PeftModel
from torch import nn
from transformers import TrainerCallback

from adarank.errors import UsageError
from adarank.run.ranks import RankLog
from adarank.tasks import Task

# The paper's two budget labels: the final average rank of every adapted matrix (Table 1).
BUDGET_RANKS = {"small": 2, "large": 8}

Shapes = Sequence[tuple[int, int]]  # (in_features, out_features) of every adapted matrix

# The shared flags every LoRA-style method reads (``reads``: methods/flags.py).
LORA_FLAGS = frozenset({"lora_alpha", "lora_dropout"})


@dataclass
class AdapterRequest:
    """What a method needs to know about the run."""

    task: Task
    args: object  # AdapterArguments
    total_step: int
    target_modules: list[str] = field(default_factory=list)
    head_modules: list[str] = field(default_factory=list)
    rank_log: RankLog | None = None
    gradient_checkpointing: bool = False
    resume_from: str | None = None  # the checkpoint a resumed run starts from
    # The method's own flags: an instance of its ``AdapterMethod.arguments`` (None: their defaults).
    method_arguments: Any = None
    steps_per_epoch: int | None = None  # optimizer steps of one pass over the training set
    task_type: object = None  # PEFT's TaskType for the loaded model (the task's peft_task_type)
    # One pass over the tokenized training set in model-ready batches (a function giving an iterator), for
    # a method that initialises its adapters from data (run/batches.py); None outside a run.
    train_batches: Callable[[], Iterator[dict]] | None = None
    explicit: frozenset[str] = frozenset()  # the flags the user set, so a method can tell them from defaults
    trainer_evaluates: bool = False  # --eval_strategy is not "no": the Trainer's evaluations reach the callbacks too


@dataclass(frozen=True)
class Ranks:
    """The rank per adapted matrix a plan trains at: when training starts, and when it ends
    (AdaLoRA prunes from its initial to its target rank; a growing method ends at most at its ceiling)."""

    start: int
    end: int


@dataclass(frozen=True)
class AdapterParameters:
    """Trainable adapter parameters (the task head not included) of a plan on a model."""

    start: int  # when training starts
    end: int  # when it ends: what the saved adapter holds (a growing method: at most)
    held: int | None = None  # the most held while training, where the saved form is not what trained

    @property
    def most(self) -> int:
        """The most held at once while training (what memory must hold)."""
        return max(self.start, self.end) if self.held is None else self.held


@dataclass(frozen=True)
class Plan:
    """A method's resolved hyperparameters. ``budget_rank`` is the rank per adapted matrix
    the run's budget stands for (LoRA's r, AdaLoRA's final average, a growing method's
    ceiling; by default the rank training ends at): config.json labels the run with it, so
    runs of one budget are compared."""

    @property
    def budget_rank(self) -> int:
        return self.ranks.end

    @property
    def ranks(self) -> Ranks:
        """The ranks per matrix training starts and ends at."""
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
    scalars: Callable[[], dict] | None = None  # the method's own figures at logging steps (run/scalars.py)


class AdapterMethod:
    """The interface every method implements."""

    name: str = ""
    quantized: bool = False  # True: the base model is loaded in 4 bits (NF4) before adapters are added
    trains: bool = True  # False: the base model is evaluated as it is (--method none)
    arguments: type | None = None  # the method's own flags, a dataclass parsed beside the others
    script_defaults: dict = {}  # defaults of entry scripts made for this method (main(task, method=...))
    # fp32 tensors the method keeps per trainable adapter parameter beside the optimizer's moments
    allocator_tensors: int = 0
    # Run options the method refuses: option name -> why ({name}: the method's); mixins add theirs.
    refuses: dict[str, str] = {}
    title: str = ""  # the method's name in prose (LoRA, AdaLoRA); default: ``name``
    # The flags of methods/flags.py's SELECTIVE_FLAGS the method reads (with its other classes'); declared
    # on no class: none refused.
    reads: frozenset[str] | None = None
    ranks_hint: str = ""  # where its ranks come from, said when a rank flag it does not read is refused

    def plan(self, request: AdapterRequest) -> Plan:
        raise NotImplementedError

    def build(self, model: nn.Module, plan: Plan, request: AdapterRequest) -> BuiltAdapter:
        raise NotImplementedError

    def check_run(self, training, run) -> None:
        """Refuse run options this method cannot honour (TrainingArguments, RunArguments): those in
        the ``refuses`` of its classes, the most derived class first."""
        for cls in type(self).__mro__:
            for option, why in vars(cls).get("refuses", {}).items():
                if getattr(run, option, False) or getattr(training, option, False):
                    raise UsageError(why.format(name=self.name))
        if isinstance(self, OneProcess) and processes() > 1:
            raise UsageError(f"{self.name} trains in one process only ({self.one_process}): run it without "
                             f"torchrun (NPROC=1 for the job scripts)")

    @property
    def flags_read(self) -> frozenset[str] | None:
        """The SELECTIVE_FLAGS this method reads: the ``reads`` of its classes together (None: undeclared)."""
        declared = [vars(cls)["reads"] for cls in type(self).__mro__ if vars(cls).get("reads") is not None]
        return frozenset().union(*declared) if declared else None

    def largest_rank(self, plan: Plan) -> tuple[str, int] | None:
        """The flag that sets the most rank an adapted matrix holds under ``plan``, and that rank, which must
        fit the adapted matrices (``modules.check_rank_fits``); None: no rank to fit."""
        return None

    def own_arguments(self, request: AdapterRequest):
        """The method's own flags for this run (an instance of ``arguments``), their defaults where none came."""
        given = request.method_arguments
        if given is not None and not isinstance(given, self.arguments):
            raise TypeError(f"{self.name} takes {self.arguments.__name__}, not {type(given).__name__}")
        return given if given is not None else self.arguments()

    # --- how many parameters a budget means ------------------------------------------------

    def parameters_at_rank(self, rank: int, shapes: Shapes) -> int:
        """Trainable adapter parameters with ``rank`` in every adapted matrix of (in, out) ``shapes``."""
        raise NotImplementedError

    def budget_ranks(self, rank: int, start_rank: int | None = None) -> Ranks:
        """The ranks a plan of budget ``rank`` (rank per matrix, ``budget_rank``) starts and ends at by the
        method's default rules, without a run. ``start_rank``: a start rank set explicitly (AdaLoRA's
        --init_r, a growing method's first rank); a method with one fixed rank ignores it."""
        return Ranks(rank, rank)

    def adapter_parameters(self, ranks: Ranks, shapes: Shapes) -> AdapterParameters:
        """Trainable adapter parameters at the start and end of training of a plan with these ``ranks``
        (``plan.ranks``, or ``budget_ranks(...)`` without a run) on matrices of (in, out) ``shapes``."""
        return AdapterParameters(self.parameters_at_rank(ranks.start, shapes), self.parameters_at_rank(ranks.end, shapes))


class ShapeChanging:
    """Mixin for methods whose adapter shapes change during training (pruning or growth)."""

    refuses = {"load_best_model_at_end": (
        "--load_best_model_at_end cannot be used with {name}: its adapter shapes change during "
        "training, so an earlier checkpoint does not fit the final model; pick the best run from history.jsonl")}


def processes() -> int:
    """How many processes train this run (torchrun's WORLD_SIZE; 1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class OneProcess:
    """Mixin for methods that train in one process only (``one_process``: why, for the refusal)."""

    one_process = "its adapters change shape during training, which DDP's gradient buckets do not follow"


class OwnLayers:
    """Mixin for methods whose adapted layers are their own classes, computing the fused forward
    (adarank/methods/fused.py) and no other."""

    refuses = {"peft_forward": (
        "--peft_forward cannot be used with {name}: its adapted layers have one forward, the fused one")}


METHODS: dict[str, AdapterMethod] = {}
# Methods their own entry scripts register, which the library's scripts do not import: where they run.
OWN_SCRIPTS = {"plateau": "src/custom/'s, one for each GLUE task, e.g. src/custom/glue-rte.py"}


def register_method(method: AdapterMethod) -> AdapterMethod:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> AdapterMethod:
    if name in OWN_SCRIPTS and name not in METHODS:
        raise UsageError(f"--method {name} runs through its own scripts only ({OWN_SCRIPTS[name]}): run one of "
                         f"those, or choose one of {', '.join(sorted(METHODS))}")
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


def lora_parameters(rank: int, shapes: Shapes) -> int:
    """LoRA's B (out x r) and A (r x in) in every adapted matrix."""
    return sum(rank * (i + o) for i, o in shapes)


def adapter_placement(request: AdapterRequest) -> dict:
    """The PEFT config arguments every LoRA-style method takes from the run: the model's task type,
    the adapted modules and the task head trained in full."""
    return {"task_type": request.task_type, "target_modules": request.target_modules,
            "modules_to_save": list(request.head_modules)}
