"""Dynamic rank scheduling via loss plateau: grow LoRA ranks when validation loss stalls.

Every adapted matrix starts at rank ``r0``. The dev loss is evaluated every
``eval_every`` steps; when it has not improved by ``plateau_min_delta`` for
``plateau_patience`` evaluations, ranks grow by ``delta_r`` (up to ``r_max``)
and training goes on with the same optimizer and learning-rate schedule.

Growth is function-preserving. New columns of B are zero, so B A is unchanged;
and the scaling alpha / r of each module is frozen at its initial alpha / r0
(alpha grows with r), so old directions are not rescaled. The saved adapter is
a standard PEFT LoRA adapter: per-module ranks in ``rank_pattern`` and the
matching ``alpha_pattern``. AdamW's moments of existing entries are kept; new
entries start with zero moments.

New directions (``--growth_init``): ``lora`` draws A rows as PEFT does
(Kaiming-uniform); ``gradient`` takes the top right singular vectors of the
frozen weight's gradient G accumulated over the last ``gradient_window`` steps
before the evaluation, outside the span of the existing rows (in the spirit
of GoRA and IncreLoRA), scaled to the norm of the existing rows.
``whitened`` does the same in whitened input coordinates: with C = E[x x^T]
the second moment of the layer's inputs over the same steps (the tokens whose
output reaches the loss), the rows are C^{-1/2} v for the top right singular
vectors v of G C^{-1/2}, outside the whitened span of the existing rows (so
the new features a.x have zero cross second moment with the old ones and with
each other), scaled so that E[(a.x)^2] equals that of a PEFT default row.
Where G has fewer such directions than needed, the rest are random ones in
the same space. Raw gradient directions follow the few input directions of largest
energy (the activation outliers of a transformer), up to 100 times a random
row's, and on CoLA they left the model at the majority class; whitening picks
the directions that lower the loss most per unit of feature energy instead.

Where to grow (``--grow_where``): ``all`` modules (the original method), or
``importance``: the modules with the highest EMA of sum |w * grad w| over
their LoRA parameters (IncreLoRA's score), ``growth_budget`` rank units per event.

Checkpoints carry the plateau state but not a gradient window in progress: a
run resumed inside a window grows from the part of the window after resuming.

This module plugs into adarank through its extension points (a registered
method and its callback); adarank does not import it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, TaskType, get_peft_model
from torch import nn
from transformers import TrainerCallback

from adarank.errors import UsageError
from adarank.methods import (AdapterMethod, AdapterRequest, BuiltAdapter, budget_rank, check_lora_arguments,
                             register_method)

log = logging.getLogger("adarank")
STATE_FILE = "plateau_state.json"
GROWTH_INITS = ("lora", "gradient", "whitened")
# What the entry scripts pass to adarank's main(): the method, a ceiling of rank 8 (the paper's
# large budget, which fixed LoRA r=8 is compared at), and dev evaluations on the method's own steps.
SCRIPT_DEFAULTS = {"method": "plateau", "budget": "large", "eval_strategy": "no"}
# Dev evaluations per epoch when --eval_every is not given: with the default patience of 2,
# a plateau can then be seen, and acted on, within an epoch.
EVALS_PER_EPOCH = 4
GRADIENT_WINDOW = 10  # the most steps of gradients a default window holds


@dataclass
class PlateauArguments:
    r0: int = field(default=2, metadata={"help": "Initial rank of every adapted matrix."})
    delta_r: int = field(default=2, metadata={"help": "Rank added to a module at a growth event."})
    r_max: int | None = field(default=None, metadata={
        "help": "No module grows beyond this rank (default: the budget's rank, 8 for --budget large)."})
    plateau_patience: int = field(default=2, metadata={"help": "Evaluations without improvement before growing."})
    # Not 0: a loss that keeps creeping towards its floor (a fitted training set, a decaying learning
    # rate) improves a little at every evaluation and would never plateau (Keras' ReduceLROnPlateau: 1e-4).
    plateau_min_delta: float = field(default=1e-4, metadata={
        "help": "Smallest dev-loss decrease that counts as an improvement (a loss creeping towards its floor "
                "by less is a plateau)."})
    eval_every: int | None = field(default=None, metadata={
        "help": f"Optimizer steps between dev-loss evaluations (default: {EVALS_PER_EPOCH} per epoch, "
                f"ceil(steps per epoch / {EVALS_PER_EPOCH}), at most the run's steps)."})
    growth_init: str = field(default="lora", metadata={
        "help": "lora (random A rows), gradient (top singular vectors of the weight gradient) or whitened (the same "
                "in whitened input coordinates)."})
    grow_where: str = field(default="all", metadata={"help": "all modules, or importance (the top-scored ones)."})
    growth_budget: int | None = field(default=None, metadata={
        "help": "Rank units per event with grow_where=importance (default: a third of (adapted matrices x delta_r), "
                "at least 1)."})
    gradient_window: int | None = field(default=None, metadata={
        "help": f"Steps of weight gradients kept for growth_init=gradient/whitened (default: "
                f"min({GRADIENT_WINDOW}, eval_every))."})
    importance_beta: float = field(default=0.85, metadata={"help": "EMA factor of the importance score."})


def plateau_arguments(request: AdapterRequest) -> PlateauArguments:
    for extra in request.extra:
        if isinstance(extra, PlateauArguments):
            return extra
    return PlateauArguments()


def default_eval_every(request: AdapterRequest) -> int:
    """EVALS_PER_EPOCH evaluations per epoch of the run (a run without a known epoch length: of all its
    steps), at least every step and at most once per run."""
    per_epoch = request.steps_per_epoch or request.total_step
    return min(max(1, math.ceil(per_epoch / EVALS_PER_EPOCH)), request.total_step)


def default_growth_budget(modules: int, delta_r: int) -> int:
    """Rank units per importance-driven event: a third of what growing every module would add."""
    return max(1, modules * delta_r // 3)


class PlateauLora(AdapterMethod):
    name = "plateau"
    reloads_checkpoints = False  # ranks grow: an earlier checkpoint does not fit the final model

    def plan(self, request: AdapterRequest) -> dict:
        check_lora_arguments(request.args)
        a = plateau_arguments(request)
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
        if a.growth_init not in GROWTH_INITS:
            raise UsageError(f"--growth_init {a.growth_init!r}: choose one of {', '.join(GROWTH_INITS)}")
        if a.grow_where not in ("all", "importance"):
            raise UsageError(f"--grow_where {a.grow_where!r}: choose all or importance")
        if a.growth_budget is not None and a.growth_budget < 1:
            raise UsageError(f"--growth_budget {a.growth_budget} must be at least 1 rank unit per growth event "
                             "(leave it out for a third of what growing every module would add)")
        gradient_window = a.gradient_window if a.gradient_window is not None else min(GRADIENT_WINDOW, eval_every)
        if a.growth_init != "lora" and not 1 <= gradient_window <= eval_every:
            raise UsageError(f"--gradient_window {gradient_window} must be from 1 to --eval_every {eval_every}")
        return {
            "r0": a.r0, "delta_r": a.delta_r, "r_max": r_max, "patience": a.plateau_patience,
            "min_delta": a.plateau_min_delta, "eval_every": eval_every, "growth_init": a.growth_init,
            # growth_budget's default counts the adapted matrices, known once the model is loaded: build() sets it.
            "grow_where": a.grow_where, "growth_budget": a.growth_budget, "gradient_window": gradient_window,
            "importance_beta": a.importance_beta, "lora_alpha": request.args.lora_alpha,
            "lora_dropout": request.args.lora_dropout,
            "scaling_rule": "alpha / r fixed at alpha / r0: alpha grows with r", "budget_rank": r_max,
        }

    def build(self, model: nn.Module, plan: dict, request: AdapterRequest) -> BuiltAdapter:
        config = LoraConfig(
            task_type=TaskType.SEQ_CLS, r=plan["r0"], lora_alpha=plan["lora_alpha"],
            lora_dropout=plan["lora_dropout"], target_modules=request.target_modules,
            modules_to_save=request.head_modules,
        )
        if plan["grow_where"] == "importance":
            # Resolved here, in the plan config.json records (written after build), as the events use it.
            plan["growth_budget"] = plan["growth_budget"] or default_growth_budget(
                len(request.target_modules), plan["delta_r"])
        peft_model = get_peft_model(model, config)
        growth = PlateauGrowth(peft_model, plan, request)
        if request.resume_from:
            growth.restore(Path(request.resume_from))
        return BuiltAdapter(peft_model, callbacks=[growth], summary=growth.summary)


def top_directions(matrix: torch.Tensor, basis: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` orthonormal rows orthogonal to the columns of ``basis``: the top right singular
    vectors of ``matrix`` there, then, where ``matrix`` has fewer such directions, random ones."""
    outside = matrix - (matrix @ basis) @ basis.T
    _, values, vh = torch.linalg.svd(outside, full_matrices=False)
    chosen = vh[: count][values[: count] > 1e-6 * values[0].clamp_min(1e-30)]
    missing = count - chosen.shape[0]
    if missing:
        span = torch.cat([basis, chosen.T], dim=1)
        drawn = torch.randn(matrix.shape[1], missing, dtype=matrix.dtype, device=matrix.device)
        drawn = drawn - span @ (span.T @ drawn)
        chosen = torch.cat([chosen, torch.linalg.qr(drawn)[0].T])
    return chosen


