"""diagnostics.jsonl (``--diagnostics``): how large the adapters' updates are while training.

Why AdaLoRA learns late in short runs is a question about magnitudes: the
update of each adapted matrix (scaling * B A for LoRA, scaling * B diag(E) A /
rank for AdaLoRA, whose E starts at zero), the singular values |E|, and the
orthogonal regulariser R (mean over A and B of ||A A^T - I||_F, ||B^T B - I||_F,
eq. 4) beside the loss. One record every ``logging_steps`` optimizer steps,
summed over layers by module kind so a paper-length run stays small::

    {"step": 40, "update_norm": {"query": 0.012, ...}, "lora_E_abs_mean": {...},
     "orth_reg": 1.71, "orth_reg_weighted": 0.86}

AdaLoRA's importance scores (eq. 10-11, triplet scores) are summarised by
quantiles when pruning starts (t = tinit) and when the final mask is fixed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import TrainerCallback

from adarank.methods.adalora import importance_steps, regulariser_scalars, triplet_scores, update_scale
from adarank.modules import locate

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def _adapter_tensors(model, adapter: str):
    """(module name, A, B, E or None, scale) for every adapted matrix; ΔW = scale * B diag(E) A."""
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) and not isinstance(lora_a, torch.nn.ParameterDict):
            continue
        if adapter not in lora_a:
            continue
        a, b = lora_a[adapter], module.lora_B[adapter]
        a, b = getattr(a, "weight", a), getattr(b, "weight", b)
        if hasattr(module, "lora_E"):  # AdaLoRA's SVD form
            scale = update_scale(module.scaling[adapter], float(module.ranknum[adapter]))
            yield name, a, b, module.lora_E[adapter], scale
        else:
            yield name, a, b, None, module.scaling[adapter]


def update_norms(model, adapter: str) -> dict:
    """Per module kind: sqrt of the sum over layers of ||ΔW||_F^2, and AdaLoRA's mean |E|."""
    squares: dict[str, float] = {}
    e_sums: dict[str, list[float]] = {}
    with torch.no_grad():
        for name, a, b, e, scale in _adapter_tensors(model, adapter):
            place = locate(name)
            kind = place[1] if place else name
            rows = a if e is None else a * e  # diag(E) A
            # ||B M||_F^2 = trace((B^T B)(M M^T)): r x r products instead of an out x in matrix
            norm2 = float(torch.trace((b.T @ b) @ (rows @ rows.T))) * scale**2
            squares[kind] = squares.get(kind, 0.0) + max(norm2, 0.0)
            if e is not None:
                total, count = e_sums.get(kind, [0.0, 0])
                e_sums[kind] = [total + float(e.abs().sum()), count + e.numel()]
    record = {"update_norm": {k: v**0.5 for k, v in squares.items()}}
    if e_sums:
        record["lora_E_abs_mean"] = {k: total / count for k, (total, count) in e_sums.items()}
    return record


def orthogonal_regulariser(model, adapter: str) -> float:
    """R as PEFT adds it to the loss (AdaLoRA's eq. 4, the value its logs show); 0 for adapters
    without it (LoRA)."""
    return regulariser_scalars(model, adapter).get("orth_regu_loss", 0.0)


class Diagnostics(TrainerCallback):
    """Writes diagnostics.jsonl every ``logging_steps`` optimizer steps (main process only).

    What it measures is read from the PEFT model itself (AdaLoRA's regulariser weight,
    allocator and schedule where they exist), so it serves any LoRA-style method.
    """

    def __init__(self, path: Path, model):
        self.path = path
        self.model = model
        self.adapter = model.active_adapter
        config = model.peft_config[self.adapter]
        self.orth_reg_weight = getattr(config, "orth_reg_weight", None)
        self.allocator = getattr(model.base_model, "rankallocator", None)
        # The steps whose importance averages matter: where pruning starts, and before the final mask.
        self.score_steps = set()
        if self.allocator is not None:
            self.score_steps = importance_steps(config)

    def _write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step == 0:
            self._write({"step": 0, **self._measure()})

    def on_optimizer_step(self, args, state, control, **kwargs):
        # Added after the method's callbacks: the averages include this step's sensitivity.
        if state.is_world_process_zero and self.allocator is not None and state.global_step in self.score_steps:
            self._write({"step": state.global_step + 1, "importance": self._score_quantiles()})

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step % max(1, args.logging_steps) == 0:
            self._write({"step": state.global_step, **self._measure()})

    def _measure(self) -> dict:
        record = update_norms(self.model, self.adapter)
        if self.orth_reg_weight is not None:
            value = orthogonal_regulariser(self.model, self.adapter)
            record.update(orth_reg=value, orth_reg_weighted=self.orth_reg_weight * value)
        return record

    def _score_quantiles(self) -> dict:
        """Quantiles of the triplet scores (eq. 11) by module kind, from the allocator's averages."""
        by_kind = {}
        for key, triplet in triplet_scores(self.allocator).items():
            place = locate(key)
            by_kind.setdefault(place[1] if place else key, []).append(triplet.float())
        quantiles = torch.tensor(QUANTILES)
        return {kind: torch.quantile(torch.cat(parts), quantiles).tolist() for kind, parts in by_kind.items()}
