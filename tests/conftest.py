"""Shared fixtures: a tiny BERT built from a config, the shared GLUE files, a runner, the tiny
training runs the analysis tests read, and helpers to pad a batch and reload a run's adapter."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from adarank.tasks.glue.data import load_glue, tokenize
from adarank.tasks.glue.demo import make_demo_split
from adarank.loading import embedded_model_path
from adarank.pipeline import main
from adarank.tasks import TASKS

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


def pad_batch(tokenizer, rows):
    """Tokenized rows (a split of a datasets.Dataset) padded into one batch of model inputs."""
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in rows.column_names]
    return tokenizer.pad([{k: row[k] for k in keys} for row in rows], return_tensors="pt")


def demo_dev_inputs(tokenizer, task, count: int):
    """The first ``count`` demo dev examples of ``task``, padded into one batch of model inputs."""
    dev = tokenize(load_glue(task, demo=True, max_eval_samples=count), tokenizer, 128).dev["validation"]
    return pad_batch(tokenizer, dev)


def predicted_labels(run_dir: Path, count: int) -> list[str]:
    """The prediction column of the first ``count`` rows of a run's predictions.tsv."""
    lines = [line for line in (Path(run_dir) / "predictions.tsv").read_text().splitlines() if not line.startswith("#")]
    return [line.split("\t")[3] for line in lines[1:count + 1]]


def reloaded_logits(base, adapter_dir: Path, inputs) -> torch.Tensor:
    """The logits of ``base`` with a saved adapter loaded onto it."""
    reloaded = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    with torch.no_grad():
        return reloaded(**inputs).logits


def assert_adapter_gives_the_run_predictions(run_dir: Path, tokenizer, base, task, count: int = 16) -> None:
    """A run's adapter/, loaded onto a fresh ``base``, predicts the first ``count`` demo dev
    examples as the run's predictions.tsv says."""
    logits = reloaded_logits(base, Path(run_dir) / "adapter", demo_dev_inputs(tokenizer, task, count))
    assert [task.labels[i] for i in logits.argmax(-1).tolist()] == predicted_labels(run_dir, count)


# --- tiny training runs, read by the analysis tests ------------------------------------------

def write_sst2_folder(root: Path) -> Path:
    """A GLUE-layout SST-2 folder (with demo sentences) so runs count as real-data runs."""
    folder = root / "SST-2"
    folder.mkdir(parents=True)
    for split, name, size in (("train", "train.tsv", 128), ("validation", "dev.tsv", 64)):
        rows = make_demo_split(TASKS["sst2"], split).select(range(size))
        lines = ["sentence\tlabel", *(f"{t}\t{y}" for t, y in zip(rows["text_a"], rows["label"]))]
        (folder / name).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def runs_root(tiny_model, tmp_path_factory) -> Path:
    """Real-data SST-2 runs ``sst2-<lora|adalora>-<1|2>`` (method, seed), a demo-data run ``demo``
    and ``stopped``, a copy of a run without metrics.json; trained once a session."""
    data = write_sst2_folder(tmp_path_factory.mktemp("glue"))
    root = tmp_path_factory.mktemp("runs")
    for method in ("lora", "adalora"):
        for seed in ("1", "2"):
            assert run_task("sst2", "--data_dir", str(data), "--model_name_or_path", tiny_model,
                            "--method", method, "--seed", seed, "--num_train_epochs", "2",
                            "--learning_rate", "5e-3", "--output_dir", str(root / f"sst2-{method}-{seed}"), *QUICK) == 0
    assert run_task("sst2", "--demo", "--model_name_or_path", tiny_model, "--method", "lora", "--max_steps", "2",
                    "--output_dir", str(root / "demo"), *QUICK) == 0
    shutil.copytree(root / "sst2-lora-1", root / "stopped")
    (root / "stopped" / "metrics.json").unlink()
    return root


# --- building a method's adapters, and the resume of a stopped job ---------------------------

def build_adapter(model, task, method, adapter_args=None, total_step: int = 100, extra: tuple = ()):
    """A method's plan and build on ``model``, as the pipeline does it (``method``: a name or an object)."""
    from adarank.arguments import AdapterArguments
    from adarank.methods import AdapterRequest, get_method
    from adarank.modules import head_modules, resolve_target_modules

    chosen = get_method(method) if isinstance(method, str) else method
    request = AdapterRequest(task, adapter_args or AdapterArguments(method=chosen.name), total_step=total_step,
                             target_modules=resolve_target_modules(model), head_modules=head_modules(model),
                             extra=extra, task_type=task.peft_task_type(model))
    return chosen.build(model, chosen.plan(request), request)


def stop_and_resume(run, argv: tuple, run_dir: Path, step: int) -> None:
    """Train ``argv`` into ``run_dir``, then resume it from its checkpoint at ``step`` as a job
    stopped right after that checkpoint would be (``run``: the function that runs a command line)."""
    assert run(*argv, "--output_dir", str(run_dir)) == 0
    (run_dir / "metrics.json").unlink()  # a finished run is never resumed: as if stopped after the checkpoint
    checkpoint = run_dir / "checkpoints" / f"checkpoint-{step}"
    assert run(*argv, "--output_dir", str(run_dir), "--resume_from_checkpoint", str(checkpoint)) == 0
