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

from run_format import migrate_config

# Shorter axis labels for three of the paper's module names (any other name is shown as it is).
KIND_LABELS = {"attention.output": "attn out", "intermediate": "ffn in", "output": "ffn out",
               **{f"{prefix}.{name}": f"cross {name}" for prefix, names in
                  (("encoder_attn", ("q_proj", "k_proj", "v_proj", "out_proj")), ("EncDecAttention", "qkvo"))
                  for name in names}}


def _without_none(value):
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


def layer_order(label: str) -> tuple[int, int]:
    """Sort key of a ranks.jsonl layer label ("3", or "encoder.3" / "decoder.3"): encoder first."""
    stack, _, index = label.rpartition(".")
    return (1 if stack == "decoder" else 0), int(index)


class AnalysisError(Exception):
    """A problem with the user's input: reported as one line, exit code 2."""


def _setting_parts(runs: list[Run]) -> dict[str, list[str]]:
    """Setting hash -> ["key=value", ...] for each choice in which the settings among ``runs`` differ."""
    fields = {run.setting: flatten(run.setting_fields) for run in runs}
    keys = sorted({k for f in fields.values() for k in f})
    differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in fields.values()}) > 1]
    return {setting: [f"{k.rsplit('.', 1)[-1]}={flat.get(k)}" for k in differing] for setting, flat in fields.items()}


def setting_names(runs: list[Run]) -> dict[str, str]:
    """Setting hash -> the choices that set it apart from the other settings among ``runs``,
    e.g. "growth_init=whitened, grow_where=importance" (the hash where nothing shows)."""
    return {setting: ", ".join(parts) or setting for setting, parts in _setting_parts(runs).items()}


def setting_words(runs: list[Run]) -> dict[tuple, list[str]]:
    """Each setting among ``runs`` (its ``Run.group``) -> the words that name it beside its task,
    method and budget: the recipe where it is not the paper's and, where the method ran at that
    budget in more than one setting under that recipe, what sets this one apart (the recipe's own
    values, learning rate and all, come with its name). Tables and figures name a setting by these
    words alone, never by its hash, so that it reads the same in each."""
    first = {}
    for run in runs:
        first.setdefault(run.group, run)
    words = {}
    for key, run in first.items():
        siblings = [other for k, other in first.items() if k[:3] == key[:3] and other.recipe == run.recipe]
        parts = [] if run.recipe == "paper" else [f"recipe={run.recipe}"]
        if len(siblings) > 1:
            parts += [p for p in _setting_parts(siblings)[run.setting] if not p.startswith("recipe=")]
        words[key] = parts
    return words


def bracketed(name: str, words: list[str]) -> str:
    """``name [word, word]``, or ``name`` alone where no words are needed."""
    return f"{name} [{', '.join(words)}]" if words else name


def setting_labels(runs: list[Run]) -> dict[tuple, str]:
    """Each setting among ``runs`` -> its label in figures, e.g. "cola adalora-small [recipe=official]"."""
    return {key: bracketed(f"{key[0]} {key[1]}-{key[2]}", words) for key, words in setting_words(runs).items()}


def run_labels(runs: list[Run], labels: dict | None = None) -> dict[Path, str]:
    """Run directory -> "<its setting's label>, seed N" (``labels``: by default named among ``runs``)."""
    labels = labels or setting_labels(runs)
    return {run.path: f"{labels[run.group]}, seed {run.seed}" for run in runs}


