"""The plateau method as adarank sees it: a typed plan, and a PEFT LoRA model with its callback."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from peft import LoraConfig, get_peft_model
from torch import nn

from adarank.errors import UsageError
from adarank.methods import (LORA_FLAGS, AdapterMethod, AdapterRequest, BuiltAdapter, OneProcess, Plan, Ranks, Shapes,
                             ShapeChanging, adapter_placement, budget_rank, check_lora_arguments, lora_parameters)
from custom.plateau.arguments import (EVALS_PER_EPOCH, GRADIENT_WINDOW, GROWTH_INITS, PlateauArguments,
                                      default_eval_every, default_growth_budget)
from custom.plateau.callback import PlateauGrowth

log = logging.getLogger("adarank")


@dataclass(frozen=True)
class PlateauPlan(Plan):
    r0: int
    delta_r: int
    r_max: int
    patience: int
    min_delta: float
    eval_every: int
    growth_init: str
    grow_where: str
    growth_budget: int | None  # rank units per event (grow_where=importance); resolved at build
    gradient_window: int
    importance_beta: float
    lora_alpha: float
    lora_dropout: float
    scaling_rule: str = "alpha / r fixed at alpha / r0: alpha grows with r"

    @property
    def ranks(self) -> Ranks:
        """From r0 to at most r_max (where growth events stop is up to the dev loss)."""
        return Ranks(self.r0, self.r_max)


class PlateauLora(ShapeChanging, OneProcess, AdapterMethod):
    """LoRA whose ranks grow when the dev loss stalls."""

    name = "plateau"
    reads = LORA_FLAGS
    ranks_hint = "its ranks: --r0 and --r_max, or --budget"
    arguments = PlateauArguments
    # The entry scripts' defaults: a ceiling of rank 8 (the paper's large budget, which fixed
    # LoRA r=8 is compared at), and dev evaluations on the method's own steps.
    script_defaults = {"budget": "large", "eval_strategy": "no"}

    def plan(self, request: AdapterRequest) -> PlateauPlan:
        check_lora_arguments(request.args)
        a: PlateauArguments = self.own_arguments(request)
        r_max = a.r_max if a.r_max is not None else budget_rank(request.args.budget)
        if a.r0 < 1 or a.r0 > r_max:
            raise UsageError(f"--r0 {a.r0} must be between 1 and --r_max {r_max}: lower --r0 or raise --r_max")
        if a.r0 == r_max:
            log.warning(f"--r0 {a.r0} equals --r_max {r_max}: ranks cannot grow, so this run is fixed LoRA "
                        f"r={r_max}; raise --r_max (or use --budget large) to let them grow")
        if a.delta_r < 1:
            raise UsageError(f"--delta_r {a.delta_r} must be at least 1: ranks grow by whole directions")
        if a.plateau_patience < 1:
            raise UsageError(f"--plateau_patience {a.plateau_patience} must be at least 1 evaluation")
        if request.total_step < 1:
            raise UsageError("this run has no optimizer steps: raise --num_train_epochs or --max_steps")
        eval_every = a.eval_every if a.eval_every is not None else default_eval_every(request)
        if eval_every < 1 or eval_every > request.total_step:
            raise UsageError(
                f"--eval_every {eval_every} does not fit this run of {request.total_step} optimizer steps: "
                f"use a value from 1 to {request.total_step}, or leave it out for {default_eval_every(request)} "
                f"({EVALS_PER_EPOCH} evaluations per epoch)"
            )
        _check_growth_can_happen(a.plateau_patience, eval_every, request)
        if a.growth_init not in GROWTH_INITS:
            raise UsageError(f"--growth_init {a.growth_init!r}: choose one of {', '.join(GROWTH_INITS)}")
        if a.grow_where not in ("all", "importance"):
            raise UsageError(f"--grow_where {a.grow_where!r}: choose all or importance")
        if a.growth_budget is not None and a.growth_budget < 1:
            raise UsageError(f"--growth_budget {a.growth_budget} must be at least 1 rank unit per growth event "
                             "(leave it out for a third of what growing every module would add)")
        if a.plateau_min_delta < 0:
            raise UsageError(f"--plateau_min_delta {a.plateau_min_delta:g} must be >= 0: the least fall of the dev loss "
                             "that counts as an improvement")
        _check_flags_read(a, request.explicit)
        if not 0.0 < a.importance_beta < 1.0:
            raise UsageError(f"--importance_beta {a.importance_beta} must lie strictly between 0 and 1 (default 0.85)")
        gradient_window = a.gradient_window if a.gradient_window is not None else min(GRADIENT_WINDOW, eval_every)
        if a.growth_init != "lora" and not 1 <= gradient_window <= eval_every:
            raise UsageError(f"--gradient_window {gradient_window} must be from 1 to --eval_every {eval_every}")
        return PlateauPlan(
            r0=a.r0, delta_r=a.delta_r, r_max=r_max, patience=a.plateau_patience, min_delta=a.plateau_min_delta,
            eval_every=eval_every, growth_init=a.growth_init, grow_where=a.grow_where,
            growth_budget=a.growth_budget, gradient_window=gradient_window, importance_beta=a.importance_beta,
            lora_alpha=request.args.lora_alpha, lora_dropout=request.args.lora_dropout,
        )

    def largest_rank(self, plan: PlateauPlan) -> tuple[str, int]:
        return "r_max", plan.r_max

    def build(self, model: nn.Module, plan: PlateauPlan, request: AdapterRequest) -> BuiltAdapter:
        if plan.grow_where == "importance" and plan.growth_budget is None:
            # The default counts the adapted matrices, known once the model is loaded.
            plan = replace(plan, growth_budget=default_growth_budget(len(request.target_modules), plan.delta_r))
        config = LoraConfig(r=plan.r0, lora_alpha=plan.lora_alpha, lora_dropout=plan.lora_dropout,
                            **adapter_placement(request))
        peft_model = get_peft_model(model, config)
        growth = PlateauGrowth(peft_model, plan, request.target_modules, request.rank_log,
                               splits=len(request.task.dev_splits))
        if request.resume_from:  # the grown shapes must exist before the Trainer loads the weights
            growth.restore(Path(request.resume_from))
        return BuiltAdapter(peft_model, callbacks=[growth], summary=growth.summary, plan=plan)

    def parameters_at_rank(self, rank: int, shapes: Shapes) -> int:
        return lora_parameters(rank, shapes)

    def budget_ranks(self, rank: int, start_rank: int | None = None) -> Ranks:
        """From ``start_rank`` (--r0; default PlateauArguments.r0) up to the budget's rank, the ceiling r_max."""
        return Ranks(start_rank or PlateauArguments.r0, rank)


