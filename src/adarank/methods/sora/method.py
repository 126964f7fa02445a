"""SoRA as adarank sees it: a plan resolved from the flags, a PEFT LoRA model at r_max with a gate
per adapted module, and the callback that sparsifies the gates.

Budgets: a SoRA run is labelled and compared with the LoRA rank of its budget (2 for small, 8 for
large, or --lora_r) and starts at 1.5x that rank (``arguments``' module docstring says why); how
far the gates prune is learned, so metrics.json reports, beside the parameters the run holds and
trains (``average_adapter_params``: A and B at r_max and the gates, as for every method), the live
ones averaged over the optimizer steps (``average_live_adapter_params``: the directions whose gate is
not zero, and every gate entry) and the count the saved adapter holds (``final_adapter_params``), to
set beside LoRA's at the same budget.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from peft import LoraConfig, get_peft_model
from torch import nn

from adarank.errors import UsageError
from adarank.methods.adalora.schedule import init_rank
from adarank.methods.base import (LORA_FLAGS, AdapterMethod, AdapterParameters, AdapterRequest, BuiltAdapter, Plan, Ranks, Shapes,
                                  OwnLayers, ShapeChanging, adapter_placement, budget_rank, check_lora_arguments,
                                  lora_parameters, positive)
from adarank.methods.sora.arguments import SCHEDULES, SoraArguments, phase_bounds, phase_lambdas
from adarank.methods.sora.callback import SoraGates
from adarank.methods.sora.gate import add_gates

log = logging.getLogger("adarank")


@dataclass(frozen=True)
class SoraPlan(Plan):
    max_rank: int  # r_max: every gate starts at 1 on this many dimensions
    compared_with_lora_r: int  # the budget's LoRA rank, which labels the run
    sora_lambda: float
    eta: float  # the gates' peak step size
    lambda_schedule: str  # none, linear or exp (not "schedule": config.json readers take that for AdaLoRA's)
    max_lambda: float | None
    phase_count: int
    total_step: int
    lora_alpha: float
    lora_dropout: float
    gate_rule: str = ("z = g - eta_t dL/dg; g <- sign(z) max(|z| - eta_t lambda, 0); eta_t = eta lr_t / lr, "
                      "after every optimizer step")

    @property
    def budget_rank(self) -> int:
        return self.compared_with_lora_r

    @property
    def ranks(self) -> Ranks:
        """From r_max to at most r_max: where the gates end is learned."""
        return Ranks(self.max_rank, self.max_rank)

    def lambdas(self) -> list[float]:
        return phase_lambdas(self.sora_lambda, self.max_lambda or self.sora_lambda, self.phase_count,
                             self.lambda_schedule)

    def lambda_at(self, step: int) -> float:
        """Lambda in force at optimizer step ``step`` (0-based: the step about to be taken)."""
        lambdas = self.lambdas()
        for value, (_, end) in zip(lambdas, phase_bounds(self.total_step, len(lambdas))):
            if step < end:
                return value
        return lambdas[-1]

    def phases(self) -> dict[str, list[int]]:
        """The schedule's phases for ranks.jsonl, named by their lambda (none without a schedule)."""
        if self.lambda_schedule == "none":
            return {}
        bounds = phase_bounds(self.total_step, self.phase_count)
        return {f"lambda {value:.4g}": [start, end] for value, (start, end) in zip(self.lambdas(), bounds)}

    def describe(self) -> str:
        lambdas = ", ".join(f"{v:.4g}" for v in self.lambdas())
        return (f"SoRA: rank {self.max_rank} gated in every adapted matrix (compared with LoRA r="
                f"{self.compared_with_lora_r}); gate step size {self.eta:g} x the learning-rate schedule, "
                f"lambda {lambdas}")


