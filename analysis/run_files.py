"""The files of a run directory read as the documents training writes: UTF-8 text, one JSON object
(config.json, metrics.json), or JSON lines of objects (history.jsonl, ranks.jsonl, ...). A file
that is anything else is damaged, and the one line that says so names it."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from run_format import migrate_config

FLOAT_MAX = sys.float_info.max
JSON_KINDS = {list: "a JSON list", str: "a JSON string", int: "a JSON number", float: "a JSON number",
              bool: "true or false", type(None): "null"}


class AnalysisError(Exception):
    """A problem with the user's input: reported as one line, exit code 2."""


class Damaged(AnalysisError):
    """A run file that is not what training writes there (``why``: how it is not)."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path} is damaged ({why}): train the run again or leave it out")
        self.path, self.why = path, why

    @property
    def short(self) -> str:
        """The problem named within its run directory, as the tables list the runs they leave out."""
        return f"{self.path.name} is damaged ({self.why})"


class Unreadable(AnalysisError):
    """A run file the system will not read (no permission, an I/O error)."""

    def __init__(self, path: Path, error: OSError):
        self.path, self.why = path, error.strerror or str(error)
        super().__init__(f"{path} cannot be read ({self.why}): make it readable, or leave the run out")

    @property
    def short(self) -> str:
        return f"{self.path.name} cannot be read ({self.why})"


@dataclass
class JsonLines:
    records: list[dict]
    truncated: bool = False  # the last line was cut off (a run stopped mid-write)


def text(path: Path) -> str:
    """A run file's text; one that is not UTF-8 is damaged (the project writes UTF-8)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AnalysisError(f"{path} is not UTF-8 text: the file is damaged") from None
    except OSError as error:
        raise Unreadable(path, error) from None


def read_object(path: Path) -> dict:
    """A run file that holds one JSON object (config.json, metrics.json)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # not JSON, or not UTF-8
        raise Damaged(path, str(error)) from None
    except OSError as error:
        raise Unreadable(path, error) from None
    if not isinstance(document, dict):
        raise Damaged(path, f"{JSON_KINDS.get(type(document), 'not a JSON object')}, not an object")
    return document


def read_config(path: Path) -> dict:
    """The config.json of the run directory ``path`` in today's terms (a newer version's is refused
    first: its layout may differ); one that names no task or method, or whose parts are no objects,
    is damaged."""
    config = read_object(path / "config.json")
    version = config.get("format_version", 1)
    if not _count(version):
        raise Damaged(path / "config.json", "its format_version is not a number")
    if version < 1:
        raise Damaged(path / "config.json", f"its format_version {version} is no version: they start at 1")
    if broken := _not_an_object(config):
        raise Damaged(path / "config.json", f"its {broken} is not an object")
    try:
        config = migrate_config(config)
    except ValueError as error:  # a newer version than this reader's
        raise AnalysisError(f"{path}: {error}") from None
    for key in ("task", "method"):
        if not isinstance(config.get(key), str):
            raise Damaged(path / "config.json", f"its {key} is not a name" if key in config else f"it names no {key}")
    if config.get("budget") is not None and not isinstance(config["budget"], str):
        raise Damaged(path / "config.json", "its budget is not a name")
    for key in ("task_metrics", "dev_splits"):
        if key in config and not _names(config[key]):
            raise Damaged(path / "config.json", f"its {key} is not a list of names")
    seed = ((config.get("arguments") or {}).get("training") or {}).get("seed")
    if seed is not None and not _count(seed):  # seeds pair and group runs: a list or a word would pair nothing
        raise Damaged(path / "config.json", "its arguments.training.seed is not a whole number")
    return config


def _not_an_object(config: dict) -> str | None:
    """The first part of config.json that training writes as an object (arguments and its groups,
    training, model, ...; the adapter and AdaLoRA's schedule in it; task_settings) and that is something
    else, or None."""
    arguments, adapter = config.get("arguments"), config.get("adapter")
    groups = arguments.items() if isinstance(arguments, dict) else ()
    parts = [("arguments", arguments), *((f"arguments.{key}", value) for key, value in groups), ("adapter", adapter),
             ("adapter.schedule", adapter.get("schedule") if isinstance(adapter, dict) else None),
             ("task_settings", config.get("task_settings"))]
    return next((name for name, value in parts if value is not None and not isinstance(value, dict)), None)


# metrics.json: its text entries; a method's own figures may be lists or objects; every other entry is a
# finite number or null.
METRIC_TEXTS = {"data", "peak_memory_measured_by", "note"}


def read_metrics(path: Path) -> dict:
    """A run's metrics.json, every entry of the type training writes: a diverged run's non-finite
    figures are null and named in ``non_finite``, so a NaN, an infinity or a word in place of a
    number is damage, not a result."""
    metrics = read_object(path)
    for key, value in metrics.items():
        if key == "non_finite":
            if not _names(value):
                raise Damaged(path, "its non_finite is not a list of names")
        elif key in METRIC_TEXTS:
            if not isinstance(value, str):
                raise Damaged(path, f"its {key} is not text")
        elif isinstance(value, (list, dict)):
            continue
        elif value is not None and not finite_number(value):
            raise Damaged(path, f"its {key} is not a finite number")
        elif value is not None and (rule := _out_of_range(key, value)):
            raise Damaged(path, f"its {key} is {value:g}: {rule}")
    return metrics


# The figures of metrics.json whose range is known, by name: no score or count outside it is a result.
# Counts, times and sizes stay below 2**53, where a float stops counting by ones (a mean of them stays finite).
BOUNDS = ((re.compile(r"eval_(\w+_)?(matthews_correlation|pearson|spearman)"), -1, 1, "a correlation lies in [-1, 1]"),
          (re.compile(r"eval_(\w+_)?(accuracy|f1)"), 0, 1, "an accuracy or F1 lies in [0, 1]"),
          (re.compile(r"\w+_(params|examples|seconds|mb|steps?|rank|events|tokens)(_per_\w+)?"), 0, 2**53 - 1,
           "a count, time or size is 0 or more, and below 2**53"))


def _out_of_range(key: str, value: float) -> str | None:
    """The rule of BOUNDS that metrics.json's ``key`` breaks with ``value``, or None."""
    for pattern, low, high, rule in BOUNDS:
        if pattern.fullmatch(key):
            return None if low - 1e-9 <= value <= high + 1e-9 else rule  # the margin: a correlation of 1 + 2e-16
    return None


def _names(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def read_jsonl(path: Path, record: Callable[[dict], bool] | None = None, shape: str = "") -> JsonLines:
    """Every complete record, each a JSON object (with ``record``: one it accepts, ``shape`` saying
    what it is); a last line cut off mid-write is dropped and flagged."""
    lines = text(path).splitlines()
    records, truncated = [], False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                truncated = True
                continue
            raise AnalysisError(f"{path}:{number} is not a JSON line: the file is damaged") from None
        if not isinstance(value, dict):
            raise AnalysisError(f"{path}:{number} is not a JSON object: the file is damaged")
        if record is not None and not record(value):
            raise AnalysisError(f"{path}:{number} is not {shape}: the file is damaged")
        records.append(value)
    return JsonLines(records, truncated)


def _number(value) -> bool:
    """A JSON number that reads as a float (a whole number past the largest float would overflow a figure)."""
    return isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)
                                        and abs(value) <= FLOAT_MAX)