def _check_growth_can_happen(patience: int, eval_every: int, request: AdapterRequest) -> None:
    """Ranks first grow at the evaluation after ``patience`` ones without improvement, the first evaluation
    setting the best loss, and never at the last step: a run shorter than that trains fixed LoRA r0. Asked for
    with --plateau_patience or --eval_every, that is refused; with both defaults (a short trial run) it is said.
    Where the Trainer evaluates too (--eval_strategy), its evaluations count as well: nothing is known."""
    earliest = (patience + 1) * eval_every
    if earliest < request.total_step or request.trainer_evaluates:
        return
    problem = (f"ranks can first grow after step {earliest} ((--plateau_patience {patience} + 1) x --eval_every "
               f"{eval_every}), and this run has {request.total_step} optimizer steps, so it trains fixed LoRA r0")
    if {"plateau_patience", "eval_every"} & request.explicit:
        raise UsageError(f"{problem}: lower --plateau_patience or --eval_every, or train longer")
    log.warning("%s; lower --plateau_patience or --eval_every, or train longer, to let them grow", problem)


def _check_flags_read(a: PlateauArguments, explicit: frozenset[str]) -> None:
    """Refuse a flag the chosen growth would not read (the project refuses, never ignores)."""
    unread = [("gradient_window", a.gradient_window is not None and a.growth_init == "lora",
               "--growth_init gradient or whitened"),
              ("growth_budget", a.growth_budget is not None and a.grow_where == "all", "--grow_where importance"),
              ("importance_beta", "importance_beta" in explicit and a.grow_where == "all", "--grow_where importance")]
    for name, ignored, reader in unread:
        if ignored:
            raise UsageError(f"--{name} is read only with {reader}: add it, or drop --{name}")
