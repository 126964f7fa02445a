"""Shared fixtures: a tiny BERT built from a config, the shared GLUE files, and a runner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from adarank.data import load_glue, tokenize
from adarank.models import embedded_model_path
from adarank.pipeline import main

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED_GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue_data"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A 2-layer BERT with hidden size 16 and the embedded model's tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=128,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not (SHARED_GLUE / "SST-2" / "train.tsv").is_file():
        pytest.skip(f"the shared GLUE files are not at {SHARED_GLUE} (they come beside the checkout)")
    return SHARED_GLUE


def run_task(task: str, *argv: str) -> int:
    """Run a task's command line in this process; returns the exit code (0 on success)."""
    try:
        main(task, list(argv))
    except SystemExit as stop:
        return stop.code
    return 0


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


QUICK = ("--per_device_train_batch_size", "8", "--logging_steps", "1", "--save_strategy", "no")


def demo_dev_inputs(tokenizer, task, count: int):
    """The first ``count`` demo dev examples of ``task``, padded into one batch of model inputs."""
    dev = tokenize(load_glue(task, demo=True, max_eval_samples=count), tokenizer, 128).dev["validation"]
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in dev.column_names]
    return tokenizer.pad([{k: row[k] for k in keys} for row in dev], return_tensors="pt")


def predicted_labels(run_dir: Path, count: int) -> list[str]:
    """The prediction column of the first ``count`` rows of a run's predictions.tsv."""
    lines = [line for line in (Path(run_dir) / "predictions.tsv").read_text().splitlines() if not line.startswith("#")]
    return [line.split("\t")[3] for line in lines[1:count + 1]]
