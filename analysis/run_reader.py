"""Reading run directories: the only thing the analysis scripts know about training.

The format is the contract in the README (config.json, metrics.json,
history.jsonl, ranks.jsonl, predictions.tsv, adapter/); nothing here imports
the training code, so these scripts work on runs made anywhere.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from run_files import (DIAGNOSTICS_RECORD, HISTORY_RECORD, RANK_RECORD, SUMMARY_RECORD, AnalysisError, Damaged,
                       JsonLines, diagnostics_record, history_record, rank_record, read_metrics, summary_record)
from run_files import Unreadable, read_config, read_jsonl, read_object, text
from run_format import migrate_metrics

# Shorter axis labels for three of the paper's module names (any other name is shown as it is).
KIND_LABELS = {"attention.output": "attn out", "intermediate": "ffn in", "output": "ffn out",
               **{f"{prefix}.{name}": f"cross {name}" for prefix, names in
                  (("encoder_attn", ("q_proj", "k_proj", "v_proj", "out_proj")), ("EncDecAttention", "qkvo"))
                  for name in names}}


# Methods whose ranks are set at the start and never change: their runs need no ranks.jsonl.
FOUR_BIT = {"qlora", "qadalora", "qdora", "qrslora"}  # the methods on a 4-bit base
# A GPU run's precision record, where it took the default, and the 4-bit compute dtype that default gave
GPU_COMPUTE_DTYPES = {"default: the GPU computes in bf16": "bfloat16",
                      "default: the GPU cannot compute in bf16": "float16"}
FIXED_RANKS = {"lora", "qlora", "dora", "qdora", "pissa", "rslora", "qrslora", "none"}  # EVA writes its allocation


def _without_none(value):
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


def layer_order(label: str) -> tuple[int, int]:
    """Sort key of a ranks.jsonl layer label ("3", or "encoder.3" / "decoder.3"): encoder first."""
    stack, _, index = label.rpartition(".")
    return (1 if stack == "decoder" else 0), int(index)


def flatten(document: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in document.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass
class Run:
    path: Path
    config: dict = field(default_factory=dict)
    metrics: dict | None = None  # None: the run has not finished
    problem: str | None = None  # why the run cannot be read in full (a damaged config.json or metrics.json)
    damage: Damaged | Unreadable | None = None  # a damaged or unreadable metrics.json, as a tool reports it

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    def require_finished(self) -> Run:
        """The run itself, or one line saying it has not finished or its metrics.json is damaged."""
        if self.damage:
            raise self.damage
        if not self.finished:
            raise AnalysisError(f"{self.path} is not a finished run (no metrics.json)")
        return self

    def metric(self, key: str) -> float | None:
        """metrics.json's number for ``key`` (None: undefined, e.g. a correlation over one class); a
        finished run's metrics.json without it, or with something else there, is damaged."""
        value = self.require_finished().metrics.get(key, "missing")
        if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        raise Damaged(self.path / "metrics.json", f"{key} is not a number" if key in self.metrics else f"no {key}")

    @property
    def synthetic(self) -> bool:
        return bool(self.config.get("synthetic_data"))

    @property
    def task(self) -> str:
        return self.config.get("task", "?")

    @property
    def method(self) -> str:
        return self.config.get("method", "?")

    @property
    def budget(self) -> str:
        return self.config.get("budget", "?")

    @property
    def seed(self):
        return self.config.get("arguments", {}).get("training", {}).get("seed")

    @property
    def setting(self) -> str:
        """A short hash of ``setting_fields``: runs with the same one are seeds of one setting."""
        return hashlib.sha1(json.dumps(self.setting_fields, sort_keys=True, default=str).encode()).hexdigest()[:8]

    @property
    def group(self) -> tuple[str, str, str, str]:
        """(task, method, budget, setting): the runs that share it are seeds of one setting."""
        return self.task, self.method, self.budget, self.setting

    @property
    def setting_fields(self) -> dict:
        """What makes runs comparable as seeds of one setting: every choice but the seed.

        The adapter counts as planned (its resolved hyperparameters), not as typed: --lora_r 8
        and --budget large are one setting. The budget itself is in the run's label. Runs
        written by earlier versions of the project compare as they would have been written
        today (``migrate_config``, applied when the run is read), so that seeds run months apart
        stay one setting.
        """
        arguments = self.config.get("arguments", {})
        training = arguments.get("training", {})
        return _without_none({
            "recipe": self.recipe,
            "model": self.config.get("model"),
            "train_examples": self.config.get("train_examples"),
            "dev_examples": self.config.get("dev_examples"),
            # Derived entries (the budget label's rank, a log line) add nothing to the setting.
            "adapter": {k: v for k, v in (self.config.get("adapter") or {}).items()
                        if k not in ("budget_rank", "schedule_note")},
            "model_arguments": self.model_arguments,
            "training": {k: training.get(k) for k in (
                "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                "gradient_accumulation_steps", "weight_decay", "warmup_steps", "lr_scheduler_type")},
            # bf16 autocast sets runs apart (every config.json records the Trainer's bf16 flag).
            "bf16_autocast": bool(training.get("bf16")),
            # Summarization: how summaries were generated (beams, lengths, the prompt) sets runs apart too.
            **({"generation": {k: v for k, v in self.config["task_settings"].items() if k != "evaluate_only"}}
               if self.config.get("task_settings") else {}),
        })

    @property
    def model_arguments(self):
        """config.json's model flags; a 4-bit run's compute dtype as it ran. Runs record it resolved; before,
        an unset one was written unset: float32 on the CPU; on a GPU bf16 where it computes in bf16, else fp16,
        which the precision record says where the default bf16 autocast was taken."""
        model = self.config.get("arguments", {}).get("model")
        if not isinstance(model, dict) or model.get("bnb_4bit_compute_dtype") is not None or self.method not in FOUR_BIT:
            return model
        device = (self.config.get("environment") or {}).get("device") or {}
        precision = self.config.get("precision")
        chosen_by = precision.get("chosen_by") if isinstance(precision, dict) else None
        if isinstance(device, dict) and device.get("type") == "cpu":
            dtype = "float32"
        else:
            dtype = GPU_COMPUTE_DTYPES.get(chosen_by) if isinstance(chosen_by, str) else None
        return {**model, "bnb_4bit_compute_dtype": dtype} if dtype else model

    @property
    def recipe(self) -> str:
        """Whose defaults the run took: paper (Table 8) or official (the authors' scripts)."""
        return self.config.get("recipe", "paper")  # runs made before recipes existed took the paper's

    @property
    def shared_fields(self) -> dict:
        """What two methods' runs must share to be compared: the recipe and every choice of
        ``setting_fields`` outside the adapter (model, data, training arguments)."""
        shared = {k: v for k, v in self.setting_fields.items() if k != "adapter"}
        if isinstance(shared.get("model_arguments"), dict):  # a 4-bit base's compute dtype is the method's own
            shared["model_arguments"] = {k: v for k, v in shared["model_arguments"].items()
                                         if k != "bnb_4bit_compute_dtype"}
        return {"recipe": self.recipe, **shared}

    def ranks(self) -> JsonLines:
        path = self.path / "ranks.jsonl"
        if not path.is_file() and self.method in FIXED_RANKS:
            raise AnalysisError(
                f"{self.path} has no ranks.jsonl: a {self.method} run has fixed ranks, so there is nothing to draw "
                "(rank heatmaps need a run whose ranks are allocated: AdaLoRA, SoRA, EVA, IncreLoRA or plateau)"
            )
        if not path.is_file():
            raise AnalysisError(f"{self.path} has no ranks.jsonl, which {self.method} runs write as they allocate "
                                "their ranks: copy it with the run's other files (the run may have been copied without it)")
        ranks = read_jsonl(path, rank_record, RANK_RECORD)
        if not ranks.records:
            raise AnalysisError(f"{path} holds no complete record: the run stopped before its first allocation")
        return ranks

    def history(self) -> JsonLines:
        path = self.path / "history.jsonl"
        return read_jsonl(path, history_record, HISTORY_RECORD) if path.is_file() else JsonLines([])

    def diagnostics(self) -> JsonLines:
        path = self.path / "diagnostics.jsonl"
        if not path.is_file():
            raise AnalysisError(f"{self.path} has no diagnostics.jsonl: train with --diagnostics to record it")
        diagnostics = read_jsonl(path, diagnostics_record, DIAGNOSTICS_RECORD)
        if not any("update_norm" in record for record in diagnostics.records):
            raise AnalysisError(f"{path} holds no update-norm record: the run stopped before its first diagnostics "
                                "step, or the file is damaged")
        return diagnostics

    def predictions(self) -> dict[tuple[str, int], tuple]:
        """(split, index) -> (label, prediction), from predictions.tsv; for summarization
        (predictions.jsonl), (split, index) -> (article id, the row with its ROUGE scores)."""
        if (self.path / "predictions.jsonl").is_file():
            return {(row["split"], row["index"]): (row["id"], row)
                    for row in read_jsonl(self.path / "predictions.jsonl", summary_record, SUMMARY_RECORD).records
                    if "split" in row}
        path = self.path / "predictions.tsv"
        if not path.is_file():
            raise AnalysisError(f"{self.path} has no predictions.tsv (nor predictions.jsonl): copy it with the run's "
                                "other files, or leave the run out")
        rows = {}
        lines = [line for line in text(path).splitlines() if not line.startswith("#")]
        for number, line in enumerate(lines[1:], start=2):
            fields = line.split("\t")
            if len(fields) != 4 or not (fields[1].isascii() and fields[1].isdigit()):
                raise AnalysisError(f"{path}: line {number} (after comments) is not split, index, label, prediction: "
                                    "the file is damaged")
            if (fields[0], int(fields[1])) in rows:
                raise AnalysisError(f"{path}: line {number} (after comments) repeats {fields[0]} example {fields[1]}: "
                                    "the file is damaged")
            rows[(fields[0], int(fields[1]))] = (fields[2], fields[3])
        if not rows:
            raise AnalysisError(f"{path} holds no predictions: the file is damaged")
        return rows


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise AnalysisError(
            f"{path} is not a run directory (no config.json): give the --output_dir of a training run"
        )
    run = Run(path, config=read_config(path))
    if (path / "metrics.json").is_file():
        try:
            run.metrics = migrate_metrics(read_metrics(path / "metrics.json"), run.config)
        except (Damaged, Unreadable) as damage:
            run.problem, run.damage = damage.short, damage
    return run


def _run_in(config: Path, root: Path) -> Run | None:
    """The run whose config.json is ``config``, one that cannot be read with its ``problem``, or
    None where ``config`` is another kind of config.json."""
    inside = config.relative_to(root).parts[:-1]
    if any(part in ("checkpoints", "adapter", "merged", ".replaced") for part in inside):
        return None  # a checkpoint, a saved adapter, a merged model, a run being replaced (run/replaced.py)
    try:
        document = read_object(config)
    except (Damaged, Unreadable) as damage:
        return Run(config.parent, problem=damage.short)
    if not {"task", "method"} & document.keys():
        return None  # a model's config.json (a run's names its task and method)
    try:
        return load_run(config.parent)
    except (Damaged, Unreadable) as damage:
        return Run(config.parent, problem=damage.short)
    except AnalysisError as error:
        return Run(config.parent, problem=str(error))


def find_runs(root: str | Path) -> list[Run]:
    """Every run directory below ``root`` (``root`` itself may be one)."""
    root = Path(root)
    if not root.is_dir():
        raise AnalysisError(f"{root} is not a directory: give the folder that holds your runs")
    runs = [run for run in (_run_in(c, root) for c in sorted(root.rglob("config.json"))) if run is not None]
    if not runs:
        raise AnalysisError(f"no run directories (folders with config.json) below {root}")
    return runs


def one_task(runs: list[Run]) -> None:
    """Refuse runs of different tasks, or synthetic-data (--demo) runs beside real-data ones: a tool
    that sets runs against each other compares like with like."""
    first = runs[0]
    for run in runs[1:]:
        if run.task != first.task:
            raise AnalysisError(f"{first.path} is a {first.task} run and {run.path} a {run.task} run: runs of "
                                "different tasks cannot be compared; give runs of one task")
        if run.synthetic != first.synthetic:
            demo, real = (run, first) if run.synthetic else (first, run)
            raise AnalysisError(f"{demo.path} trained on synthetic demo data (--demo), {real.path} on real data: "
                                "their numbers cannot be compared; give real-data runs only (or demo runs only)")


# GLUE's headline metric per task and MNLI's two dev sets, for run directories written
# before config.json recorded "task_metrics" and "dev_splits".
_HEADLINE = {"cola": "matthews_correlation", "mrpc": "f1", "stsb": "pearson"}
_SPLITS = {"mnli": ["matched", "mismatched"]}


def task_metric(run: Run) -> str:
    metrics = run.config.get("task_metrics")
    return metrics[0] if metrics else _HEADLINE.get(run.task, "accuracy")


def dev_splits(run: Run) -> list[str]:
    return run.config.get("dev_splits") or _SPLITS.get(run.task, ["validation"])


def metric_keys(run: Run) -> list[str]:
    """The metrics.json keys of the task's headline metric, one per dev split (MNLI: two)."""
    metric, splits = task_metric(run), dev_splits(run)
    return [f"eval_{metric}"] if len(splits) == 1 else [f"eval_{split}_{metric}" for split in splits]
