"""What the pipeline asks of a task: the seam a task family (GLUE, summarization, ...) implements.

A task knows its data (where it comes from, how it is tokenised and batched),
its model head, its metrics and what its predictions file holds; the pipeline
knows none of that, only this interface.
"""

from __future__ import annotations

from typing import Any, Protocol

from peft import TaskType


class Task(Protocol):
    name: str  # the name used on the command line and in run directories
    family: str  # e.g. "GLUE": what demo data stand in for, and where a task's hyperparameters come from
    metrics: tuple[str, ...]  # the first one is the headline metric
    dev_splits: dict[str, str]  # the evaluation splits, by name
    recipes: dict  # every published set of hyperparameters (``--recipe``), by name: paper first
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

    def full_run_steps(self, recipe) -> int:
        """Optimizer steps of a full-size run under ``recipe``."""

    def load_data(self, data_dir: str | None, demo: bool, max_train_samples: int | None,
                  max_eval_samples: int | None) -> Any:
        """An object with ``train``, ``dev`` (split name -> dataset), ``source`` and ``synthetic``."""

    def load_model(self, name_or_path: str | None, load_in_4bit: bool, compute_dtype: str | None,
                   classifier_dropout: float | None) -> tuple:
        """(tokenizer, model, the model's name for config.json)."""

    def head_modules(self, model) -> list[str]:
        """Modules trained in full beside the adapters (and never quantised)."""

    def tokenize(self, data, tokenizer, max_seq_length: int) -> Any: ...

    def collator(self, tokenizer): ...

    def trainer_metrics(self):
        """A ``compute_metrics`` function for the Trainer's evaluations during training."""

    def evaluate(self, trainer, dev: dict) -> tuple[dict, list]:
        """Final dev metrics (metrics.json) and one row per dev example for the predictions file."""

    def predictions_file(self, rows: list, note: str | None) -> tuple[str, str]:
        """(file name, text) of the run's dev predictions; ``note`` heads a demo run's file."""
