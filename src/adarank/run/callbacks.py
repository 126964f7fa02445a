"""The run's own Trainer callbacks: history.jsonl (every log and evaluation) and the step timer
for metrics.json.

The step timer measures the median optimizer step from the end of one step to the end of the next
(data loading, forward, backward, optimizer and the methods' callbacks), leaving out the steps that
an evaluation or a checkpoint interrupted; and the tokens the model computed on in training
(padding included), from which a step's FLOPs follow."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from transformers import TrainerCallback


class StepHistory(TrainerCallback):
    """Appends every log and evaluation of the Trainer to ``history.jsonl``."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, "epoch": state.epoch, **logs}
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


class StepTimer(TrainerCallback):
    def __init__(self):
        self.seconds: list[float] = []
        self.tokens = 0  # in this process, since training (or its resumption) began
        self._last: float | None = None
        self._hook = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._last = None  # the first step also pays for warming up: not counted
        if model is not None and self._hook is None:
            self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if module.training and ids is not None:
            self.tokens += ids.numel()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._last is not None:
            self.seconds.append(now - self._last)
        self._last = now

    def on_evaluate(self, args, state, control, **kwargs):
        self._last = None

    def on_save(self, args, state, control, **kwargs):
        self._last = None

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def report(self) -> dict:
        return {"median_step_seconds": round(statistics.median(self.seconds), 5) if self.seconds else None,
                "timed_steps": len(self.seconds), "train_tokens": self.tokens}
