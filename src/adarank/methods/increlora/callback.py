"""IncreLoRA in the Trainer: importance after every optimizer step, ranks added at the growth steps,
the restart warm-up of new ranks, ranks.jsonl, and the state checkpoints carry.

``on_optimizer_step`` fires once per optimizer step while the gradients still exist, with
``state.global_step`` still counting the steps before this one; ``on_pre_optimizer_step`` fires
just before the step, after gradient clipping.

Restart warm-up: a rank added after step t trains its entries (lambda, its column of P and row of Q)
at ``k / W`` times the run's learning rate in the k-th step after t, for k < W (``restart_warmup``).
AdamW's update, weight decay included, is proportional to the learning rate, so the step is taken
at the run's rate and those entries are then moved back to ``k / W`` of the way, which is the same.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from adarank.errors import UsageError
from adarank.methods.increlora.allocation import by_importance, matrix_score, smoothed_importance
from adarank.methods.increlora.layers import (INIT_STD, OrthogonalRegulariser, append_triplet, fold,
                                               hold_last_lambda, triplet_parameters)
from adarank.methods.increlora.schedule import chosen_at_step
from adarank.run.directory import checkpoint_folder
from adarank.run.ranks import RankLog

STATE_FILE = "increlora_state.pt"


class IncreLoraGrowth(TrainerCallback):
    """Grows an IncreLoRA model's ranks while the Trainer trains it, and leaves a plain LoRA model behind."""

    def __init__(self, model, plan, layers: dict, regulariser: OrthogonalRegulariser, rank_log: RankLog | None):
        self.model, self.plan, self.layers, self.regulariser, self.rank_log = model, plan, layers, regulariser, rank_log
        self.adapter = model.active_adapter
        self.reserved = 1 if plan.advance_learning else 0
        self.ranks = {name: plan.init_r for name in layers}  # active ranks
        self.sizes = {name: layer.in_features + layer.out_features + 1 for name, layer in layers.items()}
        self.target = plan.expected["lora_adapter_params"]  # the average the run matches
        self.growth_steps = set(plan.growth_steps)
        self.avg: dict[str, list[torch.Tensor]] = {}
        self.unc: dict[str, list[torch.Tensor]] = {}
        self.scores: dict[str, float] = {}  # at the last growth step
        self.param_steps, self.steps, self.events, self.warming = 0, 0, [], []
        self.seed, self.seconds, self._before = 0, 0.0, []  # the run's seed (new triplets), time, warm-up snapshots
        self._hooks = [hold_last_lambda(layer, self.adapter) for layer in layers.values()] if self.reserved else []

    # --- what the run reports -------------------------------------------------------------

    def adapter_params(self) -> int:
        """Trainable parameters of the active triplets (P, lambda, Q), the reserved one not included."""
        return sum(self.ranks[name] * self.sizes[name] for name in self.layers)

    def summary(self) -> dict:
        """metrics.json's IncreLoRA figures. The averages count the active triplets (P, lambda, Q) trained at
        each optimizer step; the saved adapter (metrics' adapter_params) holds r (in + out) per matrix, lambda
        folded into B. The reserved triplets, trained by the regulariser alone, are counted apart."""
        return {
            "average_adapter_params": self.param_steps / self.steps if self.steps else float(self.adapter_params()),
            "final_adapter_params": self.adapter_params(),
            "budget_adapter_params": self.target,
            "reserved_adapter_params": self.reserved * sum(self.sizes.values()),
            "growth_events": len(self.events),
            "final_total_rank": sum(self.ranks.values()),
            "allocation_seconds": round(self.seconds, 3),
        }

    def _log(self, step: int, event: str, **extra) -> None:
        if self.rank_log is not None:
            total = sum(self.ranks.values())
            self.rank_log.write(step, event, total, dict(self.ranks), **extra)

    # --- Trainer hooks --------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        if state.max_steps != self.plan.schedule.total_step:
            raise RuntimeError(f"IncreLoRA was planned for {self.plan.schedule.total_step} steps but the Trainer runs "
                               f"{state.max_steps}: the step count in adarank.run.steps disagrees with the Trainer")
        self.seed = args.seed
        if state.global_step == 0:
            s = self.plan.schedule
            phases = {"warm-up (tinit)": [0, s.tinit], "final (tfinal)": [s.total_step - s.tfinal, s.total_step]}
            self._log(0, "initial", phases=phases, top_h=self.plan.top_h)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        step, width = state.global_step + 1, self.plan.restart_warmup
        self.warming = [w for w in self.warming if step - w[2] < width]
        self._before = []
        for name, index, added in self.warming:
            q, p, e = triplet_parameters(self.layers[name], self.adapter)
            self._before.append(((step - added) / width, q, p, e, index,
                                 q.data[index].clone(), p.data[:, index].clone(), e.data[index].clone()))

    def on_optimizer_step(self, args, state, control, **kwargs):
        started = time.perf_counter()
        step = state.global_step + 1
        self._restart_warmup()
        self.steps += 1
        self.param_steps += self.adapter_params()
        self._update_importance()
        if step in self.growth_steps:
            self.grow(step, kwargs.get("optimizer"))
        self.seconds += time.perf_counter() - started

    def on_train_end(self, args, state, control, **kwargs):
        self._log(state.global_step, "final")
        self.finish()

    def on_save(self, args, state, control, **kwargs):
        folder = checkpoint_folder(args.output_dir, state.global_step)
        if state.is_world_process_zero and folder.is_dir():
            torch.save({"ranks": self.ranks, "avg": self.avg, "unc": self.unc, "param_steps": self.param_steps,
                        "steps": self.steps, "events": self.events, "warming": self.warming},
                       folder / STATE_FILE)

    # --- importance, growth ---------------------------------------------------------------

    def _restart_warmup(self) -> None:
        with torch.no_grad():
            for fraction, q, p, e, index, q0, p0, e0 in self._before:
                q.data[index] = q0 + fraction * (q.data[index] - q0)
                p.data[:, index] = p0 + fraction * (p.data[:, index] - p0)
                e.data[index] = e0 + fraction * (e.data[index] - e0)
        self._before = []

    def _update_importance(self) -> None:
        b1, b2 = self.plan.beta1, self.plan.beta2
        with torch.no_grad():
            for name, layer in self.layers.items():
                tensors = triplet_parameters(layer, self.adapter)
                if name not in self.avg:
                    self.avg[name] = [torch.zeros_like(t) for t in tensors]
                    self.unc[name] = [torch.zeros_like(t) for t in tensors]
                for i, t in enumerate(tensors):
                    if t.grad is not None:
                        avg, unc = self.avg[name][i].to(t.device), self.unc[name][i].to(t.device)
                        self.avg[name][i], self.unc[name][i] = smoothed_importance(avg, unc, t, t.grad, b1, b2)

    def grow(self, step: int, optimizer=None) -> list[str]:
        """Add a rank to the most important matrices the budget rule lets grow after ``step``."""
        self.scores = {name: matrix_score(self.avg[name], self.unc[name], self.ranks[name]) if name in self.avg
                       else 0.0 for name in self.layers}
        chosen = chosen_at_step(by_importance(self.scores), self.sizes, self.param_steps, self.adapter_params(),
                                step, self.plan.schedule.total_step, self.target, self.plan.top_h)
        for name in chosen:
            self.add_rank(name, step, optimizer)
        if chosen:
            self.events.append({"step": step, "modules": chosen})
            self._log(step, "grow", grown_modules=len(chosen))
        return chosen

    def add_rank(self, name: str, step: int, optimizer=None, values: bool = True) -> None:
        """One more active rank for ``name``: the reserved triplet (advance learning) or a fresh one.
        A new triplet is drawn from a generator of (seed, step, matrix), the same in a resumed run."""
        layer = self.layers[name]
        index = list(self.layers).index(name)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 1_009 + index)
        draw = (lambda n: torch.randn(n, generator=generator) * INIT_STD) if values else torch.zeros
        q, p = draw(layer.in_features), draw(layer.out_features)
        append_triplet(self.model, layer, name, q, p, self.plan.scale, optimizer)
        if name in self.avg:
            for store in (self.avg[name], self.unc[name]):
                store[0] = torch.cat([store[0], store[0].new_zeros(1, store[0].shape[1])])
                store[1] = torch.cat([store[1], store[1].new_zeros(store[1].shape[0], 1)], dim=1)
                store[2] = torch.cat([store[2], store[2].new_zeros(1)])
        if values and self.plan.restart_warmup > 1:
            self.warming.append([name, self.ranks[name], step])
        self.ranks[name] += 1

    # --- the end of training, and resuming ------------------------------------------------

    def finish(self) -> None:
        """Leave plain PEFT LoRA layers of the active ranks behind (lambda folded into B)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.regulariser.remove()
        for name, layer in self.layers.items():
            if hasattr(layer, "lora_E"):
                fold(self.model, layer, name, self.ranks[name], self.plan.scale)

    def restore(self, checkpoint: Path) -> None:
        """Before a resumed run loads its checkpoint: the grown shapes (the Trainer then loads the values
        into them) and the allocation state, as they were saved."""
        path = checkpoint / STATE_FILE
        if not path.is_file():
            raise UsageError(f"{checkpoint} has no {STATE_FILE}: resume an IncreLoRA run from one of its own "
                             "checkpoints")
        saved = torch.load(path, map_location="cpu", weights_only=True)  # dicts, lists, tensors and numbers
        for name, rank in saved["ranks"].items():
            while self.ranks[name] < rank:
                self.add_rank(name, 0, values=False)
        self.avg, self.unc = saved["avg"], saved["unc"]
        self.param_steps, self.steps = saved["param_steps"], saved["steps"]
        self.events, self.warming = saved["events"], saved["warming"]
