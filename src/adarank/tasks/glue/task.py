"""GLUE's side of the pipeline (``adarank.tasks.base.Task``): each task of ``spec.py`` as a task
the pipeline can run."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
from peft import TaskType
from transformers import DataCollatorWithPadding

from adarank import modules
from adarank.tasks.base import LoadedModel, TaskData
from adarank.tasks.glue import data, metrics
from adarank.tasks.glue import model as classifier
from adarank.tasks.glue.spec import GLUE_SPECS, GlueSpec


@dataclass(frozen=True)
class GlueTask(GlueSpec):
    family: ClassVar[str] = "GLUE"
    arguments: ClassVar[type | None] = None
    allows_no_adapter: ClassVar[bool] = False  # the classification head starts untrained
    cpu_bf16_measured: ClassVar[bool] = True  # bf16 vs fp32 on the CPU: SST-2, LoRA and AdaLoRA, 3 seeds

    @classmethod
    def of(cls, spec: GlueSpec) -> GlueTask:
        return cls(**{f.name: getattr(spec, f.name) for f in fields(spec)})

    def configure(self, options, evaluate_only: bool) -> GlueTask:
        return self

    def training_defaults(self, demo: bool) -> dict:
        return {}

    def peft_task_type(self, model) -> TaskType:
        return TaskType.SEQ_CLS

    def describe(self) -> None:
        return None

    def load_data(self, data_dir, demo, max_train_samples, max_eval_samples) -> TaskData:
        return data.load_glue(self, data_dir, demo, max_train_samples, max_eval_samples)

    def load_model(self, name_or_path, load_in_4bit=False, compute_dtype=None, classifier_dropout=None) -> LoadedModel:
        tokenizer, model, name = classifier.load_model(name_or_path, self, load_in_4bit=load_in_4bit,
                                                       compute_dtype=compute_dtype,
                                                       classifier_dropout=classifier_dropout)
        return LoadedModel(tokenizer, model, name, self)

    def head_modules(self, model) -> list[str]:
        return modules.head_modules(model)

    def tokenize(self, glue_data: TaskData, tokenizer, max_seq_length: int) -> TaskData:
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


GLUE_TASKS: dict[str, GlueTask] = {spec.name: GlueTask.of(spec) for spec in GLUE_SPECS}
