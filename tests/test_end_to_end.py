"""Whole runs through the task scripts' entry point: the run directory contract."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from adarank.loading import embedded_model_path
from adarank.tasks.glue.model import load_model
from adarank.tasks import TASKS
from conftest import QUICK, demo_dev_inputs, predicted_labels, read_jsonl, run_task, stop_and_resume
from fixtures.paths import ROOT


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """The README's demo, through the real script: embedded MiniLM, AdaLoRA, demo data."""
    run_dir = tmp_path_factory.mktemp("runs") / "demo"
    done = subprocess.run(
        [sys.executable, str(ROOT / "src" / "glue_sst2.py"), "--demo", "--method", "adalora",
         "--output_dir", str(run_dir), "--num_train_epochs", "2", "--max_train_samples", "256"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "synthetic demo data" in done.stdout
    return run_dir


def test_a_demo_run_writes_every_file_of_the_contract(demo_run):
    for name in ("config.json", "metrics.json", "history.jsonl", "ranks.jsonl", "predictions.tsv",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert (demo_run / name).is_file(), name
    config = json.loads((demo_run / "config.json").read_text())
    metrics = json.loads((demo_run / "metrics.json").read_text())
    assert config["synthetic_data"] is True and "synthetic" in metrics["note"]
    assert config["arguments"]["training"]["learning_rate"] == TASKS["sst2"].paper.learning_rate
    assert config["environment"]["packages"]["peft"] and config["environment"]["device"]["type"]
    assert len(config["target_modules"]) == 6 * 6
    assert metrics["eval_accuracy"] > 0.7  # the demo's signal is learnable
    assert metrics["trainable_params"] == metrics["adapter_params"] + metrics["head_params"] > 0
    assert metrics["peak_memory_mb"] > 0 and metrics["train_examples_per_second"] > 0
    assert metrics["total_step"] == config["total_step"] == 16
    assert any("eval_accuracy" in h for h in read_jsonl(demo_run / "history.jsonl"))
    lines = (demo_run / "predictions.tsv").read_text().splitlines()
    assert lines[0].startswith("# synthetic") and lines[1] == "split\tindex\tlabel\tprediction"
    assert len(lines) == 2 + metrics["eval_examples"]


def test_the_saved_adapter_reloads_to_the_same_logits(demo_run):
    task = TASKS["sst2"]
    tokenizer, _, _ = load_model(None, task)
    inputs = demo_dev_inputs(tokenizer, task, 16)
    base = AutoModelForSequenceClassification.from_pretrained(embedded_model_path(), num_labels=2)
    reloaded = PeftModel.from_pretrained(base, str(demo_run / "adapter")).eval()
    with torch.no_grad():
        logits = reloaded(**inputs).logits
    assert logits.argmax(-1).tolist() == [int(p) for p in predicted_labels(demo_run, 16)]
    # AdaLoRA's pruned ranks come back with the adapter
    final = read_jsonl(demo_run / "ranks.jsonl")[-1]
    config = json.loads((demo_run / "adapter" / "adapter_config.json").read_text())
    assert sum(sum(mask) for mask in config["rank_pattern"].values()) == final["total_rank"]


def test_the_saved_adapter_reproduces_the_trained_models_logits(tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    assert run_task("rte", "--demo", "--model_name_or_path", tiny_model, "--method", "lora",
                    "--output_dir", str(run_dir), "--num_train_epochs", "1", *QUICK) == 0
    task = TASKS["rte"]
    tokenizer, _, _ = load_model(tiny_model, task)
    inputs = demo_dev_inputs(tokenizer, task, 8)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    with torch.no_grad():
        before = base(**inputs).logits
        after = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()(**inputs).logits
    assert not torch.allclose(before, after)  # the adapter and head changed something
    assert [task.labels[i] for i in after.argmax(-1).tolist()] == predicted_labels(run_dir, 8)


def test_the_same_seed_gives_the_same_run(tiny_model, tmp_path):
    common = ("stsb", "--demo", "--model_name_or_path", tiny_model, "--method", "adalora",
              "--num_train_epochs", "1", "--seed", "7", *QUICK)
    assert run_task(*common, "--output_dir", str(tmp_path / "a")) == 0
    assert run_task(*common, "--output_dir", str(tmp_path / "b")) == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["eval_pearson"] == b["eval_pearson"] and a["train_loss"] == b["train_loss"]
    assert (tmp_path / "a" / "ranks.jsonl").read_text() == (tmp_path / "b" / "ranks.jsonl").read_text()


def test_mnli_reports_matched_and_mismatched(tiny_model, tmp_path):
    assert run_task("mnli", "--demo", "--model_name_or_path", tiny_model, "--method", "lora",
                    "--output_dir", str(tmp_path / "m"), "--max_steps", "4", *QUICK) == 0
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert {"eval_matched_accuracy", "eval_mismatched_accuracy"} <= set(metrics)
    splits = {line.split("\t")[0] for line in (tmp_path / "m" / "predictions.tsv").read_text().splitlines()[2:]}
    assert splits == {"matched", "mismatched"}


@pytest.mark.parametrize("task, metric", [("sst2", "eval_accuracy"), ("cola", "eval_matthews_correlation")])
def test_real_glue_data_on_a_slice(glue_dir, tmp_path, task, metric):
    run_dir = tmp_path / task
    assert run_task(task, "--data_dir", str(glue_dir), "--method", "adalora", "--max_train_samples", "96",
                    "--max_eval_samples", "64", "--num_train_epochs", "1", "--output_dir", str(run_dir), *QUICK) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    rows = [line.split("\t") for line in (run_dir / "predictions.tsv").read_text().splitlines()[1:]]
    labels, guesses = [r[2] for r in rows], [r[3] for r in rows]
    from sklearn.metrics import accuracy_score, matthews_corrcoef

    recomputed = accuracy_score(labels, guesses) if task == "sst2" else matthews_corrcoef(labels, guesses)
    assert metrics[metric] == pytest.approx(recomputed) and metrics["eval_examples"] == len(rows) == 64
    assert config["synthetic_data"] is False and config["data_source"].endswith(TASKS[task].data_folder)
    assert config["train_examples"] == 96 and read_jsonl(run_dir / "ranks.jsonl")[-1]["event"] == "final"


def test_a_resumed_adalora_run_continues_the_same_schedule(tiny_model, tmp_path):
    common = ("sst2", "--demo", "--model_name_or_path", tiny_model, "--method", "adalora", "--max_steps", "20",
              "--per_device_train_batch_size", "8", "--logging_steps", "1", "--eval_strategy", "no",
              "--save_strategy", "steps", "--save_steps", "10", "--save_total_limit", "2", "--seed", "3")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_task(*common, "--output_dir", str(straight)) == 0
    stop_and_resume(run_task, common, resumed, step=10)

    # Steps 11 to 20 hold the last pruning steps and the final allocation: they need the
    # importance averages and rank pattern of step 10, which the checkpoint carried.
    assert read_jsonl(resumed / "ranks.jsonl") == read_jsonl(straight / "ranks.jsonl")
    history = read_jsonl(resumed / "history.jsonl")
    assert [h["step"] for h in history if "loss" in h] == list(range(1, 21))  # no step logged twice
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-4)
    # The live parameters of the steps before the checkpoint travel with it: the same average.
    assert a["average_live_adapter_params"] < a["average_adapter_params"] == b["average_adapter_params"]
    assert b["average_live_adapter_params"] == pytest.approx(a["average_live_adapter_params"])
    assert b["final_live_adapter_params"] == a["final_live_adapter_params"] < a["average_live_adapter_params"]


def test_a_default_run_directory_is_named_by_the_resolved_budget(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_task("sst2", "--demo", "--model_name_or_path", tiny_model, "--method", "lora", "--lora_r", "8",
                    "--max_steps", "2", *QUICK) == 0
    (run_dir,) = (tmp_path / "runs" / "sst2").iterdir()
    assert run_dir.name.startswith("demo-lora-large-seed42-")  # r=8 is the paper's large budget
    config = json.loads((run_dir / "config.json").read_text())
    assert config["budget"] == "large" and config["run_dir"] == str(Path("runs") / "sst2" / run_dir.name)
    assert config["arguments"]["training"]["output_dir"] == str(Path("runs") / "sst2" / run_dir.name / "checkpoints")
