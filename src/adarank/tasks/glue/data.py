"""GLUE data: read from a local download, the GLUE_DIR variable, or the hub.

Every source gives the same shape: for each split a ``datasets.Dataset`` with
``text_a`` (and ``text_b`` for pair tasks), ``label`` (class index, or a float
for STS-B) and ``idx`` (the row's position in its source, for predictions).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import datasets

from adarank.errors import UsageError
from adarank.loading import load_hub_dataset
from adarank.tasks.base import TaskData, draw_subsets, tokenize_splits
from adarank.tasks.glue.demo import make_demo_split
from adarank.tasks.glue.spec import GlueSpec

HUB_DATASET = "nyu-mll/glue"

log = logging.getLogger("adarank")


def load_glue(
    task: GlueSpec,
    data_dir: str | None = None,
    demo: bool = False,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> TaskData:
    if demo:
        data = TaskData(
            train=make_demo_split(task, "train"),
            dev={name: make_demo_split(task, name) for name in task.dev_splits},
            source="built-in synthetic demo data",
            synthetic=True,
        )
    elif data_dir is not None:
        data = _from_directory(task, Path(data_dir), "--data_dir")
    elif os.environ.get("GLUE_DIR"):
        data = _from_directory(task, Path(os.environ["GLUE_DIR"]), "GLUE_DIR")
    else:
        data = _from_hub(task)
    data = draw_subsets(data, max_train_samples, max_eval_samples, unit="examples")
    _say_if_one_class(task, data.train)
    return data


def _say_if_one_class(task: GlueSpec, train: datasets.Dataset) -> None:
    """A training split of one class trains a model that can predict nothing else (MCC 0 on CoLA)."""
    classes = set() if task.is_regression or len(train) == 0 else set(train["label"])
    if len(classes) == 1:
        log.warning("all %d training examples are of class %s: the model can learn no other; check the training "
                    "file (or a small --max_train_samples)", len(train), task.labels[classes.pop()])


def _from_directory(task: GlueSpec, root: Path, given_by: str) -> TaskData:
    """The original GLUE layout (<root>/<TASK>/train.tsv) or the task folder itself."""
    needed = ["train.tsv", *task.dev_splits.values()]
    for folder in (root / task.data_folder, root):
        if all((folder / name).is_file() for name in needed):
            break
        directories = [folder / name for name in needed if (folder / name).is_dir()]
        if directories:
            raise UsageError(f"{given_by}: {directories[0]} is a folder, not a file: give the GLUE files their names")
    else:
        missing = [str(root / task.data_folder / n) for n in needed if not (root / task.data_folder / n).is_file()]
        raise UsageError(
            f"{given_by} {root} lacks {', '.join(missing)}: point it at the GLUE download "
            f"(the folder holding {task.data_folder}/) or at the {task.data_folder} folder itself"
        )
    return TaskData(
        train=read_glue_tsv(folder / "train.tsv", task),
        dev={split: read_glue_tsv(folder / name, task) for split, name in task.dev_splits.items()},
        source=str(folder),
    )


def _read_lines(path: Path) -> list[str]:
    """A text file's lines, without their line endings (LF or CR LF)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:  # -sig: GLUE's MRPC files begin with a BOM
            lines = handle.read().split("\n")
    except UnicodeDecodeError as error:
        raise UsageError(
            f"{path} is not UTF-8 text (byte {error.start}): re-encode it as UTF-8, as GLUE is distributed"
        ) from None
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.rstrip("\r") for line in lines]
    inner = next((number for number, line in enumerate(lines, start=1) if "\r" in line), None)
    if inner is not None:  # a file with old Mac line endings (CR alone) reads as one line
        raise UsageError(f"{path}:{inner}: a carriage return (CR) inside a line: the file's lines must end in LF "
                         "(or CR LF); convert its line endings")
    return lines


