"""Summarization data: read from JSONL or CSV files, the hub, or built-in demo data; tokenised
for a decoder-only model (prompt + summary, loss on the summary) or an encoder-decoder.

Every source gives the same shape: for each split a ``datasets.Dataset`` with ``id``,
``text`` (the article) and ``summary`` (the reference).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from adarank.errors import UsageError
from adarank.loading import load_hub_dataset
from adarank.tasks.base import TaskData, draw_subsets, tokenize_splits
from adarank.tasks.summarization.arguments import SummarizationArguments

HUB_DATASET, HUB_CONFIG = "abisee/cnn_dailymail", "3.0.0"
FEATURES = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                              "summary": datasets.Value("string")})
ID_COLUMN = "id"  # optional in files: the record's line number otherwise
IGNORED = -100  # the label of a token that carries no loss


def load_summaries(files: SummarizationArguments, demo: bool, max_train_samples: int | None,
                   max_eval_samples: int | None, evaluate_only: bool) -> TaskData:
    """From the files the flags name (``files``), else the hub; ``evaluate_only`` (--method none): a
    single file is scored whole, and no training split is needed."""
    if demo:
        data = TaskData(demo_split(48, seed=1), {"validation": demo_split(8, seed=2)},
                        "built-in synthetic demo data", synthetic=True)
    elif files.data_file is None and files.validation_file is None:
        data = _from_hub(files)
    else:
        data = _from_files(files, evaluate_only)
    return draw_subsets(data, max_train_samples, max_eval_samples, unit="records", needs_train=not evaluate_only)


def _from_files(files: SummarizationArguments, evaluate_only: bool) -> TaskData:
    if files.data_file is None:  # --validation_file alone: nothing to train on
        if not evaluate_only:
            raise UsageError("--validation_file without --data_file leaves nothing to train on: "
                             "add --data_file, or use --method none to score the base model")
        train = read_records(Path(files.validation_file), files).select([])
        dev = {"validation": read_records(Path(files.validation_file), files)}
    else:
        every = read_records(Path(files.data_file), files)
        if files.validation_file is not None:
            train, dev = every, {"validation": read_records(Path(files.validation_file), files)}
        elif evaluate_only and files.validation_split_percentage is None:  # --method none: score every record
            train, dev = every.select([]), {"validation": every}
        else:  # the last records, the same ones for --method none given the same percentage
            percentage = 10.0 if files.validation_split_percentage is None else files.validation_split_percentage
            if not 0 < percentage < 100:
                raise UsageError(f"--validation_split_percentage {percentage:g} must lie strictly between 0 and 100")
            held = max(1, round(len(every) * percentage / 100))
            if held >= len(every):
                raise UsageError(f"{files.data_file} has {len(every)} record(s): too few to hold "
                                 f"{percentage:g}% out for validation; give more records or a --validation_file")
            train, dev = every.select(range(len(every) - held)), {"validation": every.select(
                range(len(every) - held, len(every)))}
    if files.test_file is not None:
        dev["test"] = read_records(Path(files.test_file), files)
    named = [f for f in (files.data_file, files.validation_file, files.test_file) if f]
    return TaskData(train, dev, ", ".join(named))


def read_records(path: Path, files: SummarizationArguments) -> datasets.Dataset:
    """A JSON Lines (.jsonl, .json) or CSV (.csv, .tsv) file of articles and summaries."""
    if path.is_dir():
        raise UsageError(f"data file {path} is a folder: give the path of a JSONL or CSV file")
    if not path.is_file():
        raise UsageError(f"data file {path} does not exist: give the path of a JSONL or CSV file")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv", ".tsv"):
        raise UsageError(f"{path}: unknown file type {suffix or '(none)'}: use .jsonl (one JSON object a line) "
                         "or .csv / .tsv with a header line")
    try:
        rows = list(_json_rows(path) if suffix in (".jsonl", ".json") else
                    _csv_rows(path, suffix, (files.text_column, files.summary_column)))
    except UnicodeDecodeError as error:
        raise UsageError(f"{path} is not UTF-8 text (byte {error.start}): re-encode it as UTF-8") from None
    columns: dict[str, list[str]] = {"id": [], "text": [], "summary": []}
    first_at: dict[str, int] = {}  # id -> the line it was first read at
    for lineno, record in rows:
        for column in (files.text_column, files.summary_column):
            if column not in record:
                raise UsageError(f"{path}:{lineno}: no column {column!r} (found {', '.join(map(str, record))}): "
                                 f"name the columns with --text_column / --summary_column")
            value = record[column]
            if not isinstance(value, str) or not value.strip():
                raise UsageError(f"{path}:{lineno}: column {column!r} is empty or not text: fix or remove that record")
        identifier = str(record.get(ID_COLUMN, lineno))
        if identifier in first_at:  # predictions and the analysis tell records apart by it
            raise UsageError(f"{path}:{lineno}: id {identifier!r} again (first at line {first_at[identifier]}): "
                             "give each record its own id, or leave the ids out (the line numbers stand in)")
        first_at[identifier] = lineno
        columns["id"].append(identifier)
        columns["text"].append(record[files.text_column].strip())
        columns["summary"].append(record[files.summary_column].strip())
    if not columns["id"]:
        raise UsageError(f"{path} holds no records: give a file with articles and summaries")
    return datasets.Dataset.from_dict(columns, features=FEATURES)


def _json_rows(path: Path):
    with open(path, encoding="utf-8-sig") as handle:  # -sig: a byte-order mark would hide the first field
        first = True
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if first and line.lstrip().startswith("["):  # json.dump of a list of records, on one line or many
                raise UsageError(f"{path} holds a JSON array, and data files are read as JSON Lines: write one "
                                 "JSON object a line (pandas: to_json(orient='records', lines=True))")
            first = False
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UsageError(f"{path}:{lineno}: not valid JSON ({error.msg}): each line must be one "
                                 "JSON object") from None
            if not isinstance(record, dict):
                raise UsageError(f"{path}:{lineno}: a JSON line must be an object with named fields")
            yield lineno, record


def _csv_rows(path: Path, suffix: str, needed: tuple[str, ...]):
    """(the line a record starts at, the record) of a CSV or TSV file with a header line."""
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # an article may be longer than csv's 128 KiB
    # A TSV file is unquoted, as GLUE's are: a field that starts with a quotation mark is text, not the
    # start of a quoted field that would run over the following lines. A CSV file is quoted as usual.
    dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {"delimiter": ","}
    fix = "a TSV field cannot hold a tab: replace them" if suffix == ".tsv" else "quote fields that hold a comma"
    with open(path, encoding="utf-8-sig", newline="") as handle:  # -sig: else the first column is "\ufeffid"
        reader = csv.DictReader(handle, **dialect)
        end = 1 if reader.fieldnames else 0  # the header line read
        for record in reader:
            start, end = end + 1, reader.line_num
            if start < end and any(column not in record or record[column] is None for column in needed):
                raise UsageError(f"{path}:{start}: a record from here to line {end} lacks column(s) "
                                 f"{', '.join(c for c in needed if record.get(c) is None)}: a quotation mark that "
                                 "opens a field at this line and never closes? quote whole fields, doubling the "
                                 "quotation marks inside them")
            if None in record:  # more fields than the header names
                raise UsageError(f"{path}:{reader.line_num}: more fields than the header has: {fix}")
            if suffix == ".tsv" and any(_quoted(value) for value in record.values()):
                raise UsageError(f"{path}:{reader.line_num}: a field quoted as a CSV writer quotes it (in quotation "
                                 "marks, those inside doubled), and TSV files are read unquoted: write the file "
                                 "without quoting (csv.QUOTE_NONE), or as .csv")
            yield start, {k: v for k, v in record.items() if v is not None}


def _quoted(value: str | None) -> bool:
    """A field as pandas' or csv's default writer quotes one holding a quotation mark: "He said ""hi""."."""
    return value is not None and len(value) > 1 and value[0] == value[-1] == '"' and '""' in value[1:-1]


def _from_hub(files: SummarizationArguments) -> TaskData:
    hub = load_hub_dataset(HUB_DATASET, HUB_CONFIG, f"{HUB_DATASET} {HUB_CONFIG}",
                           "pass --data_file with local JSONL/CSV files, or use --demo")

    def convert(split: datasets.Dataset) -> datasets.Dataset:
        split = split.rename_columns({files.text_column: "text", files.summary_column: "summary"})
        return split.select_columns(["id", "text", "summary"]).cast(FEATURES)

    return TaskData(convert(hub["train"]), {"validation": convert(hub["validation"]), "test": convert(hub["test"])},
                       f"{HUB_DATASET}/{HUB_CONFIG}")


# --- demo data ------------------------------------------------------------------------------

_PLACES = ["Leeds", "Porto", "Denver", "Osaka", "Lagos", "Perth", "Bergen", "Quito"]
_THINGS = ["library", "bridge", "hospital", "stadium", "school", "museum", "market", "tram line"]
_PEOPLE = ["the mayor", "a local charity", "the regional council", "a group of engineers"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]


def demo_split(count: int, seed: int) -> datasets.Dataset:
    """Short news-like stories whose summary says who opened what, where and when: learnable in a
    few steps, so a demo run shows the loss fall. Synthetic: the numbers mean nothing."""
    rng = random.Random(seed)
    rows = {"id": [], "text": [], "summary": []}
    for i in range(count):
        place, thing, who, day = (rng.choice(x) for x in (_PLACES, _THINGS, _PEOPLE, _DAYS))
        cost = rng.randint(2, 90)
        rows["id"].append(f"demo-{seed}-{i}")
        rows["text"].append(
            f"A new {thing} opened in {place} on {day}, {who} said. It cost {cost} million pounds and took "
            f"three years to build. Residents queued from early morning to see it. \"This is a great day for "
            f"{place},\" {who} told reporters. Critics said the money could have been spent elsewhere.")
        rows["summary"].append(f"A new {thing} opened in {place} on {day}. It cost {cost} million pounds.")
    return datasets.Dataset.from_dict(rows, features=FEATURES)


# --- tokenisation ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Prompt:
    """How an article is put to a decoder-only model: ``template`` holds ``{text}``; models
    with a chat template get it wrapped as one user turn, ready for the assistant's answer."""

    template: str
    chat: bool

    def parts(self, tokenizer) -> tuple[list[int], list[int]]:
        """Token ids before and after the article (the article is cut between them)."""
        marker = "\u2063ARTICLE\u2063"
        text = self.template.replace("{text}", marker)
        if self.chat:
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        before, after = text.split(marker)
        encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"] if s else []  # noqa: E731
        return encode(before), encode(after)


