"""IncreLoRA (Zhang et al., 2023, arXiv 2308.12043) as a method: its plan from the run's flags, and
the PeftModel with the callback that grows it.

Every adapted matrix starts at a small rank; after the warm-up, every delta_t steps, the h most
important matrices (AdaLoRA's smoothed sensitivity, averaged over a matrix's parameters) get one more
rank each, until the budget is spent. Ranks never shrink and no matrix has a ceiling. The schedule and
the budget rule are ``schedule``'s; the importance is ``allocation``'s; the layers, the regulariser
and the final folding into a plain LoRA adapter are ``layers``'.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from peft import LoraConfig, get_peft_model
from torch import nn

from adarank.errors import UsageError
from adarank.methods.adalora.schedule import fit_budget_schedule
from adarank.methods.base import (LORA_FLAGS, AdapterMethod, AdapterParameters, AdapterRequest, BuiltAdapter, Ranks, Shapes,
                                  OneProcess, OwnLayers, ShapeChanging, adapter_placement, budget_rank, check_lora_arguments,
                                  lora_parameters, positive)
from adarank.methods.increlora.arguments import INIT_RANK, ORTH_REG_WEIGHT, IncreLoraArguments
from adarank.methods.increlora.callback import IncreLoraGrowth
from adarank.methods.increlora.layers import OrthogonalRegulariser, install
from adarank.methods.increlora.schedule import (IncreLoraPlan, expected_growth, fewest_per_step, growth_steps,
                                                reaches, within_reach)


class IncreLora(ShapeChanging, OwnLayers, OneProcess, AdapterMethod):
    """Incremental matrices whose ranks grow where importance is highest."""

    name = "increlora"
    title = "IncreLoRA"
    reads = LORA_FLAGS | {"init_r", "tinit", "tfinal", "delta_t", "orth_reg_weight", "beta1", "beta2"}
    ranks_hint = ("its budget is --budget small|large (the average adapter parameters of LoRA r=2 / r=8), its first "
                  "rank --init_r")
    arguments = IncreLoraArguments
    allocator_tensors = 2  # the smoothed sensitivity and uncertainty, per adapter parameter
    refuses = {"diagnostics": "--diagnostics reads LoRA and AdaLoRA layers, not {name}'s (P diag(lambda) Q with a "
                              "fixed scale): run without it; ranks.jsonl and metrics.json say how the ranks grew"}

    def plan(self, request: AdapterRequest) -> IncreLoraPlan:
        a, own = request.args, self.own_arguments(request)
        check_lora_arguments(a)  # --lora_r and --target_r, not IncreLoRA's, are refused by methods/flags.py
        budget_r = budget_rank(a.budget)
        init_r = positive("init_r", a.init_r if a.init_r is not None else INIT_RANK)
        if init_r >= budget_r:
            raise UsageError(f"--init_r {init_r} leaves no rank to grow under --budget {a.budget} (LoRA r={budget_r} "
                             f"on average): use --init_r {budget_r - 1} or less")
        for name in ("beta1", "beta2"):
            if not 0.0 < getattr(a, name) < 1.0:
                raise UsageError(f"--{name} {getattr(a, name)} must lie strictly between 0 and 1 (the paper: 0.85)")
        orth = a.orth_reg_weight if a.orth_reg_weight is not None else ORTH_REG_WEIGHT
        if orth < 0:
            raise UsageError(f"--orth_reg_weight {orth} must be >= 0 (IncreLoRA's scripts: 0.1 to 0.3)")
        if own.top_h is not None and own.top_h < 1:
            raise UsageError(f"--top_h {own.top_h} must be at least 1 matrix a growth step")
        if own.restart_warmup is not None and own.restart_warmup < 0:
            raise UsageError(f"--restart_warmup {own.restart_warmup} must be >= 0 steps (0: no restart warm-up)")
        schedule = _schedule(request, a)
        first = growth_steps(schedule)[0]
        left = schedule.total_step - first
        if own.restart_warmup is not None and own.restart_warmup > left:
            raise UsageError(f"--restart_warmup {own.restart_warmup} is longer than the {left} steps after the first "
                             f"growth step ({first} of {schedule.total_step}): no added rank would "
                             f"reach the full learning rate; use {left} or less (default --delta_t, "
                             f"{schedule.delta_t})")
        return IncreLoraPlan(
            init_r=init_r, budget_r=budget_r, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
            scale=a.lora_alpha / budget_r, orth_reg_weight=orth, beta1=a.beta1, beta2=a.beta2, schedule=schedule,
            restart_warmup=own.restart_warmup if own.restart_warmup is not None else schedule.delta_t,
            advance_learning=own.advance_learning, top_h=own.top_h,
        )

    def largest_rank(self, plan: IncreLoraPlan) -> tuple[str, int]:
        return "init_r", plan.init_r  # where ranks grow to is the budget's (no matrix has a ceiling)

    def build(self, model: nn.Module, plan: IncreLoraPlan, request: AdapterRequest) -> BuiltAdapter:
        reserved = 1 if plan.advance_learning else 0
        config = LoraConfig(r=plan.init_r + reserved, lora_alpha=plan.scale * (plan.init_r + reserved),
                            lora_dropout=plan.lora_dropout, **adapter_placement(request))
        peft_model = get_peft_model(model, config)
        layers = install(peft_model, request.target_modules, plan.scale)
        plan = resolve(plan, [(layer.in_features, layer.out_features) for layer in layers.values()])
        regulariser = OrthogonalRegulariser(peft_model, layers, plan.orth_reg_weight)
        growth = IncreLoraGrowth(peft_model, plan, layers, regulariser, request.rank_log)
        if request.resume_from:  # the grown shapes must exist before the Trainer loads the weights
            growth.restore(Path(request.resume_from))
        return BuiltAdapter(peft_model, callbacks=[growth], summary=growth.summary, plan=plan)

    def parameters_at_rank(self, rank: int, shapes: Shapes) -> int:
        return sum(rank * (i + o + 1) for i, o in shapes)  # P, lambda and Q

    def budget_ranks(self, rank: int, start_rank: int | None = None) -> Ranks:
        """From ``start_rank`` (--init_r; default 1) to the final average rank that growth at an even rate
        over the whole run would end at, 2 rank - start (its average is then ``rank``). A run's own
        schedule gives its expected end (``IncreLoraPlan.ranks``)."""
        start = start_rank or INIT_RANK
        return Ranks(start, 2 * rank - start)

    def adapter_parameters(self, ranks: Ranks, shapes: Shapes) -> AdapterParameters:
        """Training starts with ``ranks.start`` active triplets and the reserved one in every matrix (advance
        learning, the default) and ends holding ``ranks.end`` of them and the reserved one, P, lambda and Q; the
        saved adapter is a LoRA adapter of rank ``ranks.end`` (lambda folded into B)."""
        return AdapterParameters(self.parameters_at_rank(ranks.start + 1, shapes), lora_parameters(ranks.end, shapes),
                                 held=self.parameters_at_rank(max(ranks.start, ranks.end) + 1, shapes))


def _schedule(request: AdapterRequest, a):
    """The task's AdaLoRA schedule fitted to the run (explicit values win), with a step to grow in."""
    if request.total_step < 2:
        raise UsageError(f"IncreLoRA needs at least 2 optimizer steps, this run has {request.total_step}: "
                         "train on more examples or raise --num_train_epochs / --max_steps")
    try:
        schedule = fit_budget_schedule(request.task, request.total_step, a.tinit, a.tfinal, a.delta_t, a.recipe)
    except UsageError as error:
        raise UsageError(f"IncreLoRA grows ranks on AdaLoRA's schedule (--tinit, --delta_t, --tfinal): {error}") \
            from None
    steps = growth_steps(schedule)
    if not steps:
        raise UsageError(f"IncreLoRA's schedule has no step to grow in: --tinit {schedule.tinit} to "
                         f"{schedule.total_step} - --tfinal {schedule.tfinal} in this run of {schedule.total_step} "
                         "steps; lower --tinit or --tfinal")
    budget_r, init_r = budget_rank(a.budget), a.init_r if a.init_r is not None else INIT_RANK
    if not within_reach(steps, schedule.total_step, init_r, budget_r):
        raise UsageError(
            f"--budget {a.budget} (LoRA r={budget_r} on average) is out of reach: even a rank for every matrix at "
            f"each of the {len(steps)} growth steps (after steps {steps[0]} to {steps[-1]} of {schedule.total_step}) "
            f"ends below it; start earlier (--tinit), grow more often (--delta_t) or raise --init_r")
    return schedule


