"""AdaLoRA's plan and its budget schedule fitted to the run.

The budget schedule (section 3.3) keeps the full budget for ``tinit`` steps,
lowers it with a cubic schedule, and trains the last ``tfinal`` steps at the
target budget, re-allocating every ``delta_t`` steps. The paper's values are
counts of optimizer steps of a full-size run; a shorter run keeps the same
fractions of its own length, so that pruning still happens, and ends, inside it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

from adarank.errors import UsageError
from adarank.methods.base import Plan, Ranks
from adarank.tasks import Task, recipe_of

log = logging.getLogger("adarank")

# AdaLoRA starts from 1.5x the final budget, b(0) = 1.5 b(T) (section 4, setup).
INIT_RANK_FACTOR = 1.5


def init_rank(target_r: int) -> int:
    """The initial rank per matrix of a target rank, where neither the user nor a recipe sets it."""
    return math.ceil(INIT_RANK_FACTOR * target_r)


@dataclass(frozen=True)
class BudgetSchedule:
    total_step: int
    tinit: int
    tfinal: int
    delta_t: int
    scaled: bool  # True when the published values were shrunk to this run's length
    scale: float  # this run's steps / the published run's steps (at most 1)
    recipe: str  # whose values: paper (Table 8) or official (the authors' scripts)
    published: dict  # those values and the length of the run they were written for

    def describe(self) -> str:
        text = (
            f"AdaLoRA schedule over {self.total_step} optimizer steps: full budget until step "
            f"{self.tinit}, cubic decrease every {self.delta_t} step(s), target budget for the last {self.tfinal}"
        )
        if self.scaled:
            p = self.published
            text += (
                f" (the {self.recipe} recipe's tinit={p['tinit']}, tfinal={p['tfinal']}, delta_t={p['delta_t']} "
                f"for {p['total_step']} steps, scaled by {self.scale:.4f} to this run's length)"
            )
        return text

    def as_dict(self) -> dict:
        return asdict(self)

    def peft_arguments(self) -> dict:
        """The schedule as PEFT's AdaLoraConfig spells it."""
        return {"tinit": self.tinit, "tfinal": self.tfinal, "deltaT": self.delta_t, "total_step": self.total_step}


def fit_budget_schedule(
    task: Task,
    total_step: int,
    tinit: int | None = None,
    tfinal: int | None = None,
    delta_t: int | None = None,
    recipe: str = "paper",
) -> BudgetSchedule:
    """Explicit values are used as given; the rest are the recipe's, scaled to the run."""
    values = recipe_of(task, recipe)
    published = {
        "tinit": values.tinit,
        "tfinal": values.tfinal,
        "delta_t": values.delta_t,
        "total_step": task.full_run_steps(values),
    }
    scale = min(1.0, total_step / published["total_step"])

    def fitted(name: str, explicit: int | None, floor: int) -> int:
        return explicit if explicit is not None else max(floor, round(published[name] * scale))

    schedule = BudgetSchedule(
        total_step=total_step,
        tinit=fitted("tinit", tinit, 0),
        tfinal=fitted("tfinal", tfinal, 1),
        delta_t=fitted("delta_t", delta_t, 1),
        scaled=scale < 1.0 and None in (tinit, tfinal, delta_t),
        scale=scale,
        recipe=recipe,
        published=published,
    )
    _check(schedule, explicit=any(v is not None for v in (tinit, tfinal, delta_t)))
    return schedule


def _check(s: BudgetSchedule, explicit: bool) -> None:
    p = s.published
    suggestion = (
        f"--tinit {round(p['tinit'] * s.total_step / p['total_step'])} "
        f"--tfinal {max(1, round(p['tfinal'] * s.total_step / p['total_step']))} "
        f"(the {s.recipe} recipe's fractions of this run), or leave them out to have them scaled"
    )
    if s.total_step < 2:
        raise UsageError(
            f"AdaLoRA needs at least 2 optimizer steps, this run has {s.total_step}: "
            "train on more examples or raise --num_train_epochs / --max_steps"
        )
    if s.delta_t < 1:
        raise UsageError(f"--delta_t {s.delta_t} must be at least 1: use 1 to re-allocate every step")
    if s.tinit < 0:
        raise UsageError(f"--tinit {s.tinit} must be >= 0 (the steps at the full budget): try {suggestion}")
    if s.tfinal < 1:
        raise UsageError(f"--tfinal {s.tfinal} must be >= 1 (step total_step - tfinal fixes the final budget): "
                         f"try {suggestion}")
    if s.tinit + s.tfinal >= s.total_step:
        what = "the given" if explicit else "the scaled"
        raise UsageError(
            f"impossible AdaLoRA schedule: tinit {s.tinit} + tfinal {s.tfinal} leaves no pruning steps in "
            f"this run of {s.total_step} optimizer steps ({what} values need tinit + tfinal < {s.total_step}): "
            f"try {suggestion}"
        )


@dataclass(frozen=True)
class AdaLoraPlan(Plan):
    init_r: int
    target_r: int
    lora_alpha: float
    lora_dropout: float
    orth_reg_weight: float
    beta1: float
    beta2: float
    schedule: BudgetSchedule
    # The LoRA rank this budget is compared with: target_r, except for the official recipe's
    # small budget (init 2-3 -> target 1), which trains about as many parameters as LoRA r=2.
    compared_with_lora_r: int
    init: str = "paper"  # the initial values (method.INITS); anything but "paper" departs from the paper

    @property
    def budget_rank(self) -> int:
        return self.compared_with_lora_r

    @property
    def ranks(self) -> Ranks:
        return Ranks(self.init_r, self.target_r)

    def describe(self) -> str:
        return self.schedule.describe()

    def as_dict(self) -> dict:
        return {**super().as_dict(), "schedule_note": self.describe()}

    def peft_arguments(self) -> dict:
        """The plan as PEFT's AdaLoraConfig spells it (the placement in the model aside)."""
        return {"init_r": self.init_r, "target_r": self.target_r, "lora_alpha": self.lora_alpha,
                "lora_dropout": self.lora_dropout, "orth_reg_weight": self.orth_reg_weight,
                "beta1": self.beta1, "beta2": self.beta2, **self.schedule.peft_arguments()}


def check_allocations(s: BudgetSchedule, explicit: bool) -> None:
    """AdaLoRA (PEFT's budget_schedule) re-allocates on the cubic schedule at the multiples of delta_t
    after tinit and before total_step - tfinal; at that step it masks to the target. Where no multiple lies
    between, the cubic schedule never runs: the budget falls from its start to its target in one step.
    Asked for with --tinit, --tfinal or --delta_t, that is refused; scaled to a run of a few steps, said."""
    last = s.total_step - s.tfinal
    if (s.tinit // s.delta_t + 1) * s.delta_t < last:
        return
    problem = (f"AdaLoRA re-allocates at the multiples of delta_t {s.delta_t} after tinit {s.tinit} and before "
               f"total_step - tfinal = {last}, and none lies there, so its budget falls to the target in one step, "
               f"at step {last}")
    fix = (f"use --delta_t {last - s.tinit - 1} or less, or lower --tinit or --tfinal" if last - s.tinit > 1 else
           "lower --tinit or --tfinal, or train longer")
    if explicit:
        raise UsageError(f"{problem}: {fix}")
    log.warning("%s (the schedule scaled to this run of %d steps); %s to prune gradually", problem, s.total_step, fix)
