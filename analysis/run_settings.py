"""Naming the settings among runs in words, alike in every table and figure: what sets each
setting apart from the others (its recipe, a learning rate, ...), never its hash."""

from __future__ import annotations

import json
from pathlib import Path

from run_reader import Run, flatten


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