def flatten(document: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in document.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass
class JsonLines:
    records: list[dict]
    truncated: bool = False  # the last line was cut off (a run stopped mid-write)


def _text(path: Path) -> str:
    """A run file's text; one that is not UTF-8 is damaged (the project writes UTF-8)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AnalysisError(f"{path} is not UTF-8 text: the file is damaged") from None


def read_jsonl(path: Path) -> JsonLines:
    """Every complete record; a last line cut off mid-write is dropped and flagged."""
    lines = _text(path).splitlines()
    records, truncated = [], False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                truncated = True
            else:
                raise AnalysisError(f"{path}:{number} is not a JSON line: the file is damaged") from None
    return JsonLines(records, truncated)


@dataclass
class Run:
    path: Path
    config: dict = field(default_factory=dict)
    metrics: dict | None = None  # None: the run has not finished
    problem: str | None = None  # why the run cannot be read in full (a damaged config.json or metrics.json)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    def require_finished(self) -> Run:
        """The run itself, or one line saying it has not finished."""
        if not self.finished:
            raise AnalysisError(f"{self.path} is not a finished run (no metrics.json)")
        return self

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
            "model_arguments": arguments.get("model"),
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
    def recipe(self) -> str:
        """Whose defaults the run took: paper (Table 8) or official (the authors' scripts)."""
        return self.config.get("recipe", "paper")  # runs made before recipes existed took the paper's

    @property
    def shared_fields(self) -> dict:
        """What two methods' runs must share to be compared: the recipe and every choice of
        ``setting_fields`` outside the adapter (model, data, training arguments)."""
        shared = {k: v for k, v in self.setting_fields.items() if k != "adapter"}
        return {"recipe": self.recipe, **shared}

    def ranks(self) -> JsonLines:
        path = self.path / "ranks.jsonl"
        if not path.is_file():
            raise AnalysisError(
                f"{self.path} has no ranks.jsonl: a {self.method} run has fixed ranks, so there is nothing to draw "
                "(rank heatmaps need an AdaLoRA or rank-growth run)"
            )
        ranks = read_jsonl(path)
        if not ranks.records:
            raise AnalysisError(f"{path} holds no complete record: the run stopped before its first allocation")
        return ranks

    def history(self) -> JsonLines:
        path = self.path / "history.jsonl"
        return read_jsonl(path) if path.is_file() else JsonLines([])

    def diagnostics(self) -> JsonLines:
        path = self.path / "diagnostics.jsonl"
        if not path.is_file():
            raise AnalysisError(f"{self.path} has no diagnostics.jsonl: train with --diagnostics to record it")
        return read_jsonl(path)

    def predictions(self) -> dict[tuple[str, int], tuple]:
        """(split, index) -> (label, prediction), from predictions.tsv; for summarization
        (predictions.jsonl), (split, index) -> (article id, the row with its ROUGE scores)."""
        if (self.path / "predictions.jsonl").is_file():
            return {(row["split"], int(row["index"])): (row["id"], row)
                    for row in read_jsonl(self.path / "predictions.jsonl").records if "split" in row}
        path = self.path / "predictions.tsv"
        rows = {}
        lines = [line for line in _text(path).splitlines() if not line.startswith("#")]
        for number, line in enumerate(lines[1:], start=2):
            fields = line.split("\t")
            if len(fields) != 4 or not fields[1].isdigit():
                raise AnalysisError(f"{path}: line {number} (after comments) is not split, index, label, prediction: "
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
    try:
        config = migrate_config(json.loads((path / "config.json").read_text(encoding="utf-8")))
    except ValueError as error:
        raise AnalysisError(f"{path}: {error}") from None
    run = Run(path, config=config)
    if (path / "metrics.json").is_file():
        try:
            run.metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
        except ValueError as error:
            run.problem = f"metrics.json is damaged ({error})"
    return run


def _run_in(config: Path, root: Path) -> Run | None:
    """The run whose config.json is ``config``, one that cannot be read with its ``problem``, or
    None where ``config`` is another kind of config.json."""
    inside = config.relative_to(root).parts[:-1]
    if any(part in ("checkpoints", "adapter", "merged") for part in inside):
        return None  # a Trainer checkpoint, a saved adapter or a merged model inside a run
    try:
        document = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return Run(config.parent, problem=f"config.json is damaged ({error})")
    if not isinstance(document, dict) or "task" not in document:
        return None
    try:
        return load_run(config.parent)
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
