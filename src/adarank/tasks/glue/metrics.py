"""GLUE metrics, computed locally (scikit-learn, scipy): no metric scripts to download."""

from __future__ import annotations

import logging

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from adarank.tasks.glue.spec import GlueSpec


def predictions_from_logits(task: GlueSpec, logits: np.ndarray) -> np.ndarray:
    logits = logits[0] if isinstance(logits, tuple) else logits
    if task.is_regression:
        return np.asarray(logits, dtype=np.float64).reshape(-1)
    return np.asarray(logits).argmax(axis=-1)


def undefined_because(name: str, labels: np.ndarray) -> str | None:
    """Why a metric is undefined on these labels whatever the predictions (its formula divides by
    zero); None where it is defined."""
    if name in ("matthews_correlation", "pearson", "spearman") and np.unique(labels).size < 2:
        return "the dev labels hold a single value"
    if name == "f1" and not (labels == 1).any():
        return "the dev labels hold no positive example"
    return None


def glue_metrics(task: GlueSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """The task's metrics, headline metric first; None for a metric the labels leave undefined (said
    in the log), not a number that would read as a score."""
    scorers = {
        "accuracy": lambda p, y: accuracy_score(y, p),
        "f1": lambda p, y: f1_score(y, p),
        "matthews_correlation": lambda p, y: matthews_corrcoef(y, p),
        "pearson": lambda p, y: pearsonr(p, y)[0],
        "spearman": lambda p, y: spearmanr(p, y)[0],
    }
    labels = np.asarray(labels).reshape(-1)
    scores = {}
    for name in task.metrics:
        why = undefined_because(name, labels)
        if why is not None:
            logging.getLogger("adarank").warning("%s is undefined on this dev set (%s): recorded as null.", name, why)
            scores[name] = None
        else:  # a constant prediction has no correlation: report 0, as GLUE does, not NaN
            scores[name] = float(np.nan_to_num(scorers[name](predictions, labels)))
    return scores


def trainer_metrics(task: GlueSpec):
    """A ``compute_metrics`` function for the Trainer."""

    def compute(eval_prediction) -> dict[str, float]:
        predictions = predictions_from_logits(task, eval_prediction.predictions)
        return glue_metrics(task, predictions, eval_prediction.label_ids)

    return compute