def read_glue_tsv(path: Path, task: GlueSpec) -> datasets.Dataset:
    """Read one GLUE TSV file: tab-separated, no quoting (sentences hold stray quotes)."""
    lines = _read_lines(path)
    if task.headerless_columns is not None:
        width, text_at, label_at, first = task.headerless_width, task.headerless_columns, task.headerless_label, 1
    else:
        if not lines:
            raise UsageError(f"{path} is empty: it needs a header line and examples")
        header = lines[0].split("\t")
        wanted = [*task.text_columns, task.label_column]
        absent = [c for c in wanted if c not in header]
        if absent:
            found = ", ".join(header)
            raise UsageError(
                f"{path}:1: header lacks column(s) {', '.join(absent)} (found {found[:200]}"
                f"{'...' if len(found) > 200 else ''}): use the GLUE {task.data_folder} file as distributed"
            )
        twice = [c for c in wanted if header.count(c) > 1]
        if twice:
            raise UsageError(f"{path}:1: the header names column(s) {', '.join(twice)} twice: which is meant? keep "
                             "one of each")
        width, first = len(header), 2
        text_at = tuple(header.index(c) for c in task.text_columns)
        label_at = header.index(task.label_column)
        lines = lines[1:]

    columns: dict[str, list] = {"text_a": [], "label": [], "idx": []}
    blank: list[int] = []  # the lines of examples with an empty sentence
    if task.is_pair:
        columns["text_b"] = []
    for offset, line in enumerate(lines):
        lineno = first + offset
        fields = line.split("\t")
        if len(fields) != width:
            raise UsageError(
                f"{path}:{lineno}: expected {width} tab-separated fields, found {len(fields)}: "
                "fix or remove that line"
            )
        if not all(fields[at].strip() for at in text_at):
            blank.append(lineno)
        columns["text_a"].append(fields[text_at[0]])
        if task.is_pair:
            columns["text_b"].append(fields[text_at[1]])
        columns["label"].append(_parse_label(task, fields[label_at], path, lineno))
        columns["idx"].append(offset)
    if blank:
        log.warning("%s: %d example(s) with an empty sentence, the first at line %d: trained and scored as given",
                    path, len(blank), blank[0])
    features = task.features
    return datasets.Dataset.from_dict({k: columns[k] for k in features}, features=features)


def _parse_label(task: GlueSpec, raw: str, path: Path, lineno: int) -> int | float:
    if task.is_regression:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not 0.0 <= value <= 5.0:
            raise UsageError(f"{path}:{lineno}: score {raw!r} is not a number from 0 to 5: fix that line")
        return value
    if raw not in task.labels:
        raise UsageError(
            f"{path}:{lineno}: label {raw!r} is not one of {', '.join(task.labels)}: fix or remove that line"
        )
    return task.labels.index(raw)


def _from_hub(task: GlueSpec) -> TaskData:
    hub = load_hub_dataset(HUB_DATASET, task.hub_config, f"GLUE {task.name}",
                           "pass --data_dir with the GLUE files, set GLUE_DIR, or use --demo")

    def convert(split: datasets.Dataset) -> datasets.Dataset:
        renames = dict(zip(task.hub_text_columns, ("text_a", "text_b")))
        split = split.rename_columns(renames)
        return split.select_columns(list(task.features)).cast(task.features)

    return TaskData(
        train=convert(hub["train"]),
        dev={name: convert(hub[hub_split]) for name, hub_split in task.hub_dev_splits.items()},
        source=f"{HUB_DATASET}/{task.hub_config}",
    )


def tokenize(data: TaskData, tokenizer, max_seq_length: int) -> TaskData:
    """Tokenize without padding: the collator pads each batch to its longest row."""
    pair = "text_b" in data.train.column_names or any("text_b" in s.column_names for s in data.dev.values())
    # Truncation keeps the special tokens and a token of each text at least; below that the tokenizer does
    # not truncate at all (it logs an error and returns the whole text).
    specials, texts = tokenizer.num_special_tokens_to_add(pair=pair), 2 if pair else 1
    if max_seq_length < specials + texts:
        raise UsageError(f"--max_seq_length {max_seq_length} leaves no room for the text: this tokenizer adds "
                         f"{specials} special tokens to {'a pair of sentences' if pair else 'a sentence'}; "
                         f"use at least {specials + texts}")

    def encode(batch):
        pair = (batch["text_a"], batch["text_b"]) if "text_b" in batch else (batch["text_a"],)
        encoded = tokenizer(*pair, truncation=True, max_length=max_seq_length)
        encoded["labels"] = batch["label"]
        return encoded

    return tokenize_splits(data, encode, tokenizer, {"max_seq_length": max_seq_length})
