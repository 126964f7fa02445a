"""GLUE: the facts of each task, one row a task, and both of its recipes.

``paper``: the AdaLoRA paper's hyperparameters (Zhang et al., ICLR 2023, Table 8: DeBERTaV3-base,
batch size 32) with this project's conventions for what the table leaves out. ``official``: the
authors' released scripts (QingruZhang/AdaLoRA, NLU/scripts/run_debertav3_<task>.sh), which differ
from Table 8 in places and train a small budget of init rank 2-3 pruned to an average of 1.
``paper_train_size`` is the size of the full GLUE training split; with the paper's batch size and
epochs it gives the number of optimizer steps the paper's schedule (tinit, tfinal) was written
for, which is what lets a shorter run scale that schedule to itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import datasets

from adarank.tasks.base import PAPER_BATCH_SIZE, Recipe


@dataclass(frozen=True)
class GlueSpec:
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
    # What the authors' scripts change of it (their schedule and epochs are the paper's): see ``official``.
    official_changes: dict
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
    def official(self) -> Recipe:
        """The authors' scripts, which also train AdaLoRA's small budget down to an average rank of 1."""
        return replace(self.paper, target_r=1, **self.official_changes)

    @property
    def recipes(self) -> dict[str, Recipe]:
        return {"paper": self.paper, "official": self.official}

    @property
    def features(self) -> datasets.Features:
        """The columns every source gives: ``text_a`` (and ``text_b``), ``label``, ``idx``."""
        label = datasets.Value("float32") if self.is_regression else datasets.Value("int64")
        features = {"text_a": datasets.Value("string")}
        if self.is_pair:
            features["text_b"] = datasets.Value("string")
        features.update(label=label, idx=datasets.Value("int64"))
        return datasets.Features(features)


_ONE_DEV = {"validation": "dev.tsv"}
_ONE_HUB_DEV = {"validation": "validation"}
_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

GLUE_SPECS = (
    GlueSpec(
        name="cola", hub_config="cola", data_folder="CoLA",
        text_columns=("sentence",), hub_text_columns=("sentence",), label_column="label",
        labels=_BINARY, metrics=("matthews_correlation", "accuracy"),
        dev_splits=_ONE_DEV, hub_dev_splits=_ONE_HUB_DEV, paper_train_size=8551,
        paper=Recipe(learning_rate=5e-4, epochs=25, orth_reg_weight=0.5, tinit=800, delta_t=10, tfinal=3500),
        official_changes=dict(learning_rate=8e-4, orth_reg_weight=0.1, lora_alpha=32, warmup=100,
                              weight_decay=0.0, max_seq_length=64, classifier_dropout=0.10, init_r=3),
        # source, label, original mark, sentence
        headerless_columns=(3,), headerless_label=1, headerless_width=4,
    ),
    GlueSpec(
        name="sst2", hub_config="sst2", data_folder="SST-2",
        text_columns=("sentence",), hub_text_columns=("sentence",), label_column="label",
        labels=_BINARY, metrics=("accuracy",),
        dev_splits=_ONE_DEV, hub_dev_splits=_ONE_HUB_DEV, paper_train_size=67349,
        paper=Recipe(learning_rate=8e-4, epochs=24, orth_reg_weight=0.1, tinit=6000, delta_t=100, tfinal=22000),
        official_changes=dict(learning_rate=8e-4, orth_reg_weight=0.1, lora_alpha=16, warmup=1000,
                              weight_decay=0.01, max_seq_length=128, classifier_dropout=0.0, init_r=2),
    ),
    GlueSpec(
        name="mrpc", hub_config="mrpc", data_folder="MRPC",
        text_columns=("#1 String", "#2 String"), hub_text_columns=("sentence1", "sentence2"),
        label_column="Quality", labels=_BINARY, metrics=("f1", "accuracy"),
        dev_splits=_ONE_DEV, hub_dev_splits=_ONE_HUB_DEV, paper_train_size=3668,
        paper=Recipe(learning_rate=1e-3, epochs=30, orth_reg_weight=0.1, tinit=600, delta_t=1, tfinal=1800),
        official_changes=dict(learning_rate=1e-3, orth_reg_weight=0.1, lora_alpha=32, warmup=0.1,
                              weight_decay=0.01, max_seq_length=320, classifier_dropout=0.0, init_r=2),
    ),
    GlueSpec(
        name="qqp", hub_config="qqp", data_folder="QQP",
        text_columns=("question1", "question2"), hub_text_columns=("question1", "question2"),
        label_column="is_duplicate", labels=_BINARY, metrics=("accuracy", "f1"),
        dev_splits=_ONE_DEV, hub_dev_splits=_ONE_HUB_DEV, paper_train_size=363846,
        paper=Recipe(learning_rate=5e-4, epochs=5, orth_reg_weight=0.1, tinit=8000, delta_t=100, tfinal=25000),
        official_changes=dict(learning_rate=8e-4, orth_reg_weight=0.1, lora_alpha=16, warmup=2000,
                              weight_decay=0.01, max_seq_length=320, classifier_dropout=0.15, init_r=2),
    ),
    GlueSpec(
        name="stsb", hub_config="stsb", data_folder="STS-B",
        text_columns=("sentence1", "sentence2"), hub_text_columns=("sentence1", "sentence2"),
        label_column="score", labels=None, metrics=("pearson", "spearman"),
        dev_splits=_ONE_DEV, hub_dev_splits=_ONE_HUB_DEV, paper_train_size=5749,
        paper=Recipe(learning_rate=2.2e-3, epochs=25, orth_reg_weight=0.1, tinit=800, delta_t=10, tfinal=2000),
        official_changes=dict(learning_rate=2.2e-3, orth_reg_weight=0.3, lora_alpha=32, warmup=100,
                              weight_decay=0.1, max_seq_length=128, classifier_dropout=0.2, init_r=2),
    ),
    GlueSpec(
        name="mnli", hub_config="mnli", data_folder="MNLI",
        text_columns=("sentence1", "sentence2"), hub_text_columns=("premise", "hypothesis"),
        label_column="gold_label", labels=("entailment", "neutral", "contradiction"), metrics=("accuracy",),
        dev_splits={"matched": "dev_matched.tsv", "mismatched": "dev_mismatched.tsv"},
        hub_dev_splits={"matched": "validation_matched", "mismatched": "validation_mismatched"},
        paper_train_size=392702,
        paper=Recipe(learning_rate=5e-4, epochs=7, orth_reg_weight=0.1, tinit=8000, delta_t=100, tfinal=50000),
        official_changes=dict(learning_rate=5e-4, orth_reg_weight=0.1, lora_alpha=16, warmup=1000,
                              weight_decay=0.0, max_seq_length=256, classifier_dropout=0.15, init_r=3),
    ),
    GlueSpec(
        name="qnli", hub_config="qnli", data_folder="QNLI",
        text_columns=("question", "sentence"), hub_text_columns=("question", "sentence"),
        label_column="label", labels=_NLI2, metrics=("accuracy",),
        dev_splits=_ONE_DEV, hub_dev_splits=_ONE_HUB_DEV, paper_train_size=104743,
        paper=Recipe(learning_rate=1.2e-3, epochs=5, orth_reg_weight=0.1, tinit=2000, delta_t=100, tfinal=8000),
        official_changes=dict(learning_rate=5e-4, orth_reg_weight=0.1, lora_alpha=32, warmup=500,
                              weight_decay=0.01, max_seq_length=512, classifier_dropout=0.1, init_r=2),
    ),
    GlueSpec(
        name="rte", hub_config="rte", data_folder="RTE",
        text_columns=("sentence1", "sentence2"), hub_text_columns=("sentence1", "sentence2"),
        label_column="label", labels=_NLI2, metrics=("accuracy",),
        dev_splits=_ONE_DEV, hub_dev_splits=_ONE_HUB_DEV, paper_train_size=2490,
        paper=Recipe(learning_rate=1.2e-3, epochs=50, orth_reg_weight=0.3, tinit=600, delta_t=1, tfinal=1800),
        official_changes=dict(learning_rate=1.2e-3, orth_reg_weight=0.3, lora_alpha=32, warmup=200,
                              weight_decay=0.01, max_seq_length=320, classifier_dropout=0.20, init_r=2),
    ),
)
