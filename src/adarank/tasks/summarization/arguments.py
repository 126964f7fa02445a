"""The summarization family's own flags, parsed beside TrainingArguments and the adapter flags."""

from __future__ import annotations

import re

from dataclasses import dataclass, field
from pathlib import Path

from adarank.errors import UsageError

MAX_TARGET_LENGTH = 160
DEFAULT_PROMPT = "Summarize the following news article in three sentences.\n\n{text}"


@dataclass
class SummarizationArguments:
    """The summarization family's own flags (beside TrainingArguments and the adapter flags)."""

    data_file: str | None = field(default=None, metadata={
        "help": "Training data, JSON Lines or CSV (default: the hub's cnn_dailymail 3.0.0). Alone, its last "
                "--validation_split_percentage of records are held out; with --method none and no percentage, "
                "all are scored."})
    validation_file: str | None = field(default=None, metadata={"help": "Validation data, scored at the end."})
    test_file: str | None = field(default=None, metadata={"help": "Test data, also scored at the end."})
    validation_split_percentage: float | None = field(default=None, metadata={
        "help": "Of a single --data_file: the share of records, taken from its end, held out for validation "
                "(default 10; --method none scores the same records when given it, else all)."})
    text_column: str = field(default="article", metadata={"help": "The column holding the text (XSum: document)."})
    summary_column: str = field(default="highlights", metadata={"help": "The reference summary (XSum: summary)."})
    max_target_length: int = field(default=MAX_TARGET_LENGTH, metadata={
        "help": "Reference summaries are cut to this many tokens in training (the recipe's 160)."})
    num_beams: int = field(default=4, metadata={"help": "Beam search width at evaluation (the paper: 4; 1: greedy)."})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "Longest generated summary in tokens (default: --max_target_length)."})
    no_repeat_ngram_size: int = field(default=3, metadata={
        "help": "Never repeat an n-gram of this size in a summary (0: off). Tuned small models loop without it."})
    length_penalty: float = field(default=1.0, metadata={
        "help": "Beam search's length exponent (above 1 favours longer summaries)."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Above 1 discourages repeated tokens."})
    prompt_template: str = field(default=DEFAULT_PROMPT, metadata={
        "help": "Decoder-only models: the prompt, with {text} where the article goes (wrapped in the model's "
                "chat template where it has one)."})


def check_arguments(options: SummarizationArguments) -> None:
    _check_data_flags(options)
    for name in ("max_target_length", "num_beams"):
        if getattr(options, name) < 1:
            raise UsageError(f"--{name} {getattr(options, name)} must be at least 1")
    if options.max_new_tokens is not None and options.max_new_tokens < 1:
        raise UsageError(f"--max_new_tokens {options.max_new_tokens} must be at least 1")
    # length_penalty may be any number (below 1 favours shorter summaries); NaN and infinities are refused
    # with every float flag (validation.check_numbers).
    if options.num_beams == 1 and options.length_penalty != 1.0:
        raise UsageError(f"--length_penalty {options.length_penalty:g} weighs beam search's candidates, and "
                         "--num_beams 1 searches greedily: raise --num_beams, or leave --length_penalty out")
    if not options.repetition_penalty > 0:  # NaN too
        raise UsageError(f"--repetition_penalty {options.repetition_penalty:g} must be above 0 (1: no penalty; "
                         "above 1 discourages repeated tokens)")
    if options.no_repeat_ngram_size < 0:
        raise UsageError(f"--no_repeat_ngram_size {options.no_repeat_ngram_size} must be 0 (off) or more")
    if options.prompt_template.count("{text}") != 1:
        raise UsageError("--prompt_template must hold {text} exactly once, where the article goes")
    others = sorted(set(re.findall(r"\{[^{}]*\}", options.prompt_template)) - {"{text}"})
    if others:
        raise UsageError(f"--prompt_template names {', '.join(others)}: only {{text}} is filled in (with the "
                         "article); write the words themselves")


def _check_data_flags(options: SummarizationArguments) -> None:
    """Refuse data flags that would be ignored, or that would score the model on what it is prompted or trained with."""
    if options.text_column == options.summary_column:  # the model would be prompted with the reference itself
        raise UsageError(f"--text_column {options.text_column} is the --summary_column too: name the article's "
                         "column with --text_column and the reference summary's with --summary_column")
    percentage = options.validation_split_percentage
    if percentage is not None and (options.data_file is None or options.validation_file is not None):
        other = ("--validation_file names the validation records: give one of them" if options.validation_file else
                 "without --data_file the hub's CNN/DailyMail is read, with its own validation split: add "
                 "--data_file, or leave the percentage out")
        raise UsageError(f"--validation_split_percentage {percentage:g} holds records of --data_file out for "
                         f"validation, and {other}")
    if options.test_file is not None and options.data_file is None and options.validation_file is None:
        raise UsageError(f"--test_file {options.test_file} without --data_file: the hub's CNN/DailyMail is read, "
                         "with its own test split: add --data_file (and --validation_file), or leave --test_file out")
    for name in ("validation_file", "test_file"):
        path = getattr(options, name)
        if options.data_file is not None and path is not None and \
                Path(path).resolve() == Path(options.data_file).resolve():
            raise UsageError(f"--{name} {path} is the --data_file: the model would be scored on the records it "
                             f"trained on: give a file of other records, or leave --{name} out")
