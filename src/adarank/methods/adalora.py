"""AdaLoRA (Zhang et al., ICLR 2023), all of it: the plan, the budget schedule, the allocation
callback and the allocator state that checkpoints carry.

One file by design (a reader finds all of AdaLoRA here), hence its length.

The adapters are SVD-form, W + P diag(lambda) Q, pruned by importance to a budget.
The budget schedule (section 3.3) keeps the full budget for ``tinit`` steps,
lowers it with a cubic schedule, and trains the last ``tfinal`` steps at the
target budget, re-allocating every ``delta_t`` steps. The paper's values are
counts of optimizer steps of a full-size run; a shorter run keeps the same
fractions of its own length, so that pruning still happens, and ends, inside it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import AdaLoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import TrainerCallback

from adarank.errors import UsageError
from adarank.methods.base import (AdapterMethod, AdapterRequest, BuiltAdapter, Plan, ShapeChanging, budget_rank,
                                  check_lora_arguments, positive)
from adarank.ranks import RankLog
from adarank.rundir import checkpoint_folder
from adarank.tasks import Task, recipe_of

# AdaLoRA starts from 1.5x the final budget, b(0) = 1.5 b(T) (section 4, setup).
INIT_RANK_FACTOR = 1.5
INITS = {
    "paper": "E = 0, A and B ~ N(0, 0.02) (the paper; PEFT's default)",
    "lora": "E = 1, B = 0, A Kaiming-uniform as LoRA's A (departs from the paper)",
}


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
    init: str = "paper"  # the initial values (INITS); anything but "paper" departs from the paper

    @property
    def budget_rank(self) -> int:
        return self.compared_with_lora_r

    def describe(self) -> str:
        return self.schedule.describe()

    def as_dict(self) -> dict:
        return {**super().as_dict(), "schedule_note": self.describe()}


class AdaLora(ShapeChanging, AdapterMethod):
    """SVD-form adapters pruned by importance to a budget."""

    name = "adalora"

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
                          recipe.init_r if from_recipe else math.ceil(INIT_RANK_FACTOR * target_r))
        if target_r > init_r:
            raise UsageError(
                f"--target_r {target_r} is larger than --init_r {init_r}: AdaLoRA only prunes, "
                f"so use --init_r {math.ceil(INIT_RANK_FACTOR * target_r)} or more (or a smaller --target_r)"
            )
        if a.adalora_init not in INITS:
            raise UsageError(f"--adalora_init {a.adalora_init!r}: choose one of {', '.join(INITS)}")
        for name in ("beta1", "beta2"):
            if not 0.0 < getattr(a, name) < 1.0:
                raise UsageError(f"--{name} {getattr(a, name)} must lie strictly between 0 and 1 (the paper: 0.85)")
        return AdaLoraPlan(
            init_r=init_r, target_r=target_r, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
            orth_reg_weight=a.orth_reg_weight if a.orth_reg_weight is not None else recipe.orth_reg_weight,
            beta1=a.beta1, beta2=a.beta2,
            schedule=fit_budget_schedule(task, request.total_step, a.tinit, a.tfinal, a.delta_t, a.recipe),
            compared_with_lora_r=budget_rank(a.budget) if from_recipe else target_r,
            init=a.adalora_init,
        )

    def build(self, model: nn.Module, plan: AdaLoraPlan, request: AdapterRequest) -> BuiltAdapter:
        s = plan.schedule
        config = AdaLoraConfig(
            task_type=request.task_type,
            init_r=plan.init_r,
            target_r=plan.target_r,
            lora_alpha=plan.lora_alpha,
            lora_dropout=plan.lora_dropout,
            orth_reg_weight=plan.orth_reg_weight,
            beta1=plan.beta1,
            beta2=plan.beta2,
            tinit=s.tinit,
            tfinal=s.tfinal,
            deltaT=s.delta_t,
            total_step=s.total_step,
            target_modules=request.target_modules,
            modules_to_save=list(request.head_modules),
        )
        peft_model = get_peft_model(model, config)
        if plan.init == "lora":
            _lora_like_start(peft_model)
        vectorise_allocator(peft_model)
        vectorise_regulariser(peft_model)
        allocation = AdaLoraAllocation(peft_model, request.rank_log)
        return BuiltAdapter(peft_model, callbacks=[allocation], summary=allocation.timing)


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


def vectorise_allocator(model: PeftModel) -> None:
    """The same allocator with its two per-step loops made cheap, on this model's instance.

    PEFT's ``update_ipt`` walks every parameter of the model each step and updates the importance
    averages of each adapter tensor with a handful of small operations; here the same formulas run
    as one batch of ``torch._foreach`` operations over all adapter tensors, with the same roundings
    (the results are equal to the bit, tests/test_adalora.py). In the final phase PEFT re-zeroes the
    pruned triplets after every step by building each mask afresh from the rank pattern's lists; the
    masks are built once per pattern here.
    """
    allocator = model.base_model.rankallocator
    name = allocator.adapter_name
    tensors = [(n, p) for n, p in model.base_model.model.named_parameters() if "lora_" in n and name in n]
    names, params = [n for n, _ in tensors], [p for _, p in tensors]
    singular_values = [(n, p) for n, p in tensors if f"lora_E.{name}" in n]
    masks: dict = {}  # id of the rank pattern -> (pattern, the masks of what it prunes)

    def update_ipt(_model) -> None:
        b1, b2 = allocator.beta1, allocator.beta2
        for n, p in zip(names, params):
            if n not in allocator.ipt:
                allocator.ipt[n], allocator.exp_avg_ipt[n], allocator.exp_avg_unc[n] = (
                    torch.zeros_like(p), torch.zeros_like(p), torch.zeros_like(p))
        with torch.no_grad():
            ipt = torch._foreach_mul(params, [p.grad for p in params])
            torch._foreach_abs_(ipt)
            avg = [allocator.exp_avg_ipt[n] for n in names]
            unc = [allocator.exp_avg_unc[n] for n in names]
            avg = torch._foreach_add(torch._foreach_mul(avg, b1), torch._foreach_mul(ipt, 1 - b1))  # sensitivity
            spread = torch._foreach_sub(ipt, avg)
            torch._foreach_abs_(spread)
            unc = torch._foreach_add(torch._foreach_mul(unc, b2), torch._foreach_mul(spread, 1 - b2))  # uncertainty
        for n, i, a, u in zip(names, ipt, avg, unc):
            allocator.ipt[n], allocator.exp_avg_ipt[n], allocator.exp_avg_unc[n] = i, a, u

    def mask_using_rank_pattern(_model, rank_pattern: dict) -> None:
        if id(rank_pattern) not in masks or masks[id(rank_pattern)][0] is not rank_pattern:
            truncated = name not in next(iter(rank_pattern))  # keys saved without the adapter name
            masks.clear()
            masks[id(rank_pattern)] = (rank_pattern, [
                ~torch.tensor(rank_pattern[n.replace(f".{name}", "") if truncated else n], dtype=torch.bool,
                              device=p.device).unsqueeze(-1) for n, p in singular_values])
        with torch.no_grad():
            for (_, p), pruned in zip(singular_values, masks[id(rank_pattern)][1]):
                p.masked_fill_(pruned, 0.0)

    allocator.update_ipt = update_ipt
    allocator.mask_using_rank_pattern = mask_using_rank_pattern


def vectorise_regulariser(model: PeftModel) -> None:
    """The orthogonal regulariser of PEFT's AdaLoRA forward, R = mean over matrices of
    ||A A^T - I||_F and ||B^T B - I||_F (paper eq. 4), as a few batched products instead of a walk
    over every parameter of the model with five small operations per matrix at every step. Matrices
    of one shape are stacked and their Gram matrices taken in one ``bmm``. The same value and
    gradient, summed in another order (tests/test_adalora.py).
    """
    adalora = model.base_model
    name = adalora.trainable_adapter_name
    groups: dict[tuple, list] = {}  # (A or B, shape) -> the matrices, in PEFT's order
    for n, p in adalora.model.named_parameters():
        if ("lora_A" in n or "lora_B" in n) and name in n:
            groups.setdefault(("A" if "lora_A" in n else "B", tuple(p.shape)), []).append(p)
    count = sum(len(group) for group in groups.values())

    def regulariser() -> torch.Tensor:
        total = 0.0
        for (kind, _), matrices in groups.items():
            stacked = torch.stack(matrices)  # (n, r, in) for A, (n, out, r) for B
            gram = stacked @ stacked.transpose(1, 2) if kind == "A" else stacked.transpose(1, 2) @ stacked
            identity = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
            total = total + torch.linalg.matrix_norm(gram - identity).sum()
        return total / count

    def forward(*args, **kwargs):
        outputs = adalora.model.forward(*args, **kwargs)
        loss = getattr(outputs, "loss", None)
        if isinstance(loss, torch.Tensor) and count:
            weight = adalora.peft_config[name].orth_reg_weight
            if weight < 0:
                raise ValueError("orth_reg_weight should be greater than or equal to 0. ")
            outputs.loss = loss + weight * regulariser()
        return outputs

    adalora.forward = forward


ALLOCATOR_STATE_FILE = "adalora_allocator.pt"


class AdaLoraAllocation(TrainerCallback):
    """Runs AdaLoRA's importance update and budget allocation once per optimizer step.

    ``on_optimizer_step`` is the one hook that fires exactly once per optimizer
    step (also under gradient accumulation) while the gradients still exist;
    at ``on_step_end`` they have been zeroed. ``state.global_step`` there still
    counts the steps before this one, as PEFT's ``update_and_allocate`` expects.
    """

    def __init__(self, model: PeftModel, rank_log: RankLog | None):
        self.model = model
        self.rank_log = rank_log
        self.calls = 0  # allocations run, checked against the Trainer's step count at the end
        self.first_step = 0
        self.seconds = 0.0  # spent in the allocation (importance update, masking), for metrics.json

    @property
    def _config(self):
        return self.model.peft_config[self.model.active_adapter]

    @property
    def _allocator(self):
        return self.model.base_model.rankallocator

    def effective_ranks(self) -> dict[str, int]:
        """Rank of each module as the allocator's mask says (raw nonzeros drift between masks)."""
        pattern = self._config.rank_pattern
        if pattern:
            return {name: int(sum(mask)) for name, mask in pattern.items()}
        return {name % "lora_E": self._config.init_r for name in self._allocator.name_set}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.max_steps != self._config.total_step:
            raise RuntimeError(
                f"AdaLoRA was set up for {self._config.total_step} steps but the Trainer runs "
                f"{state.max_steps}: the step count in adarank.training_steps disagrees with the Trainer"
            )
        self.first_step = state.global_step
        if state.global_step == 0:
            config = self._config  # the schedule's phases, so plots need no knowledge of the method
            phases = {"warm-up (tinit)": [0, config.tinit],
                      "final (tfinal)": [config.total_step - config.tfinal, config.total_step]}
            self._log(0, "initial", self._allocator.init_bgt, phases=phases)
        elif args.resume_from_checkpoint:
            self.restore(Path(args.resume_from_checkpoint))

    def on_optimizer_step(self, args, state, control, **kwargs):
        step = state.global_step
        self.calls += 1
        started = time.perf_counter()
        self.model.base_model.update_and_allocate(step)
        self.seconds += time.perf_counter() - started
        budget, masked = self._allocator.budget_schedule(step)
        final_step = self._config.total_step - self._config.tfinal
        if (masked and step < final_step) or step == final_step:
            self._log(step + 1, "prune", budget)

    def timing(self) -> dict:
        return {"allocation_seconds": round(self.seconds, 3),
                "allocation_seconds_per_step": round(self.seconds / self.calls, 6) if self.calls else None}

    def on_train_end(self, args, state, control, **kwargs):
        if self.calls != state.global_step - self.first_step:
            raise RuntimeError(
                f"AdaLoRA's allocation ran {self.calls} times over {state.global_step - self.first_step} optimizer steps"
            )
        self._log(state.global_step, "final", self._allocator.target_bgt)

    def on_save(self, args, state, control, **kwargs):
        """Make the checkpoint resumable.

        PEFT saves an AdaLoRA adapter cut to its current rank pattern, and loading
        it shrinks the modules, which no longer fit the optimizer state. So the
        checkpoint gets the full-shape adapter, and the rank pattern travels with
        the allocator's importance averages, which no PEFT checkpoint holds.
        """
        folder = checkpoint_folder(args.output_dir, state.global_step)
        if not (state.is_world_process_zero and folder.is_dir()):
            return
        config = self._config
        pattern, config.rank_pattern = config.rank_pattern, None
        try:
            self.model.save_pretrained(str(folder))
        finally:
            config.rank_pattern = pattern
        allocator = self._allocator
        torch.save(
            {"ipt": allocator.ipt, "exp_avg_ipt": allocator.exp_avg_ipt,
             "exp_avg_unc": allocator.exp_avg_unc, "rank_pattern": pattern},
            folder / ALLOCATOR_STATE_FILE,
        )

    def restore(self, checkpoint: Path) -> None:
        """Bring back the allocator's state saved by ``on_save`` (call before training resumes)."""
        if not (checkpoint / ALLOCATOR_STATE_FILE).is_file():
            raise UsageError(
                f"{checkpoint} has no {ALLOCATOR_STATE_FILE}: resume an AdaLoRA run from one of its own checkpoints"
            )
        saved = torch.load(checkpoint / ALLOCATOR_STATE_FILE, map_location="cpu", weights_only=False)
        device = next(self.model.parameters()).device
        allocator = self._allocator
        for name in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            setattr(allocator, name, {k: v.to(device) for k, v in saved[name].items()})
        self._config.rank_pattern = saved["rank_pattern"]

    def _log(self, step: int, event: str, budget: int, **extra) -> None:
        if self.rank_log is not None:
            self.rank_log.write(
                step, event, budget, self.effective_ranks(),
                init_budget=self._allocator.init_bgt, target_budget=self._allocator.target_bgt, **extra,
            )
