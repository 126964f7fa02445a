"""ROUGE as summarization papers report it: F-measure x 100, Porter stemming, and ROUGE-Lsum
over sentences put on lines of their own (``rouge_score``, offline; no nltk download)."""

from __future__ import annotations

import re

import numpy as np
from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# A sentence ends at . ! or ? (optionally closed by a quote or bracket) followed by white space.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+")


def sentences_on_lines(text: str) -> str:
    """ROUGE-Lsum's input: one sentence a line. Text that already has lines keeps them."""
    text = text.strip()
    if "\n" in text:
        return "\n".join(line.strip() for line in text.splitlines() if line.strip())
    return "\n".join(part.strip() for part in _SENTENCE_END.split(text) if part.strip())


_SCORER = None


def score_each(predictions: list[str], references: list[str]) -> list[dict[str, float]]:
    """Per article: {rouge type: F-measure x 100}."""
    global _SCORER
    if _SCORER is None:
        _SCORER = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = []
    for prediction, reference in zip(predictions, references, strict=True):
        found = _SCORER.score(sentences_on_lines(reference), sentences_on_lines(prediction))
        scores.append({kind: 100 * found[kind].fmeasure for kind in ROUGE_TYPES})
    return scores


def mean_scores(each: list[dict[str, float]]) -> dict[str, float]:
    return {kind: float(np.mean([s[kind] for s in each])) for kind in ROUGE_TYPES}
