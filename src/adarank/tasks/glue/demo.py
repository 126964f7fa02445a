"""Synthetic, deterministic demo data shaped like each GLUE task.

It lets the whole pipeline run offline in a minute. The label is a simple
function of the words (sentiment words; how much of sentence 1 sentence 2
repeats), so a model can learn it. It is not language data: every output of
a demo run says so.
"""

from __future__ import annotations

import random
import zlib

import datasets

from adarank.tasks.glue.spec import GlueSpec

DEMO_SIZES = {"train": 512}
DEMO_DEV_SIZE = 256

_POSITIVE = "good great excellent wonderful delightful superb charming brilliant lovely moving".split()
_NEGATIVE = "bad awful terrible boring dreadful dull poor clumsy tedious bland".split()
_FILLER = (
    "the a film story actor scene plot music movie ending cast was is with and its this "
    "director script camera night city river house friend family winter road"
).split()
_NOUNS = "cat dog river mountain teacher doctor garden market train window lamp ship farmer child".split()
_VERBS = "sees finds carries paints visits follows builds opens".split()


def make_demo_split(task: GlueSpec, split: str) -> datasets.Dataset:
    size = DEMO_SIZES.get(split, DEMO_DEV_SIZE)
    rng = random.Random(zlib.crc32(f"{task.name}/{split}".encode()))
    rows = [_example(task, rng) for _ in range(size)]
    columns = {"text_a": [r[0] for r in rows]}
    if task.is_pair:
        columns["text_b"] = [r[1] for r in rows]
    columns["label"] = [r[2] for r in rows]
    columns["idx"] = list(range(size))
    return datasets.Dataset.from_dict(columns, features=task.features)


def _example(task: GlueSpec, rng: random.Random) -> tuple[str, str | None, int | float]:
    if not task.is_pair:
        label = rng.randrange(task.num_labels)
        cue = (_NEGATIVE, _POSITIVE)[label]
        words = rng.choices(_FILLER, k=rng.randint(5, 12)) + rng.choices(cue, k=rng.randint(1, 2))
        rng.shuffle(words)
        return " ".join(words), None, label

    premise = [rng.choice(_NOUNS), rng.choice(_VERBS), "the", rng.choice(_NOUNS), "near", "the", rng.choice(_NOUNS)]
    if task.is_regression:
        kept = rng.randint(0, len(premise))
        hypothesis = premise[:kept] + rng.choices(_FILLER, k=len(premise) - kept)
        return " ".join(premise), " ".join(hypothesis), round(5.0 * kept / len(premise), 3)

    label = rng.randrange(task.num_labels)
    if label == 0:  # restates sentence 1 (entailment, paraphrase, duplicate)
        hypothesis = premise[:4]
    elif label == 1 and task.num_labels == 3:  # unrelated (neutral)
        hypothesis = [rng.choice(_NOUNS), rng.choice(_VERBS), "the", rng.choice(_NOUNS)]
    elif task.num_labels == 3:  # negates sentence 1 (contradiction)
        hypothesis = [premise[0], "never", premise[1], "the", premise[3]]
    else:  # about something else (not entailment)
        hypothesis = [rng.choice(_NOUNS), rng.choice(_VERBS), "the", rng.choice(_NOUNS)]
    return " ".join(premise), " ".join(hypothesis), label
