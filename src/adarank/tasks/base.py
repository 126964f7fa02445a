"""What the pipeline asks of a task: the seam a task family (GLUE, summarization, ...) implements,
and what every family shares: its data's shape, its recipes, the subset draw.

A task knows its data (where it comes from, how it is tokenised and batched),
its model head, its metrics and what its predictions file holds; the pipeline
knows none of that, only this interface. This module imports no family.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, NamedTuple, Protocol

import datasets
from peft import TaskType

from adarank import cache
from adarank.errors import UsageError

PAPER_BATCH_SIZE = 32  # the global batch every published recipe was written for
SUBSET_SEED = 0  # --max_train_samples draws the same subset whatever the training seed


@dataclass(frozen=True)
class Recipe:
    """One published set of hyperparameters for a task, at a global batch of ``PAPER_BATCH_SIZE``
    (each family's table says whose: GLUE, ``tasks/glue/spec.py``)."""

    learning_rate: float
    epochs: int
    orth_reg_weight: float  # gamma, the orthogonal regulariser's weight (eq. 4)
    tinit: int  # warm-up steps before pruning starts (section 3.3)
    delta_t: int  # steps between two budget allocations
    tfinal: int  # final steps trained at the target budget
    lora_alpha: float = 16.0
    warmup: float = 0.06  # below 1: a fraction of all steps; else a number of steps
    weight_decay: float = 0.01
    max_seq_length: int = 128
    classifier_dropout: float | None = None  # None: the model's own
    init_r: int | None = None  # AdaLoRA's ranks for the small budget; None: the budget rule
    target_r: int | None = None


@dataclass
class TaskData:
    """A task's data, whatever the family: one ``datasets.Dataset`` per split."""

    train: datasets.Dataset
    dev: dict[str, datasets.Dataset]  # split name -> evaluation split (MNLI: matched, mismatched)
    source: str  # where the data came from, for config.json
    synthetic: bool = False
    tokenized_cache: dict[str, str] | None = None  # split -> read / written / empty / off (adarank/cache.py)


def draw_subsets(data: TaskData, max_train: int | None, max_eval: int | None, unit: str,
                 needs_train: bool = True) -> TaskData:
    """--max_train_samples (a fixed random subset) and --max_eval_samples (the first rows of each
    evaluation split); then refuse an empty split. ``unit`` names a row in the message (examples,
    records); ``needs_train`` False: an empty training split is fine (nothing is trained)."""
    if max_train is not None and max_train < len(data.train):
        data.train = data.train.shuffle(seed=SUBSET_SEED).select(range(max_train))
    if max_eval is not None:
        data.dev = {k: d.select(range(min(max_eval, len(d)))) for k, d in data.dev.items()}
    for name, split in [*([("train", data.train)] if needs_train else []), *data.dev.items()]:
        if len(split) == 0:
            raise UsageError(f"the {name} split of {data.source} is empty: give a file with {unit} "
                             "(or a positive --max_train_samples / --max_eval_samples)")
    return data


def tokenize_splits(data: TaskData, encode: Callable, tokenizer, settings: dict,
                    keep: tuple[str, ...] = ()) -> TaskData:
    """Every split through ``encode`` (batched), read from the token cache where an earlier run wrote it
    (``settings``: what ``encode`` closes over); of the raw columns only ``keep`` stay beside the tokens."""
    statuses = {}

    def apply(name: str, split: datasets.Dataset) -> datasets.Dataset:
        rows, statuses[name] = cache.tokenized(split, encode, tokenizer, settings,
                                               remove_columns=[c for c in split.column_names if c not in keep])
        return rows

    return replace(data, train=apply("train", data.train), dev={k: apply(k, v) for k, v in data.dev.items()},
                   tokenized_cache=statuses)


class LoadedModel(NamedTuple):
    """What ``Task.load_model`` gives: the model, its tokenizer, its name for config.json, and the
    task bound to this model (what tokenisation, batching and evaluation need to know of it)."""

    tokenizer: Any
    model: Any
    name: str
    task: Task


class Task(Protocol):
    name: str  # the name used on the command line and in run directories
    family: str  # e.g. "GLUE": what demo data stand in for, and where a task's hyperparameters come from
    metrics: tuple[str, ...]  # the first one is the headline metric
    dev_splits: dict[str, str]  # the evaluation splits, by name
    recipes: dict[str, Recipe]  # every published set of hyperparameters (``--recipe``), by name: paper first
    arguments: type | None  # the family's own flags, a dataclass parsed beside the others
    allows_no_adapter: bool  # whether --method none (the base model, untrained) makes sense
    # Whether bf16 autocast on the CPU is measured as accurate as fp32 for this family (BENCHMARKS.md):
    # then it is the default on CPUs with bf16 units.
    cpu_bf16_measured: bool

    def configure(self, options, evaluate_only: bool) -> Task:
        """The task for one run: its family's parsed flags (``arguments``) applied; ``evaluate_only``
        when nothing is trained (--method none)."""

    def training_defaults(self, demo: bool) -> dict:
        """The family's own defaults of TrainingArguments (and ``max_seq_length``)."""

    def peft_task_type(self, model) -> TaskType:
        """PEFT's name for the model's head."""

    def describe(self) -> dict | None:
        """What the family's options resolved to, for config.json (None: nothing to add)."""

    def full_run_steps(self, recipe: Recipe) -> int:
        """Optimizer steps of a full-size run under ``recipe``."""

    def load_data(self, data_dir: str | None, demo: bool, max_train_samples: int | None,
                  max_eval_samples: int | None) -> TaskData:
        """The run's data: from ``data_dir`` (--data_dir) where the family reads a folder (a family that
        names its files with its own flags refuses it, naming them), the family's other sources, or
        demo data; subsets drawn with ``draw_subsets``."""

    def load_model(self, name_or_path: str | None, load_in_4bit: bool, compute_dtype: str | None,
                   classifier_dropout: float | None) -> LoadedModel:
        """The model, its tokenizer and name, and the task bound to it: the rest of the run asks that one."""

    def head_modules(self, model) -> list[str]:
        """Modules trained in full beside the adapters (and never quantised)."""

    def tokenize(self, data: TaskData, tokenizer, max_seq_length: int) -> TaskData: ...

    def collator(self, tokenizer): ...

    def trainer_metrics(self):
        """A ``compute_metrics`` function for the Trainer's evaluations during training."""

    def evaluate(self, trainer, dev: dict) -> tuple[dict, list]:
        """Final dev metrics (metrics.json) and one row per dev example for the predictions file."""

    def predictions_file(self, rows: list, note: str | None) -> tuple[str, str]:
        """(file name, text) of the run's dev predictions; ``note`` heads a demo run's file."""
