"""Where a run's time goes, for metrics.json: the median optimizer step, measured from the end of
one step to the end of the next (data loading, forward, backward, optimizer and the methods'
callbacks), leaving out the steps that an evaluation or a checkpoint interrupted."""

from __future__ import annotations

import statistics
import time

from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    def __init__(self):
        self.seconds: list[float] = []
        self._last: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = None  # the first step also pays for warming up: not counted

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._last is not None:
            self.seconds.append(now - self._last)
        self._last = now

    def on_evaluate(self, args, state, control, **kwargs):
        self._last = None

    def on_save(self, args, state, control, **kwargs):
        self._last = None

    def report(self) -> dict:
        return {"median_step_seconds": round(statistics.median(self.seconds), 5) if self.seconds else None,
                "timed_steps": len(self.seconds)}
