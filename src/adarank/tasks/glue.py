"""GLUE: the facts of each task, in one table, and the task family's side of the pipeline.

Hyperparameters are the AdaLoRA paper's (Zhang et al., ICLR 2023, Table 8:
DeBERTaV3-base, batch size 32). ``paper_train_size`` is the size of the full
GLUE training split; with the paper's batch size and epochs it gives the
number of optimizer steps the paper's schedule (tinit, tfinal) was written
for, which is what lets a shorter run scale that schedule to itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from peft import TaskType
from transformers import DataCollatorWithPadding

from adarank import data, metrics, models, modules

PAPER_BATCH_SIZE = 32


@dataclass(frozen=True)
class Recipe:
    """One published set of hyperparameters for a task (DeBERTaV3-base, batch size 32).

    ``paper``: the AdaLoRA paper's Table 8 with this project's conventions for what the
    table leaves out. ``official``: the authors' released scripts
    (QingruZhang/AdaLoRA, NLU/scripts/run_debertav3_<task>.sh), which differ from
    Table 8 in places and train a small budget of init rank 2-3 pruned to an average of 1.
    """

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


def _official(lr, epochs, gamma, tinit, delta_t, tfinal, alpha, warmup, weight_decay, max_len, dropout, init_r):
    return Recipe(lr, epochs, gamma, tinit, delta_t, tfinal, lora_alpha=alpha, warmup=warmup,
                  weight_decay=weight_decay, max_seq_length=max_len, classifier_dropout=dropout,
                  init_r=init_r, target_r=1)


@dataclass(frozen=True)
class GlueTask:
    name: str  # the name used on the command line and in run directories
    hub_config: str  # the config name of nyu-mll/glue on the Hugging Face hub
    data_folder: str  # the folder of the original GLUE download
    text_columns: tuple[str, ...]  # TSV header names (or hub column names, below)
    hub_text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...] | None  # None: regression (STS-B)
    metrics: tuple[str, ...]  # the first one is the task's headline metric
    dev_splits: dict[str, str]  # split name -> TSV file name
    hub_dev_splits: dict[str, str]  # split name -> hub split name
    paper_train_size: int
    paper: Recipe  # the paper's Table 8
    official: Recipe  # the authors' scripts
    # Files without a header (CoLA): column positions of text and label.
    headerless_columns: tuple[int, ...] | None = None
    headerless_label: int | None = None
    headerless_width: int | None = None

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    @property
    def paper_total_step(self) -> int:
        """Optimizer steps of the paper's full run: the unit of its schedule."""
        return self.full_run_steps(self.paper)

    def full_run_steps(self, recipe: Recipe) -> int:
        """Optimizer steps of a full-size run under ``recipe``: the unit of its AdaLoRA schedule."""
        return math.ceil(self.paper_train_size / PAPER_BATCH_SIZE) * recipe.epochs

    @property
    def recipes(self) -> dict[str, Recipe]:
        return {"paper": self.paper, "official": self.official}

    # --- the task family's side of the pipeline (adarank.tasks.base.Task) ---------------------

    family: ClassVar[str] = "GLUE"
    arguments: ClassVar[type | None] = None
    allows_no_adapter: ClassVar[bool] = False  # the classification head starts untrained
    cpu_bf16_measured: ClassVar[bool] = True  # bf16 vs fp32 on the CPU: SST-2, LoRA and AdaLoRA, 3 seeds

    def configure(self, options, evaluate_only: bool) -> GlueTask:
        return self

    def training_defaults(self, demo: bool) -> dict:
        return {}

    def peft_task_type(self, model) -> TaskType:
        return TaskType.SEQ_CLS

    def describe(self) -> None:
        return None

    def load_data(self, data_dir, demo, max_train_samples, max_eval_samples) -> data.GlueData:
        return data.load_glue(self, data_dir, demo, max_train_samples, max_eval_samples)

    def load_model(self, name_or_path, load_in_4bit=False, compute_dtype=None, classifier_dropout=None):
        return models.load_model(name_or_path, self, load_in_4bit=load_in_4bit, compute_dtype=compute_dtype,
                                 classifier_dropout=classifier_dropout)

    def head_modules(self, model) -> list[str]:
        return modules.head_modules(model)

    def tokenize(self, glue_data, tokenizer, max_seq_length: int) -> data.GlueData:
        return data.tokenize(glue_data, tokenizer, max_seq_length)

    def collator(self, tokenizer):
        return DataCollatorWithPadding(tokenizer)

    def trainer_metrics(self):
        return metrics.trainer_metrics(self)

    def evaluate(self, trainer, dev: dict) -> tuple[dict, list[tuple]]:
        scores, rows = {}, []
        for split, dataset in dev.items():
            prefix = "eval" if len(dev) == 1 else f"eval_{split}"
            # Shortest first, so that each batch pads little; the results go back to dataset order.
            order = np.argsort([len(ids) for ids in dataset["input_ids"]], kind="stable")
            back = np.empty_like(order)
            back[order] = np.arange(len(order))
            output = trainer.predict(dataset.select(order), metric_key_prefix=prefix)
            predicted = metrics.predictions_from_logits(self, output.predictions)[back]
            labels = np.asarray(output.label_ids).reshape(-1)[back]
            found = metrics.glue_metrics(self, predicted, labels)
            scores.update({f"{prefix}_{name}": value for name, value in found.items()})
            scores[f"{prefix}_loss"] = output.metrics.get(f"{prefix}_loss")
            scores[f"{prefix}_examples"] = len(dataset)
            for index, (label, guess) in enumerate(zip(labels, predicted)):
                rows.append((split, index, self._label_text(label), self._label_text(guess)))
        return scores, rows

    def predictions_file(self, rows: list[tuple], note: str | None) -> tuple[str, str]:
        lines = [f"# {note}"] if note else []
        lines.append("split\tindex\tlabel\tprediction")
        lines += ["\t".join(map(str, row)) for row in rows]
        return "predictions.tsv", "\n".join(lines) + "\n"

    def _label_text(self, value) -> str:
        return f"{float(value):.4f}" if self.is_regression else self.labels[int(value)]


