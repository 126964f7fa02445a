"""Shared fixtures: tiny models built from a config (tests/fixtures/models.py), the shared GLUE
files, a runner, the tiny training runs the analysis tests read, and helpers to pad a batch and
reload a run's adapter."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import adarank  # noqa: F401, I001  (first: its filter must see bitsandbytes' notice, logged when peft imports it)
import pytest
import torch
from peft import PeftModel

from adarank.tasks.glue.data import load_glue, tokenize
from fixtures.cli import run_task
from fixtures.glue import write_sst2_folder
from fixtures.models import saved_bert, saved_generator
from fixtures.paths import SHARED_DATA

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED_GLUE = SHARED_DATA / "glue_data"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A 2-layer BERT with hidden size 16, 128 positions and the embedded model's tokenizer."""
    return saved_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_512(tmp_path_factory) -> str:
    """tiny_model with 512 positions: the official recipe reads up to 512 tokens (QNLI)."""
    return saved_bert(tmp_path_factory.mktemp("tiny-512"), positions=512)


@pytest.fixture(scope="session")
def mixed_width_model(tmp_path_factory) -> str:
    """A seeded 2-layer BERT without dropout whose 4-bit layers are partly packable (widths 64, 96)
    and partly not (the FFN output takes 96 inputs, not a multiple of the 64-weight quantisation block)."""
    return saved_bert(tmp_path_factory.mktemp("bert-64"), hidden_size=64, intermediate_size=96, dropout=False, seed=0)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """A 2-layer Llama-style causal LM with the embedded BERT tokenizer ([SEP] ends a summary)."""
    return saved_generator(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_bart(tmp_path_factory) -> str:
    """A BART with 2 encoder and 2 decoder layers and the embedded BERT tokenizer ([SEP] ends a summary)."""
    return saved_generator(tmp_path_factory.mktemp("tiny-bart"), "bart")


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not (SHARED_GLUE / "SST-2" / "train.tsv").is_file():
        pytest.skip(f"the shared GLUE files are not at {SHARED_GLUE} (they come beside the checkout)")
    return SHARED_GLUE


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def steps_so_far(path: Path) -> list[int]:
    """The steps of the complete lines of a JSONL file another process is still writing (a last line
    without its newline is being written: left out)."""
    if not Path(path).is_file():
        return []
    lines = Path(path).read_text().split("\n")[:-1]
    return [json.loads(line).get("step", 0) for line in lines if line.strip()]


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

def build_adapter(model, task, method, adapter_args=None, total_step: int = 100, method_arguments=None):
    """A method's plan and build on ``model``, as the pipeline does it (``method``: a name or an object)."""
    from adarank.arguments import AdapterArguments
    from adarank.methods import AdapterRequest, get_method
    from adarank.modules import head_modules, resolve_target_modules

    chosen = get_method(method) if isinstance(method, str) else method
    request = AdapterRequest(task, adapter_args or AdapterArguments(method=chosen.name), total_step=total_step,
                             target_modules=resolve_target_modules(model), head_modules=head_modules(model),
                             method_arguments=method_arguments, task_type=task.peft_task_type(model))
    return chosen.build(model, chosen.plan(request), request)


def stop_and_resume(run, argv: tuple, run_dir: Path, step: int) -> None:
    """Train ``argv`` into ``run_dir``, then resume it from its checkpoint at ``step`` as a job
    stopped right after that checkpoint would be (``run``: the function that runs a command line)."""
    assert run(*argv, "--output_dir", str(run_dir)) == 0
    (run_dir / "metrics.json").unlink()  # a finished run is never resumed: as if stopped after the checkpoint
    checkpoint = run_dir / "checkpoints" / f"checkpoint-{step}"
    assert run(*argv, "--output_dir", str(run_dir), "--resume_from_checkpoint", str(checkpoint)) == 0