def tokenize(data: TaskData, tokenizer, max_source_length: int, max_target_length: int,
             encoder_decoder: bool, prompt: Prompt | None) -> TaskData:
    """Tokenize without padding; the collator pads each batch. Decoder-only rows hold prompt and
    summary in ``input_ids``, ``labels`` -100 on the prompt; ``prompt_length`` marks where the
    summary starts, so generation can feed the prompt alone. Encoder-decoder rows hold the
    article in ``input_ids`` and the summary in ``labels``."""
    eos = tokenizer.eos_token_id
    if encoder_decoder:
        def encode(batch):
            encoded = tokenizer(batch["text"], truncation=True, max_length=max_source_length)
            labels = tokenizer(text_target=batch["summary"], truncation=True, max_length=max_target_length)
            encoded["labels"] = labels["input_ids"]
            encoded["prompt_length"] = [len(ids) for ids in encoded["input_ids"]]
            return encoded
    else:
        before, after = prompt_tokens = prompt.parts(tokenizer)

        def encode(batch):
            rows = {"input_ids": [], "attention_mask": [], "labels": [], "prompt_length": []}
            articles = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
            summaries = tokenizer([" " + s for s in batch["summary"]], add_special_tokens=False)["input_ids"]
            for article, summary in zip(articles, summaries):
                source = before + article[:max_source_length] + after
                target = summary[:max_target_length - 1] + [eos]
                rows["input_ids"].append(source + target)
                rows["attention_mask"].append([1] * (len(source) + len(target)))
                rows["labels"].append([IGNORED] * len(source) + target)
                rows["prompt_length"].append(len(source))
            return rows

    settings = {"max_source_length": max_source_length, "max_target_length": max_target_length,
                "encoder_decoder": encoder_decoder, "eos": eos,
                "prompt": None if encoder_decoder else prompt_tokens}
    return tokenize_splits(data, encode, tokenizer, settings, keep=("id", "summary"))