class Sora(ShapeChanging, OwnLayers, AdapterMethod):
    """LoRA at r_max whose gated dimensions are sparsified by proximal gradient steps (Ding et al., 2023)."""

    refuses = {
        "fp16": "--fp16 cannot be used with {name}: the gates step outside the optimizer, on gradients the loss "
                "scaler never unscales; use --bf16 or fp32",
        "diagnostics": "--diagnostics reads LoRA and AdaLoRA layers, not {name}'s gated ones (B diag(g) A)",
    }

    name = "sora"
    title = "SoRA"
    reads = LORA_FLAGS | {"lora_r"}
    ranks_hint = "its ranks: --lora_r (the LoRA rank it is compared with, or --budget) and --sora_max_rank"
    arguments = SoraArguments

    def plan(self, request: AdapterRequest) -> SoraPlan:
        a = request.args
        check_lora_arguments(a)
        s: SoraArguments = self.own_arguments(request)
        compared = positive("lora_r", a.lora_r) if a.lora_r is not None else budget_rank(a.budget)
        max_rank = positive("sora_max_rank", s.sora_max_rank if s.sora_max_rank is not None else init_rank(compared))
        if max_rank < compared:
            log.warning("--sora_max_rank %d is below the LoRA rank %d this run is compared with: SoRA only prunes, "
                        "so it trains fewer parameters than that LoRA throughout", max_rank, compared)
        if request.total_step < 1:
            raise UsageError("this run has no optimizer steps: raise --num_train_epochs or --max_steps")
        _check_gate_flags(s, request.total_step, request.explicit)
        return SoraPlan(
            max_rank=max_rank, compared_with_lora_r=compared, sora_lambda=s.sora_lambda, eta=s.sora_eta,
            lambda_schedule=s.sora_schedule, max_lambda=s.sora_max_lambda,
            phase_count=s.sora_phases if s.sora_schedule != "none" else 1, total_step=request.total_step,
            lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
        )

    def largest_rank(self, plan: SoraPlan) -> tuple[str, int]:
        return "sora_max_rank", plan.max_rank

    def build(self, model: nn.Module, plan: SoraPlan, request: AdapterRequest) -> BuiltAdapter:
        config = LoraConfig(r=plan.max_rank, lora_alpha=plan.lora_alpha, lora_dropout=plan.lora_dropout,
                            **adapter_placement(request))
        peft_model = get_peft_model(model, config)
        gates = SoraGates(peft_model, plan, add_gates(peft_model, request.target_modules), request.rank_log)
        if request.resume_from:  # the gates a checkpoint saved, before the Trainer resumes
            gates.restore(Path(request.resume_from))
        return BuiltAdapter(peft_model, callbacks=[gates], summary=gates.summary, scalars=gates.scalars)

    def parameters_at_rank(self, rank: int, shapes: Shapes) -> int:
        return sum(rank * (i + o + 1) for i, o in shapes)  # A, B and the gate

    def budget_ranks(self, rank: int, start_rank: int | None = None) -> Ranks:
        """From ``start_rank`` (--sora_max_rank; default 1.5x the budget's rank) to at most the same."""
        start = start_rank or init_rank(rank)
        return Ranks(start, start)

    def adapter_parameters(self, ranks: Ranks, shapes: Shapes) -> AdapterParameters:
        """Training holds A, B and the gates at r_max; the saved adapter holds A and B diag(g), at most r_max."""
        return AdapterParameters(self.parameters_at_rank(ranks.start, shapes), lora_parameters(ranks.end, shapes))


def _check_gate_flags(s: SoraArguments, total_step: int, explicit: frozenset[str]) -> None:
    if s.sora_lambda < 0:
        raise UsageError(f"--sora_lambda {s.sora_lambda} must be >= 0 (0 turns the sparsity off)")
    if s.sora_eta <= 0:
        raise UsageError(f"--sora_eta {s.sora_eta} must be positive: the gates' step size")
    if s.sora_schedule not in SCHEDULES:
        raise UsageError(f"--sora_schedule {s.sora_schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if s.sora_schedule == "none":
        given = [f"--{name}" for name in ("sora_max_lambda", "sora_phases")
                 if name in explicit or name == "sora_max_lambda" and s.sora_max_lambda is not None]
        if given:
            raise UsageError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} read only with "
                             "--sora_schedule linear or exp: add one, or drop it")
        return
    if s.sora_max_lambda is None:
        raise UsageError(f"--sora_schedule {s.sora_schedule} needs --sora_max_lambda, the last phase's lambda")
    if s.sora_max_lambda < s.sora_lambda:
        raise UsageError(f"--sora_max_lambda {s.sora_max_lambda} is below --sora_lambda {s.sora_lambda}: "
                         "the schedule raises lambda, so give a larger one")
    if s.sora_schedule == "exp" and s.sora_lambda == 0:
        raise UsageError("--sora_schedule exp needs --sora_lambda above 0 (it multiplies lambda phase by phase)")
    if s.sora_phases < 2:
        raise UsageError(f"--sora_phases {s.sora_phases} must be at least 2: a schedule raises lambda from one phase "
                         "to the next (one lambda throughout: drop --sora_schedule, --sora_max_lambda and "
                         "--sora_phases)")
    if total_step < 2:
        raise UsageError(f"--sora_schedule {s.sora_schedule} raises lambda in phases of at least one optimizer step, "
                         f"and this run has {total_step}: train for 2 steps or more (--max_steps, --num_train_epochs), "
                         "or drop --sora_schedule, --sora_max_lambda and --sora_phases for one lambda throughout")
    if s.sora_phases > total_step:
        raise UsageError(f"--sora_phases {s.sora_phases} does not fit this run of {total_step} optimizer steps: "
                         f"use 2 to {total_step}")
