"""How many optimizer steps a run takes: the Trainer's own arithmetic, computed before it starts
(AdaLoRA's schedule and the plateau method's evaluation interval are planned from it)."""

from __future__ import annotations

import math


def count_optimizer_steps(
    train_examples: int,
    per_device_batch_size: int,  # TrainingArguments.train_batch_size: x GPUs under DataParallel
    world_size: int,
    gradient_accumulation_steps: int,
    num_train_epochs: float,
    max_steps: int,
    drop_last: bool = False,
) -> int:
    """Optimizer steps the Trainer will take (its own arithmetic, checked at train begin)."""
    if max_steps > 0:
        return max_steps
    global_batch = per_device_batch_size * world_size
    batches = train_examples // global_batch if drop_last else math.ceil(train_examples / global_batch)
    per_epoch = max(math.ceil(batches / gradient_accumulation_steps), 1)
    return math.ceil(num_train_epochs * per_epoch)
