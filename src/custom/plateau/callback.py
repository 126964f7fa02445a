"""The control loop: watch the dev loss, grow ranks on a plateau, log every event, checkpoint the state."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback

from adarank.errors import UsageError
from adarank.run.ranks import RankLog
from adarank.run.directory import checkpoint_folder
from custom.plateau.growth import (GradientCapture, extend_optimizer_state, gradient_rows, lora_rows, resize_module,
                            whitened_rows)

STATE_FILE = "plateau_state.json"


class PlateauGrowth(TrainerCallback):
    """Grows ranks when the dev loss has not improved for ``patience`` evaluations."""

    def __init__(self, model, plan, target_modules: list[str], rank_log: RankLog | None, splits: int = 1):
        self.model = model
        self.splits = splits  # dev splits: the Trainer reports each to on_evaluate on its own
        self.reported: tuple[int, int, list[float]] = (-1, 0, [])  # this evaluation's step, splits and losses so far
        self.plan = plan
        self.rank_log = rank_log
        self.adapter = model.active_adapter
        self.layers = {name: model.base_model.model.get_submodule(name) for name in target_modules}
        self.ranks = {name: plan.r0 for name in self.layers}
        self.best = math.inf
        self.wait = 0
        self.events: list[dict] = []
        self.importance = {name: 0.0 for name in self.layers}
        self.param_steps = 0.0  # sum over optimizer steps of the adapter parameters then trained
        self.steps = 0
        self.capture = GradientCapture(self.layers, second_moments=plan.growth_init == "whitened")

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
        if self.plan.growth_init != "lora":  # capture the last gradient_window steps before an evaluation
            into_interval = (state.global_step % self.plan.eval_every) + 1
            wanted = into_interval > self.plan.eval_every - self.plan.gradient_window
            if wanted and not self.capture.active:
                self.capture.start()
            elif not wanted and self.capture.active:
                self.capture.stop()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.steps += 1
        self.param_steps += self.adapter_params()
        if self.plan.grow_where == "importance":
            beta = self.plan.importance_beta
            with torch.no_grad():
                for name, layer in self.layers.items():
                    score = sum(float((p * p.grad).abs().sum()) for p in self._lora_params(layer) if p.grad is not None)
                    self.importance[name] = beta * self.importance[name] + (1 - beta) * score

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.plan.eval_every == 0:
            control.should_evaluate = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        """Once every dev split has reported its loss for this step: their mean against the best so far."""
        step, splits, losses = self.reported if self.reported[0] == state.global_step else (state.global_step, 0, [])
        losses = losses + [v for k, v in (metrics or {}).items() if k.startswith("eval") and k.endswith("_loss")]
        self.reported = (step, splits + 1, losses)
        if splits + 1 < self.splits:
            return
        self.reported = (-1, 0, [])
        if losses:
            self._judge(sum(losses) / len(losses), state.global_step, kwargs.get("optimizer"),
                        last=state.global_step >= state.max_steps)
        self.capture.clear()  # a window informs only the evaluation right after it

    def _judge(self, loss: float, step: int, optimizer, last: bool = False) -> None:
        """One evaluation's dev loss: an improvement, or one more without; grow after ``patience`` of those,
        but not at the ``last`` step: no step would train the new ranks, yet the counts would hold them."""
        if loss < self.best - self.plan.min_delta:
            self.best, self.wait = loss, 0
        else:
            self.wait += 1
        if not last and self.wait >= self.plan.patience and any(r < self.plan.r_max for r in self.ranks.values()):
            self.grow(step, optimizer, loss)
            self.wait = 0

    def on_train_end(self, args, state, control, **kwargs):
        self.capture.stop()
        self._log(state.global_step, "final")

    def on_save(self, args, state, control, **kwargs):
        folder = checkpoint_folder(args.output_dir, state.global_step)
        if state.is_world_process_zero and folder.is_dir():
            document = {"best": self.best, "wait": self.wait, "ranks": self.ranks, "events": self.events,
                        "importance": self.importance, "param_steps": self.param_steps, "steps": self.steps}
            (folder / STATE_FILE).write_text(json.dumps(document))

    # --- growing --------------------------------------------------------------------------

    def _lora_params(self, layer) -> list[nn.Parameter]:
        return [layer.lora_A[self.adapter].weight, layer.lora_B[self.adapter].weight]

    def _chosen(self) -> dict[str, int]:
        """Module -> new rank for this event."""
        open_modules = [n for n, r in self.ranks.items() if r < self.plan.r_max]
        if self.plan.grow_where == "all":
            return {n: min(self.ranks[n] + self.plan.delta_r, self.plan.r_max) for n in open_modules}
        budget = self.plan.growth_budget
        chosen = {}
        for name in sorted(open_modules, key=lambda n: -self.importance[n]):
            if budget <= 0:
                break
            step = min(self.plan.delta_r, self.plan.r_max - self.ranks[name], budget)
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
        extra = new_rank - self.ranks[name]
        a, b = self._lora_params(layer)
        rows = self._new_rows(name, a, extra) if init else torch.zeros(extra, a.shape[1])
        # alpha grows with r so that alpha / r stays at alpha / r0: old directions keep their scale.
        resize_module(self.model, layer, name, new_rank, rows, self.plan.lora_alpha * new_rank / self.plan.r0)
        self.ranks[name] = new_rank
        if optimizer is not None:
            extend_optimizer_state(optimizer, a, b, extra)

    def _new_rows(self, name: str, a: torch.Tensor, extra: int) -> torch.Tensor:
        gradient = self.capture.gradients.get(name)
        rows = None
        if self.plan.growth_init == "whitened" and gradient is not None:
            second_moment = self.capture.second_moment(name)  # None: no token reached the loss here
            rows = None if second_moment is None else whitened_rows(a, gradient, second_moment, extra)
        elif self.plan.growth_init == "gradient" and gradient is not None:
            rows = gradient_rows(a, gradient, extra)
        return lora_rows(a, extra) if rows is None else rows

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