class PlateauGrowth(TrainerCallback):
    """Watches the dev loss, grows ranks on a plateau, and logs every event to ranks.jsonl."""

    def __init__(self, model, plan: dict, request: AdapterRequest):
        self.model = model
        self.plan = plan
        self.rank_log = request.rank_log
        self.adapter = model.active_adapter
        self.layers = {name: self._layer(name) for name in request.target_modules}
        self.ranks = {name: plan["r0"] for name in self.layers}
        self.best = math.inf
        self.wait = 0
        self.events: list[dict] = []
        self.importance = {name: 0.0 for name in self.layers}
        self.param_steps = 0.0  # sum over optimizer steps of the adapter parameters then trained
        self.steps = 0
        self.gradients: dict[str, torch.Tensor] = {}  # module -> summed gradient of its frozen weight
        self.inputs: dict[str, list] = {}  # module -> [sum of x x^T, number of x] (growth_init whitened)
        self._hooks: list = []

    def _layer(self, name: str):
        return self.model.base_model.model.get_submodule(name)

    # --- what the run reports -------------------------------------------------------------

    def adapter_params(self) -> int:
        return sum(r * (layer.in_features + layer.out_features) for r, layer in
                   ((self.ranks[n], self.layers[n]) for n in self.layers))

    def summary(self) -> dict:
        return {
            "average_adapter_params": self.param_steps / self.steps if self.steps else float(self.adapter_params()),
            "final_adapter_params": self.adapter_params(),
            "growth_events": len(self.events),
            "final_total_rank": sum(self.ranks.values()),
        }

    def _log(self, step: int, event: str, **extra) -> None:
        if self.rank_log is not None:
            self.rank_log.write(step, event, sum(self.ranks.values()), dict(self.ranks), **extra)

    # --- Trainer hooks --------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            self._log(0, "initial")

    def on_step_begin(self, args, state, control, **kwargs):
        if self.plan["growth_init"] != "lora":
            into_interval = (state.global_step % self.plan["eval_every"]) + 1
            capture = into_interval > self.plan["eval_every"] - self.plan["gradient_window"]
            if capture and not self._hooks:
                self._start_capture()
            elif not capture and self._hooks:
                self._stop_capture()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.steps += 1
        self.param_steps += self.adapter_params()
        if self.plan["grow_where"] == "importance":
            beta = self.plan["importance_beta"]
            with torch.no_grad():
                for name, layer in self.layers.items():
                    score = sum(float((p * p.grad).abs().sum()) for p in self._lora_params(layer) if p.grad is not None)
                    self.importance[name] = beta * self.importance[name] + (1 - beta) * score

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.plan["eval_every"] == 0:
            control.should_evaluate = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        losses = [v for k, v in (metrics or {}).items() if k.startswith("eval") and k.endswith("_loss")]
        if losses:
            loss = sum(losses) / len(losses)
            if loss < self.best - self.plan["min_delta"]:
                self.best, self.wait = loss, 0
            else:
                self.wait += 1
            if self.wait >= self.plan["patience"] and any(r < self.plan["r_max"] for r in self.ranks.values()):
                self.grow(state.global_step, kwargs.get("optimizer"), loss)
                self.wait = 0
        self.gradients, self.inputs = {}, {}  # a window informs only the evaluation right after it

    def on_train_end(self, args, state, control, **kwargs):
        self._stop_capture()
        self._log(state.global_step, "final")

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            document = {"best": self.best, "wait": self.wait, "ranks": self.ranks, "events": self.events,
                        "importance": self.importance, "param_steps": self.param_steps, "steps": self.steps}
            (folder / STATE_FILE).write_text(json.dumps(document))

    # --- growing --------------------------------------------------------------------------

    def _lora_params(self, layer) -> list[nn.Parameter]:
        return [layer.lora_A[self.adapter].weight, layer.lora_B[self.adapter].weight]

    def _chosen(self) -> dict[str, int]:
        """Module -> new rank for this event."""
        open_modules = [n for n, r in self.ranks.items() if r < self.plan["r_max"]]
        if self.plan["grow_where"] == "all":
            return {n: min(self.ranks[n] + self.plan["delta_r"], self.plan["r_max"]) for n in open_modules}
        budget = self.plan["growth_budget"] or default_growth_budget(len(self.layers), self.plan["delta_r"])
        chosen = {}
        for name in sorted(open_modules, key=lambda n: -self.importance[n]):
            if budget <= 0:
                break
            step = min(self.plan["delta_r"], self.plan["r_max"] - self.ranks[name], budget)
            chosen[name] = self.ranks[name] + step
            budget -= step
        return chosen

    def grow(self, step: int, optimizer, loss: float) -> None:
        chosen = self._chosen()
        for name, new_rank in chosen.items():
            self.resize(name, new_rank, optimizer)
        self.events.append({"step": step, "dev_loss": loss, "grown": len(chosen)})
        self._log(step, "grow", dev_loss=loss, grown_modules=len(chosen))

    def resize(self, name: str, new_rank: int, optimizer=None, init: bool = True) -> None:
        """Give module ``name`` rank ``new_rank``, keeping its function and its optimizer state."""
        layer = self.layers[name]
        old_rank = self.ranks[name]
        extra = new_rank - old_rank
        a, b = self._lora_params(layer)
        rows = self._new_rows(name, layer, a, extra) if init else torch.zeros(extra, a.shape[1])
        with torch.no_grad():
            a.data = torch.cat([a.data, rows.to(a.device, a.dtype)], dim=0)
            b.data = torch.cat([b.data, torch.zeros(b.shape[0], extra, device=b.device, dtype=b.dtype)], dim=1)
        layer.lora_A[self.adapter].out_features = new_rank
        layer.lora_B[self.adapter].in_features = new_rank
        # Keep alpha / r at its first value so the existing directions keep their scale.
        alpha = self.plan["lora_alpha"] * new_rank / self.plan["r0"]
        layer.r[self.adapter] = new_rank
        layer.lora_alpha[self.adapter] = alpha
        layer.scaling[self.adapter] = alpha / new_rank
        config = self.model.peft_config[self.adapter]
        config.rank_pattern = {**(config.rank_pattern or {}), name: new_rank}
        config.alpha_pattern = {**(config.alpha_pattern or {}), name: alpha}
        self.ranks[name] = new_rank
        if optimizer is not None:
            state = getattr(optimizer, "optimizer", optimizer).state
            for param, dim in ((a, 0), (b, 1)):
                for key, value in state.get(param, {}).items():
                    if torch.is_tensor(value) and value.dim() == 2:
                        shape = list(value.shape)
                        shape[dim] = extra
                        state[param][key] = torch.cat([value, value.new_zeros(shape)], dim=dim)

    def _new_rows(self, name: str, layer, a: torch.Tensor, extra: int) -> torch.Tensor:
        if self.plan["growth_init"] == "whitened" and name in self.gradients:
            return self._whitened_rows(name, a, extra)
        if self.plan["growth_init"] == "gradient" and name in self.gradients:
            old = a.detach().double()
            basis, _ = torch.linalg.qr(old.T)  # the span of the existing rows
            directions = top_directions(self.gradients[name].double(), basis, extra)
            return (directions * old.norm(dim=1).mean()).float()
        return self._lora_rows(a, extra)

    def _whitened_rows(self, name: str, a: torch.Tensor, extra: int) -> torch.Tensor:
        """Rows C^{-1/2} v: v the top right singular vectors of G C^{-1/2} outside the old rows' span.

        C is kept on the eigen-directions the inputs use (eigenvalues above 1e-3 of the mean):
        there the new features are exactly uncorrelated with the old ones (zero cross second
        moment) and with each other, each with a PEFT default row's energy.
        """
        total, count = self.inputs.get(name, (None, 0))
        if not count:  # no token of the window reached the loss through this module
            return self._lora_rows(a, extra)
        second_moment = total.double() / count
        values, vectors = torch.linalg.eigh(second_moment)
        used = values > 1e-3 * values.clamp_min(0).mean()
        values, vectors = values[used], vectors[:, used]
        to_white = vectors * values.sqrt()  # a row a becomes a @ to_white; x becomes diag^-1/2 V^T x
        from_white = vectors / values.sqrt()  # a whitened direction v becomes the row v @ from_white.T
        basis, _ = torch.linalg.qr((a.detach().double() @ to_white).T)  # old rows, whitened
        if extra > values.numel() - basis.shape[1]:  # the inputs span too few directions: fall back
            return self._lora_rows(a, extra)
        directions = top_directions(self.gradients[name].double() @ from_white, basis, extra)
        # A PEFT default row (uniform in +-1/sqrt(in)) gives E[(a.x)^2] = trace(C) / (3 in);
        # a whitened unit direction gives E[(a.x)^2] = 1.
        target = torch.trace(second_moment) / (3 * a.shape[1])
        return (directions @ from_white.T * target.sqrt()).float()

    @staticmethod
    def _lora_rows(a: torch.Tensor, extra: int) -> torch.Tensor:
        rows = torch.empty(extra, a.shape[1])
        nn.init.kaiming_uniform_(rows, a=math.sqrt(5))  # PEFT's default for lora_A
        return rows

    def _start_capture(self) -> None:
        """Accumulate each frozen weight's gradient G = sum over tokens of grad_out^T x, and the
        second moment sum of x x^T over the tokens whose output reaches the loss (whitened)."""
        whitened = self.plan["growth_init"] == "whitened"
        for name, layer in self.layers.items():
            def forward_hook(module, inputs, output, name=name):
                if not torch.is_grad_enabled() or not output.requires_grad:
                    return
                x = inputs[0].detach()

                def backward(grad, x=x):  # runs outside autocast: sums are float32
                    grad = grad.detach().reshape(-1, grad.shape[-1]).float()
                    x_flat = x.reshape(-1, x.shape[-1]).float()
                    self.gradients[name] = self.gradients.get(name, 0) + grad.T @ x_flat
                    if whitened:
                        reached = x_flat[grad.abs().amax(dim=1) > 0]  # not padding, not cut off
                        total, count = self.inputs.get(name, (0, 0))
                        self.inputs[name] = [total + reached.T @ reached, count + reached.shape[0]]

                output.register_hook(backward)
            self._hooks.append(layer.register_forward_hook(forward_hook))

    def _stop_capture(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def restore(self, checkpoint: Path) -> None:
        """Before a resumed run loads its checkpoint: take back the ranks and the plateau state."""
        path = checkpoint / STATE_FILE
        if not path.is_file():
            raise UsageError(f"{checkpoint} has no {STATE_FILE}: resume a plateau run from one of its own checkpoints")
        saved = json.loads(path.read_text())
        for name, rank in saved["ranks"].items():
            if rank > self.ranks[name]:
                self.resize(name, rank, init=False)
        self.best, self.wait, self.events = saved["best"], saved["wait"], saved["events"]
        self.importance, self.param_steps, self.steps = saved["importance"], saved["param_steps"], saved["steps"]


register_method(PlateauLora())