def resolve(plan: IncreLoraPlan, shapes: list[tuple[int, int]]) -> IncreLoraPlan:
    """The plan on the model: ``top_h`` (default: the fewest that reach the budget) and the growth the
    budget rule expects with every rank of the mean size, for config.json."""
    sizes = [i + o + 1 for i, o in shapes]
    count, steps, total_step = len(sizes), plan.growth_steps, plan.schedule.total_step
    unit, start = sum(sizes) / count, plan.init_r * sum(sizes)
    target = lora_parameters(plan.budget_r, shapes)
    fewest = fewest_per_step(steps, total_step, start, unit, target, count)
    if fewest is None:
        raise UsageError(f"the budget (LoRA r={plan.budget_r} on average) is out of reach for these {count} matrices "
                         "in this schedule: start earlier (--tinit) or grow more often (--delta_t)")
    top_h = plan.top_h if plan.top_h is not None else fewest
    if top_h > count:
        raise UsageError(f"--top_h {top_h} is more than the {count} adapted matrices: use {count} or fewer")
    if not reaches(steps, total_step, start, unit, target, top_h):
        raise UsageError(f"--top_h {top_h} cannot reach the budget (LoRA r={plan.budget_r} on average) in this "
                         f"schedule: use --top_h {fewest} or more, or leave it out")
    events, final, average = expected_growth(steps, total_step, start, unit, target, top_h)
    added = sum(n for _, n in events)
    expected = {
        "adapted_matrices": count, "lora_adapter_params": target, "start_adapter_params": start,
        "expected_average_adapter_params": round(average), "expected_final_adapter_params": round(final),
        "expected_final_total_rank": plan.init_r * count + added, "expected_growth_events": len(events),
        "expected_last_growth_step": events[-1][0] if events else None,
        "reserved_adapter_params": sum(sizes) if plan.advance_learning else 0,
    }
    return replace(plan, top_h=top_h, expected=expected)
