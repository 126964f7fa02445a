"""Batches of the training set as the model takes them, for a method that initialises its adapters
from data before training (EVA): the columns the model's forward accepts, through the task's
collator, in dataset order."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator

from torch.utils.data import DataLoader

LABEL_COLUMNS = ("label", "labels", "label_ids")


def model_columns(model) -> set[str]:
    """The arguments of the model's forward, and the label columns the Trainer passes as labels."""
    return set(inspect.signature(model.forward).parameters) | set(LABEL_COLUMNS)


def training_batches(dataset, model, collator, batch_size: int) -> Callable[[], Iterator[dict]]:
    """A function that gives the batches of ``dataset`` (a tokenized split) one pass over it at a time."""
    keep = [column for column in dataset.column_names if column in model_columns(model)]

    def batches() -> Iterator[dict]:
        rows = dataset.select_columns(keep)
        return iter(DataLoader(rows, batch_size=batch_size, collate_fn=collator, shuffle=False))

    return batches