_ONE_DEV = {"validation": "dev.tsv"}
_ONE_HUB_DEV = {"validation": "validation"}
_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask(
            name="cola", hub_config="cola", data_folder="CoLA",
            text_columns=("sentence",), hub_text_columns=("sentence",), label_column="label",
            labels=_BINARY, metrics=("matthews_correlation", "accuracy"),
            dev_splits=_ONE_DEV, hub_dev_splits=_ONE_HUB_DEV, paper_train_size=8551,
            paper=Recipe(5e-4, 25, 0.5, 800, 10, 3500),
            official=_official(8e-4, 25, 0.1, 800, 10, 3500, 32, 100, 0.0, 64, 0.10, 3),
            # source, label, original mark, sentence
            headerless_columns=(3,), headerless_label=1, headerless_width=4,
        ),
        GlueTask(
            name="sst2", hub_config="sst2", data_folder="SST-2",
            text_columns=("sentence",), hub_text_columns=("sentence",), label_column="label",
            labels=_BINARY, metrics=("accuracy",),
            dev_splits=_ONE_DEV, hub_dev_splits=_ONE_HUB_DEV, paper_train_size=67349,
            paper=Recipe(8e-4, 24, 0.1, 6000, 100, 22000),
            official=_official(8e-4, 24, 0.1, 6000, 100, 22000, 16, 1000, 0.01, 128, 0.0, 2),
        ),
        GlueTask(
            name="mrpc", hub_config="mrpc", data_folder="MRPC",
            text_columns=("#1 String", "#2 String"), hub_text_columns=("sentence1", "sentence2"),
            label_column="Quality", labels=_BINARY, metrics=("f1", "accuracy"),
            dev_splits=_ONE_DEV, hub_dev_splits=_ONE_HUB_DEV, paper_train_size=3668,
            paper=Recipe(1e-3, 30, 0.1, 600, 1, 1800),
            official=_official(1e-3, 30, 0.1, 600, 1, 1800, 32, 0.1, 0.01, 320, 0.0, 2),
        ),
        GlueTask(
            name="qqp", hub_config="qqp", data_folder="QQP",
            text_columns=("question1", "question2"), hub_text_columns=("question1", "question2"),
            label_column="is_duplicate", labels=_BINARY, metrics=("accuracy", "f1"),
            dev_splits=_ONE_DEV, hub_dev_splits=_ONE_HUB_DEV, paper_train_size=363846,
            paper=Recipe(5e-4, 5, 0.1, 8000, 100, 25000),
            official=_official(8e-4, 5, 0.1, 8000, 100, 25000, 16, 2000, 0.01, 320, 0.15, 2),
        ),
        GlueTask(
            name="stsb", hub_config="stsb", data_folder="STS-B",
            text_columns=("sentence1", "sentence2"), hub_text_columns=("sentence1", "sentence2"),
            label_column="score", labels=None, metrics=("pearson", "spearman"),
            dev_splits=_ONE_DEV, hub_dev_splits=_ONE_HUB_DEV, paper_train_size=5749,
            paper=Recipe(2.2e-3, 25, 0.1, 800, 10, 2000),
            official=_official(2.2e-3, 25, 0.3, 800, 10, 2000, 32, 100, 0.1, 128, 0.2, 2),
        ),
        GlueTask(
            name="mnli", hub_config="mnli", data_folder="MNLI",
            text_columns=("sentence1", "sentence2"), hub_text_columns=("premise", "hypothesis"),
            label_column="gold_label", labels=("entailment", "neutral", "contradiction"),
            metrics=("accuracy",),
            dev_splits={"matched": "dev_matched.tsv", "mismatched": "dev_mismatched.tsv"},
            hub_dev_splits={"matched": "validation_matched", "mismatched": "validation_mismatched"},
            paper_train_size=392702,
            paper=Recipe(5e-4, 7, 0.1, 8000, 100, 50000),
            official=_official(5e-4, 7, 0.1, 8000, 100, 50000, 16, 1000, 0.0, 256, 0.15, 3),
        ),
        GlueTask(
            name="qnli", hub_config="qnli", data_folder="QNLI",
            text_columns=("question", "sentence"), hub_text_columns=("question", "sentence"),
            label_column="label", labels=_NLI2, metrics=("accuracy",),
            dev_splits=_ONE_DEV, hub_dev_splits=_ONE_HUB_DEV, paper_train_size=104743,
            paper=Recipe(1.2e-3, 5, 0.1, 2000, 100, 8000),
            official=_official(5e-4, 5, 0.1, 2000, 100, 8000, 32, 500, 0.01, 512, 0.1, 2),
        ),
        GlueTask(
            name="rte", hub_config="rte", data_folder="RTE",
            text_columns=("sentence1", "sentence2"), hub_text_columns=("sentence1", "sentence2"),
            label_column="label", labels=_NLI2, metrics=("accuracy",),
            dev_splits=_ONE_DEV, hub_dev_splits=_ONE_HUB_DEV, paper_train_size=2490,
            paper=Recipe(1.2e-3, 50, 0.3, 600, 1, 1800),
            official=_official(1.2e-3, 50, 0.3, 600, 1, 1800, 32, 200, 0.01, 320, 0.20, 2),
        ),
    ]
}

