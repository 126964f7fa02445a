"""Training length, and AdaLoRA's budget schedule fitted to it.

AdaLoRA (section 3.3) keeps the full budget for ``tinit`` steps, lowers it
with a cubic schedule, and trains the last ``tfinal`` steps at the target
budget, re-allocating every ``delta_t`` steps. The paper's values are counts
of optimizer steps of a full-size run; a shorter run keeps the same fractions
of its own length, so that pruning still happens, and ends, inside the run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from adarank.errors import UsageError
from adarank.tasks import GlueTask


def count_optimizer_steps(
    train_examples: int,
    per_device_batch_size: int,  # TrainingArguments.train_batch_size: x GPUs under DataParallel
    world_size: int,
    gradient_accumulation_steps: int,
    num_train_epochs: float,
    max_steps: int,
    drop_last: bool = False,
) -> int:
    """Optimizer steps the Trainer will take (its own arithmetic, checked at train begin)."""
    if max_steps > 0:
        return max_steps
    global_batch = per_device_batch_size * world_size
    batches = train_examples // global_batch if drop_last else math.ceil(train_examples / global_batch)
    per_epoch = max(math.ceil(batches / gradient_accumulation_steps), 1)
    return math.ceil(num_train_epochs * per_epoch)


@dataclass(frozen=True)
class BudgetSchedule:
    total_step: int
    tinit: int
    tfinal: int
    delta_t: int
    scaled: bool  # True when the paper's values were shrunk to this run's length
    scale: float  # this run's steps / the paper's steps (at most 1)
    paper: dict  # the paper's values for the task, for config.json

    def describe(self) -> str:
        text = (
            f"AdaLoRA schedule over {self.total_step} optimizer steps: full budget until step "
            f"{self.tinit}, cubic decrease every {self.delta_t} step(s), target budget for the last {self.tfinal}"
        )
        if self.scaled:
            p = self.paper
            text += (
                f" (the paper's tinit={p['tinit']}, tfinal={p['tfinal']}, delta_t={p['delta_t']} for "
                f"{p['total_step']} steps, scaled by {self.scale:.4f} to this run's length)"
            )
        return text

    def as_dict(self) -> dict:
        return asdict(self)


def fit_budget_schedule(
    task: GlueTask,
    total_step: int,
    tinit: int | None = None,
    tfinal: int | None = None,
    delta_t: int | None = None,
) -> BudgetSchedule:
    """Explicit values are used as given; the rest are the paper's, scaled to the run."""
    paper = {
        "tinit": task.paper.tinit,
        "tfinal": task.paper.tfinal,
        "delta_t": task.paper.delta_t,
        "total_step": task.paper_total_steps,
    }
    scale = min(1.0, total_step / paper["total_step"])

    def fitted(name: str, explicit: int | None, floor: int) -> int:
        return explicit if explicit is not None else max(floor, round(paper[name] * scale))

    schedule = BudgetSchedule(
        total_step=total_step,
        tinit=fitted("tinit", tinit, 0),
        tfinal=fitted("tfinal", tfinal, 1),
        delta_t=fitted("delta_t", delta_t, 1),
        scaled=scale < 1.0 and None in (tinit, tfinal, delta_t),
        scale=scale,
        paper=paper,
    )
    _check(schedule, task, explicit=any(v is not None for v in (tinit, tfinal, delta_t)))
    return schedule


def _check(s: BudgetSchedule, task: GlueTask, explicit: bool) -> None:
    suggestion = (
        f"--tinit {round(task.paper.tinit * s.total_step / s.paper['total_step'])} "
        f"--tfinal {max(1, round(task.paper.tfinal * s.total_step / s.paper['total_step']))} "
        "(the paper's fractions of this run), or leave them out to have them scaled"
    )
    if s.total_step < 2:
        raise UsageError(
            f"AdaLoRA needs at least 2 optimizer steps, this run has {s.total_step}: "
            "train on more examples or raise --num_train_epochs / --max_steps"
        )
    if s.delta_t < 1:
        raise UsageError(f"--delta_t {s.delta_t} must be at least 1: use 1 to re-allocate every step")
    if s.tinit < 0 or s.tfinal < 1:
        raise UsageError(
            f"--tinit {s.tinit} must be >= 0 and --tfinal {s.tfinal} >= 1 (step total_step - tfinal "
            f"fixes the final budget): try {suggestion}"
        )
    if s.tinit + s.tfinal >= s.total_step:
        what = "the given" if explicit else "the scaled"
        raise UsageError(
            f"impossible AdaLoRA schedule: tinit {s.tinit} + tfinal {s.tfinal} leaves no pruning steps in "
            f"this run of {s.total_step} optimizer steps ({what} values need tinit + tfinal < {s.total_step}): "
            f"try {suggestion}"
        )