class SummaryCollator:
    """Pads ``input_ids``/``attention_mask`` (pad id, 0) and ``labels`` (-100) to the longest row, on the
    right for training; ``generation=True`` gives the prompts alone, padded on the left for a
    decoder-only model, so that every row's next token follows its own prompt."""

    def __init__(self, tokenizer, encoder_decoder: bool, generation: bool = False):
        self.pad = tokenizer.pad_token_id
        self.encoder_decoder = encoder_decoder
        self.generation = generation

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if self.generation:
            inputs = [r["input_ids"][:r["prompt_length"]] for r in rows]
            left = not self.encoder_decoder
            return {"input_ids": self._pad(inputs, self.pad, left),
                    "attention_mask": self._pad([[1] * len(x) for x in inputs], 0, left)}
        batch = {"input_ids": self._pad([r["input_ids"] for r in rows], self.pad),
                 "attention_mask": self._pad([[1] * len(r["input_ids"]) for r in rows], 0),
                 "labels": self._pad([r["labels"] for r in rows], IGNORED)}
        return batch

    @staticmethod
    def _pad(sequences: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
        width = max(len(s) for s in sequences)
        padded = [([value] * (width - len(s)) + list(s)) if left else (list(s) + [value] * (width - len(s)))
                  for s in sequences]
        return torch.tensor(padded, dtype=torch.long)