def finite_number(value) -> bool:
    """A number a run file may hold as a figure: not a bool, not NaN or an infinity."""
    return _number(value) and math.isfinite(value)


def _count(value) -> bool:
    """A whole number a float holds exactly (steps, ranks, versions, seeds: below 2**53, so a plot can place it)."""
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53


def history_record(record: dict) -> bool:
    """A history.jsonl record: the optimizer step, and numbers (loss, dev metrics, epoch, ...)."""
    return _count(record.get("step")) and all(_number(value) or value is None for value in record.values())


HISTORY_RECORD = "a history record (the step, then numbers)"


def rank_record(record: dict) -> bool:
    """A ranks.jsonl record: step, event, budget and total rank, and the rank of each module
    kind in each layer ("3", or "encoder.3" / "decoder.3")."""
    ranks = record.get("ranks")
    return (_count(record.get("step")) and isinstance(record.get("event"), str)
            and _number(record.get("budget")) and _number(record.get("total_rank")) and isinstance(ranks, dict)
            and bool(ranks)  # a record ranks at least one module
            and all(re.fullmatch(r"(\w+\.)?[0-9]+", label) and isinstance(modules, dict) and modules
                    and all(_count(rank) and rank >= 0 for rank in modules.values())
                    for label, modules in ranks.items()))


RANK_RECORD = "a rank record (step, event, budget, total_rank, and ranks by layer and module)"


def summary_record(record: dict) -> bool:
    """A predictions.jsonl record: its comment line (no split), or split, index, article id and the
    article's ROUGE scores."""
    if "split" not in record:
        return True
    return (isinstance(record["split"], str) and _count(record.get("index")) and isinstance(record.get("id"), str)
            and all(_number(record.get(key)) for key in ("rouge1", "rouge2", "rougeL", "rougeLsum")))


SUMMARY_RECORD = "a prediction record (split, index, article id and its ROUGE scores)"


def diagnostics_record(record: dict) -> bool:
    """A diagnostics.jsonl record (train --diagnostics): the optimizer step; per module kind, the update's
    norm, the mean |E| and the importance scores; the orthogonal regulariser, plain and weighted."""
    per_kind = all(isinstance(record.get(key, {}), dict) and all(_number(v) for v in record.get(key, {}).values())
                   and bool(record.get(key, True)) for key in ("update_norm", "lora_E_abs_mean"))  # a kind at least
    importance = isinstance(record.get("importance", {}), dict) and all(
        isinstance(scores, list) and all(_number(v) for v in scores) for scores in record.get("importance", {}).values())
    return (_count(record.get("step")) and per_kind and importance
            and all(_number(record.get(key, 0)) for key in ("orth_reg", "orth_reg_weighted")))


DIAGNOSTICS_RECORD = "a diagnostics record (the step, then figures by module kind)"


def update_size(record: dict) -> float:
    """||dW||_F over every adapted matrix of a diagnostics record, from its norms by module kind (hypot: no
    square of a large norm overflows)."""
    return math.hypot(*record["update_norm"].values())
