"""IncreLoRA's plan: when ranks are added, and how many the budget allows.

**When.** Ranks are added after the optimizer steps ``tinit, tinit + delta_t, ...`` up to
``T - tfinal`` (the growth steps): the paper's allocation every delta_T steps after an initial
warm-up. The values are the task's AdaLoRA schedule fitted to the run (``fit_budget_schedule``), so
that the two adaptive methods change ranks over the same steps of a run; explicit --tinit, --delta_t,
--tfinal win.

**How many (the budget rule).** ``--budget small|large`` matches LoRA r=2 / r=8 in the *average*
number of trainable adapter parameters over the run's optimizer steps (where IncreLoRA starts below
LoRA and ends above it). At a growth step t the run has trained ``S_t`` parameter-steps; if it grew
no more, it would end with ``S_t + (T - t) P_t`` (``P_t``: the adapter parameters now). The h most
important matrices (``top_h``) are taken in order of importance, and each gets one rank, of
``in + out + 1`` parameters (a column of P, a row of Q and its lambda), as long as that brings the
projected total closer to ``T x`` LoRA's count; growth ends once it is as close as one rank can bring
it. So the measured average is LoRA's to within half a rank's parameters over the rest of the run
after the last growth step, whichever matrices are chosen. The plan computes the same schedule with
every rank of the mean size, to record the expected growth events and the final total rank (the run
reports what it measured). A budget the growth steps cannot reach, even with every matrix growing at
every step, is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from adarank.methods.adalora.schedule import BudgetSchedule
from adarank.methods.base import Plan, Ranks


def growth_steps(schedule: BudgetSchedule) -> tuple[int, ...]:
    """The optimizer steps after which ranks may be added: every delta_t from tinit to T - tfinal."""
    last = schedule.total_step - schedule.tfinal
    return tuple(t for t in range(schedule.tinit, last + 1, schedule.delta_t) if t >= 1)


def worth_adding(projected: float, gain: float, target: float) -> bool:
    """A rank is added where it brings the run's parameter-steps closer to the target."""
    return 2 * (target - projected) > gain


def chosen_at_step(order, sizes, param_steps: float, params: float, step: int, total_step: int,
                   target_average: float, top_h: int) -> list:
    """The matrices that get a rank after optimizer step ``step``: the first of ``order`` (most important
    first), at most ``top_h``, while each brings the projected parameter-steps closer to the target.
    ``param_steps``: parameter-steps trained so far (steps 1..step); ``params``: parameters now."""
    remaining = total_step - step
    projected, target = param_steps + remaining * params, target_average * total_step
    chosen = []
    for module in list(order)[:top_h]:
        gain = sizes[module] * remaining
        if not worth_adding(projected, gain, target):
            break
        chosen.append(module)
        projected += gain
    return chosen


def expected_growth(steps, total_step: int, start_params: float, unit: float, target_average: float,
                    top_h: int) -> tuple[list[tuple[int, int]], float, float]:
    """The budget rule with every rank of ``unit`` parameters: the (step, ranks added) events, the final
    parameters and the average over the run."""
    events, params, param_steps, done = [], float(start_params), 0.0, 0
    for step in steps:
        param_steps += params * (step - done)
        done = step
        count = len(chosen_at_step(range(top_h), [unit] * top_h, param_steps, params, step, total_step,
                                   target_average, top_h))
        if count:
            events.append((step, count))
            params += count * unit
    param_steps += params * (total_step - done)
    return events, params, param_steps / total_step


def reaches(steps, total_step: int, start_params: float, unit: float, target_average: float, top_h: int) -> bool:
    """Whether the rule gets within half a rank of the target average (from below) with ``top_h`` a step."""
    if not steps:
        return start_params >= target_average
    _, _, average = expected_growth(steps, total_step, start_params, unit, target_average, top_h)
    return (target_average - average) * total_step <= unit * (total_step - steps[-1]) / 2 + 1e-9 * unit * total_step


def within_reach(steps, total_step: int, init_r: int, budget_r: int) -> bool:
    """Whether the average rank per matrix can reach ``budget_r`` from ``init_r`` if every matrix got a
    rank at every growth step (the most any ``top_h`` allows)."""
    return init_r * total_step + sum(total_step - step for step in steps) >= budget_r * total_step


def fewest_per_step(steps, total_step: int, start_params: float, unit: float, target_average: float,
                    most: int) -> int | None:
    """The smallest ``top_h`` (at most ``most``) that reaches the target; None where none does."""
    if not reaches(steps, total_step, start_params, unit, target_average, most):
        return None
    low, high = 1, most
    while low < high:
        middle = (low + high) // 2
        if reaches(steps, total_step, start_params, unit, target_average, middle):
            high = middle
        else:
            low = middle + 1
    return low


@dataclass(frozen=True)
class IncreLoraPlan(Plan):
    init_r: int
    budget_r: int  # the LoRA rank whose average adapter parameters the run matches
    lora_alpha: float
    lora_dropout: float
    scale: float  # the update's scale alpha / budget_r, fixed through training
    orth_reg_weight: float
    beta1: float
    beta2: float
    schedule: BudgetSchedule
    restart_warmup: int
    advance_learning: bool
    top_h: int | None = None  # matrices that get a rank at a growth step; resolved at build
    expected: dict | None = None  # the expected growth on the model, resolved at build

    @property
    def budget_rank(self) -> int:
        return self.budget_r

    @property
    def ranks(self) -> Ranks:
        """From init_r to the expected final average rank (rounded up); before the model is known, the
        estimate of growth at an even rate over the whole run, 2 budget_r - init_r."""
        if self.expected is None:
            return Ranks(self.init_r, 2 * self.budget_r - self.init_r)
        expected = self.expected
        return Ranks(self.init_r, math.ceil(expected["expected_final_total_rank"] / expected["adapted_matrices"]))

    @property
    def growth_steps(self) -> tuple[int, ...]:
        return growth_steps(self.schedule)

    def describe(self) -> str:
        s = self.schedule
        return (f"IncreLoRA: every matrix starts at rank {self.init_r}; ranks are added after steps {s.tinit} to "
                f"{s.total_step - s.tfinal} every {s.delta_t} ({len(self.growth_steps)} growth steps of "
                f"{s.total_step}) until the average adapter parameters over the run equal LoRA r={self.budget_r}'s")

    def as_dict(self) -> dict:
        return {**super().as_dict(), "schedule_note": self.describe(),
                "budget_rule": "average trainable adapter parameters over the optimizer steps = LoRA r=budget_r's"}
