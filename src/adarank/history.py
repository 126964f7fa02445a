"""history.jsonl: every log and evaluation of the Trainer, one JSON object a line."""

from __future__ import annotations

import json
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
