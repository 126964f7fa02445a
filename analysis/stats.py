"""The statistics behind the tables: each task's metric recomputed from dev predictions, and a
paired bootstrap of the difference between two methods over the dev examples.

Predictions are the tables ``Run.predictions()`` reads from predictions.tsv:
(split, index) -> (label, prediction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from run_reader import AnalysisError, Damaged, Run
from scipy.stats import rankdata

# --- metrics on label / prediction arrays ----------------------------------------------------


def accuracy(y, p):
    return float(np.mean(y == p))


def f1(y, p):  # positive class: label "1", as in GLUE's MRPC and QQP
    tp = np.sum((p == 1) & (y == 1))
    predicted, actual = np.sum(p == 1), np.sum(y == 1)
    return float(2 * tp / (predicted + actual)) if predicted + actual else 0.0


def matthews(y, p):
    classes = int(max(y.max(), p.max())) + 1
    confusion = np.bincount(y * classes + p, minlength=classes * classes).reshape(classes, classes)
    t, q, c, s = confusion.sum(1), confusion.sum(0), np.trace(confusion), confusion.sum()
    denominator = np.sqrt(float(s * s - q @ q) * float(s * s - t @ t))
    return float((c * s - t @ q) / denominator) if denominator else 0.0


def pearson(y, p):
    if np.std(y) == 0 or np.std(p) == 0:
        return 0.0
    return float(np.corrcoef(y, p)[0, 1])


def spearman(y, p):
    return pearson(rankdata(y), rankdata(p))  # tied values share their average rank, as in scipy


def mean_score(ids, scores):  # summarization: the mean of the per-article ROUGE scores
    return float(np.mean(scores))


ROUGE = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# The metric names of config.json's "task_metrics" (and run_reader.task_metric).
METRICS = {"accuracy": accuracy, "f1": f1, "matthews_correlation": matthews, "pearson": pearson,
           "spearman": spearman, **{name: mean_score for name in ROUGE}}


def points(metric: str) -> float:
    """The factor that puts a metric in points: GLUE metrics are fractions, ROUGE is already x 100."""
    return 1.0 if metric in ROUGE else 100.0


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value), e.g. of one setting's seeds."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def paired_bootstrap(metric, labels, predictions_a, predictions_b, resamples=2000, seed=0):
    """Difference of mean metrics (a - b) and its 95% percentile interval.

    ``predictions_a``/``_b`` hold one array per seed, all aligned with ``labels``.
    Each resample draws dev examples with replacement, the same for both methods.
    """
    rng = np.random.default_rng(seed)
    n = len(labels)

    def mean_metric(predictions, rows):
        return np.mean([metric(labels[rows], p[rows]) for p in predictions])

    everything = np.arange(n)
    observed = mean_metric(predictions_a, everything) - mean_metric(predictions_b, everything)
    diffs = np.empty(resamples)
    for i in range(resamples):
        rows = rng.integers(0, n, n)
        diffs[i] = mean_metric(predictions_a, rows) - mean_metric(predictions_b, rows)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(observed), float(low), float(high)


# --- from predictions.tsv to arrays ----------------------------------------------------------

class PredictionTables:
    """Each run's predictions.tsv, read once however many comparisons the run is in."""

    def __init__(self):
        self._tables: dict[Path, dict] = {}

    def __call__(self, run: Run) -> dict[tuple[str, int], tuple[str, str]]:
        if run.path not in self._tables:
            self._tables[run.path] = run.predictions()
        return self._tables[run.path]


class OtherExamples(AnalysisError):
    """Runs compared whose dev examples differ: they were not evaluated on the same data."""


def aligned(tables: dict[Path, dict], split: str, keys: list) -> tuple[list, list[list]]:
    """(labels, one prediction list per run) of the dev examples ``keys``; every run must have
    the same labels for them."""
    labels, predictions = None, []
    for path, table in tables.items():
        pairs = [table[(split, i)] for _, i in keys]
        these = [label for label, _ in pairs]
        if labels is not None and these != labels:
            raise OtherExamples(
                f"{path}/predictions.{'jsonl has other article ids' if isinstance(pairs[0][1], dict) else 'tsv has other labels'}"
                " for the same dev examples than the runs it is compared with: they were not evaluated on the same data"
            )
        labels = these
        predictions.append([prediction for _, prediction in pairs])
    return labels, predictions


def _number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def scoreable(metric: str, tables: dict[Path, dict]) -> None:
    """Refuse predictions ``metric`` (config.json's task_metrics, or the task's headline metric where a
    run predates them) cannot score: a metric these tools do not know, a table of the other kind of task
    (predictions.tsv for ROUGE, predictions.jsonl for a GLUE metric), a word for a correlation."""
    for path, table in tables.items():
        if metric not in METRICS:
            raise Damaged(path / "config.json", f"its task_metrics names {metric}, a metric these tools cannot score")
        first = next(iter(table.values()), None)
        if first is not None and isinstance(first[1], dict) != (metric in ROUGE):
            written = "predictions.jsonl (ROUGE by article)" if isinstance(first[1], dict) else "predictions.tsv"
            raise Damaged(path / "config.json", f"the run is scored on {metric}, but it wrote {written}")
        if metric in ("pearson", "spearman"):
            if (word := next((x for pair in table.values() for x in pair if not _number(x)), None)) is not None:
                raise Damaged(path / "predictions.tsv", f"{word!r} is no number, and {metric} correlates numbers")


def encode(metric: str, labels, *prediction_sets):
    """Labels and predictions as arrays: floats for a correlation, article ids and each article's
    score for ROUGE, else class codes."""
    if metric in ROUGE:
        return np.asarray(labels), [[np.asarray([row[metric] for row in p], float) for p in ps] for ps in prediction_sets]
    if metric in ("pearson", "spearman"):
        return np.asarray(labels, float), [[np.asarray(p, float) for p in ps] for ps in prediction_sets]
    names = sorted({*labels, *(x for ps in prediction_sets for p in ps for x in p)})
    code = {name: i for i, name in enumerate(names)}
    if metric == "f1":  # "1" is the positive class, whichever labels a split holds
        code = {name: int(name == "1") for name in names}
    encoded = np.asarray([code[x] for x in labels])
    return encoded, [[np.asarray([code[x] for x in p]) for p in ps] for ps in prediction_sets]


@dataclass(frozen=True)
class Difference:
    """Mean metric of method a minus method b, with its paired bootstrap 95% interval."""

    examples: int
    value: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def method_difference(metric: str, split: str, tables_a: dict[Path, dict], tables_b: dict[Path, dict],
                      resamples: int = 2000) -> Difference:
    """a - b on the dev examples of ``split`` that every run predicted (tables: run path -> predictions)."""
    tables = {**tables_a, **tables_b}
    scoreable(metric, tables)
    keys = sorted(set.intersection(*({k for k in table if k[0] == split} for table in tables.values())))
    if not keys:
        raise OtherExamples(f"the runs compared share no {split} example: they were not evaluated on the same data")
    labels, predictions = aligned(tables, split, keys)
    y, (a, b) = encode(metric, labels, predictions[:len(tables_a)], predictions[len(tables_a):])
    return Difference(len(keys), *paired_bootstrap(METRICS[metric], y, a, b, resamples))
