"""Ranks, budget, AdaLoRA's threshold and regulariser, growth and dev metrics reach the Trainer's
reporting integrations (run/scalars.py), read back with TensorBoard's own reader and from W&B's
offline run; and the adapter's model card."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.summary.writer import event_file_writer

from conftest import read_jsonl, run_task, stop_and_resume
from fixtures.wandb_log import history as wandb_history
from custom.plateau import register

register()  # --method plateau, as the entry scripts in src/custom make it known

ADALORA = ("--method", "adalora", "--max_steps", "20", "--tinit", "4", "--tfinal", "6", "--delta_t", "2",
           "--per_device_train_batch_size", "8", "--logging_steps", "2", "--eval_strategy", "steps",
           "--eval_steps", "10", "--max_eval_samples", "16", "--seed", "3")


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar curve of the run's TensorBoard files: tag -> [(step, value)], as TensorBoard shows them
    (steps a resumed run purged are gone)."""
    reader = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    reader.Reload()
    return {tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]}


def at(curve: list[tuple[int, float]], step: int) -> list[float]:
    return [value for s, value in curve if s == step]


def test_adalora_logs_its_allocation_as_ranks_jsonl_holds_it(tiny_model, tmp_path):
    run_dir = tmp_path / "a"
    assert run_task("sst2", "--demo", "--model_name_or_path", tiny_model, *ADALORA, "--report_to", "tensorboard",
                    "--output_dir", str(run_dir)) == 0
    curves = scalars(run_dir)
    assert not list((run_dir / "checkpoints").glob("**/events.out.tfevents*"))  # all of them in <run>/tensorboard
    records = read_jsonl(run_dir / "ranks.jsonl")
    prunes = [r for r in records if r["event"] == "prune"]
    assert prunes and all("mask_threshold" in r for r in prunes)
    for record in records:
        step = record["step"]
        assert record["total_rank"] in at(curves["Budget/total_rank"], step), record
        assert record["budget"] in at(curves["Budget/budget"], step), record
        for layer, kinds in record["ranks"].items():
            for kind, rank in kinds.items():
                assert rank in at(curves[f"Ranknum/{kind}/{layer}"], step), (record, kind, layer)
    for record in prunes:  # float32 in the event file
        assert at(curves["Budget/mask_threshold"], record["step"]) == [pytest.approx(record["mask_threshold"], rel=1e-6)]
    # The regulariser beside the task loss at every logging step, and gamma R the part of the loss it is.
    logged = [step for step, _ in curves["train/loss"]]
    assert [s for s, _ in curves["train/orth_regu_loss"]] == logged == list(range(2, 21, 2))
    config = json.loads((run_dir / "config.json").read_text())
    gamma = config["adapter"]["orth_reg_weight"]
    for (_, r), (_, weighted) in zip(curves["train/orth_regu_loss"], curves["train/regu_loss"]):
        assert weighted == pytest.approx(gamma * r, rel=1e-5) and r > 0
    assert {"Orth_regu_loss/lora_A", "Orth_regu_loss/lora_B"} <= set(curves)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {v for _, v in curves["train/num_train_param"]} == {metrics["adapter_params"]}
    # The live parameters: every triplet's until the mask first prunes, fewer after; the last one logged at
    # the final step is the run's final live count.
    live = [v for _, v in curves["train/num_live_param"]]
    assert live[0] == metrics["adapter_params"] and min(live) < live[0]
    assert live[-1] == metrics["final_live_adapter_params"]
    assert [s for s, _ in curves["Eval_sst2/accuracy"]] == [10, 20]

    card = (run_dir / "adapter" / "README.md").read_text()
    assert "adalora adapter for sst2" in card and f"eval_accuracy: {metrics['eval_accuracy']:.4f}" in card
    final = records[-1]
    assert f"Total rank {final['total_rank']}" in card and json.dumps(final["ranks"], indent=1) in card
    assert "--report_to tensorboard" in card  # the command that made it


def test_plateau_growth_events_reach_tensorboard(tiny_model, tmp_path):
    run_dir = tmp_path / "p"
    assert run_task("sst2", "--demo", "--model_name_or_path", tiny_model, "--max_steps", "16", "--eval_every", "4",
                    "--plateau_patience", "1", "--plateau_min_delta", "1e9", "--per_device_train_batch_size", "8",
                    "--logging_steps", "4", "--save_strategy", "no", "--report_to", "tensorboard",
                    "--output_dir", str(run_dir), method="plateau") == 0
    curves = scalars(run_dir)
    grows = [r for r in read_jsonl(run_dir / "ranks.jsonl") if r["event"] == "grow"]
    assert [(s, v) for s, v in curves["Growth/rank_added"]] == [(r["step"], 24) for r in grows] != []
    assert at(curves["Budget/total_rank"], 12)[-1] == 72  # after the growth at step 12 (none at the last step)
    assert at(curves["Budget/total_rank"], 16)[-1] == 72


def test_a_resumed_run_continues_the_same_curves_once(tiny_model, tmp_path, monkeypatch):
    common = ("sst2", "--demo", "--model_name_or_path", tiny_model, *ADALORA, "--report_to", "tensorboard",
              "--save_strategy", "steps", "--save_steps", "10", "--save_total_limit", "3", "--logging_steps", "1")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_task(*common, "--output_dir", str(straight)) == 0
    # Event files are named by the second and a counter of the process, and read in name order: from
    # 8 on, a file numbered 10 made in the same second as 9 is read before it.
    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(8))
    stop_and_resume(run_task, common, resumed, step=10)
    # One file a process segment: the final evaluation and rank record go to the training file.
    assert len(list((straight / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert len(list((resumed / "tensorboard").glob("events.out.tfevents.*"))) == 2
    a, b = scalars(straight), scalars(resumed)
    assert sorted(a) == sorted(b)
    for tag in a:
        assert [s for s, _ in b[tag]] == [s for s, _ in a[tag]], tag  # each step once, none missing
    for tag in ("Budget/total_rank", "Budget/budget", "Ranknum/query/0"):
        assert b[tag] == a[tag]


@pytest.mark.parametrize("method", [("--method", "increlora", "--tinit", "2", "--tfinal", "4", "--delta_t", "2"),
                                    ("--method", "sora")], ids=["increlora", "sora"])
def test_a_resumed_growing_or_gated_run_logs_its_ranks_at_every_step_once(tiny_model, tmp_path, monkeypatch, method):
    """A resumed run sent no ranks until its next ranks.jsonl record (IncreLoRA's curves stopped for the
    rest of the run once it had grown); and a record landing on a logging step gave that step two points."""
    common = ("sst2", "--demo", "--model_name_or_path", tiny_model, *method, "--max_steps", "12",
              "--per_device_train_batch_size", "8", "--logging_steps", "1", "--eval_strategy", "no", "--report_to",
              "tensorboard", "--save_strategy", "steps", "--save_steps", "6", "--save_total_limit", "3", "--seed", "3")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_task(*common, "--output_dir", str(straight)) == 0
    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(8))
    stop_and_resume(run_task, common, resumed, step=6)
    a, b = scalars(straight), scalars(resumed)
    ranked = [tag for tag in a if tag.startswith(("Ranknum/", "Budget/"))]
    assert ranked
    for tag in ranked:
        steps = [s for s, _ in a[tag]]
        assert steps == sorted(set(steps)) and set(range(1, 13)) <= set(steps), tag  # every step, once
        assert b[tag] == a[tag], tag


def test_nothing_is_written_without_report_to(tiny_model, tmp_path):
    run_dir = tmp_path / "none"
    assert run_task("sst2", "--demo", "--model_name_or_path", tiny_model, *ADALORA, "--report_to", "none",
                    "--output_dir", str(run_dir)) == 0
    assert not (run_dir / "tensorboard").exists()


def test_wandb_without_a_key_is_refused_before_the_run_directory_is_taken(tiny_model, tmp_path):
    pytest.importorskip("wandb", reason="wandb is not installed (requirements.txt installs it)")
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_") and key != "NETRC"}
    env.update(HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "config"), HF_HUB_OFFLINE="1")
    run_dir = tmp_path / "w"
    done = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "src" / "glue_sst2.py"), "--demo",
                           "--model_name_or_path", tiny_model, *ADALORA, "--report_to", "wandb",
                           "--output_dir", str(run_dir)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        "error: --report_to names wandb (all: every installed integration), and W&B has no API key here: run "
        "`wandb login` or set WANDB_API_KEY, set WANDB_MODE=offline to log to files, or name other integrations"]
    assert not run_dir.exists()


def test_a_wandb_key_in_netrc_is_found_as_wandb_finds_it(tmp_path, monkeypatch):
    """`wandb login` writes the key to ~/.netrc under the server's host and port; Python's netrc refuses,
    when no path is given, a file others can read, which W&B reads all the same."""
    from adarank.validation import _wandb_key_here

    for key in [k for k in os.environ if k.startswith("WANDB_") or k == "NETRC"]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not _wandb_key_here()
    netrc_file = tmp_path / ".netrc"
    netrc_file.write_text("machine localhost:8080\n  login user\n  password " + "k" * 40 + "\n")
    netrc_file.chmod(0o644)
    monkeypatch.setenv("WANDB_BASE_URL", "http://localhost:8080")
    assert _wandb_key_here()
    monkeypatch.setenv("WANDB_BASE_URL", "http://localhost:9090")
    assert not _wandb_key_here()


def test_wandb_offline_receives_the_same_keys(tiny_model, tmp_path):
    pytest.importorskip("wandb", reason="wandb is not installed (requirements.txt installs it)")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
           "HF_HUB_OFFLINE": "1"}
    run_dir = tmp_path / "w"
    done = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "src" / "glue_sst2.py"), "--demo",
                           "--model_name_or_path", tiny_model, *ADALORA, "--report_to", "wandb",
                           "--output_dir", str(run_dir)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    logs = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 1, list(tmp_path.glob("wandb/**/*"))
    logged = wandb_history(logs[0])
    records = read_jsonl(run_dir / "ranks.jsonl")
    assert {"Ranknum/query/0", "Orth_regu_loss/lora_A", "train/orth_regu_loss", "train/regu_loss",
            "train/num_train_param", "Eval_sst2/accuracy", "train/loss"} <= set(logged)
    assert set(logged["Budget/total_rank"]) == {r["total_rank"] for r in records}
    thresholds = [r["mask_threshold"] for r in records if "mask_threshold" in r]
    # each masking's threshold, sent at its step and again at the logging steps until the next one
    assert sorted(set(logged["Budget/mask_threshold"])) == pytest.approx(sorted(thresholds))
    assert "Eval_sst2/epoch" not in logged


def test_a_fixed_rank_adapter_card_names_its_saved_rank(tiny_model, tmp_path, capsys):
    run_dir = tmp_path / "l"
    assert run_task("cola", "--demo", "--model_name_or_path", tiny_model, "--method", "lora", "--budget", "large",
                    "--max_steps", "2", "--per_device_train_batch_size", "8", "--save_strategy", "no",
                    "--output_dir", str(run_dir)) == 0
    card = (run_dir / "adapter" / "README.md").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert card.startswith("# lora adapter for cola (large budget)")
    assert "Rank 8 in every adapted matrix (`LORA` adapter)." in card
    assert "eval_matthews_correlation: " in card and f"{metrics['adapter_params']:,}" in card
    assert "synthetic demo data" in card  # a demo run's card says its numbers mean nothing
    # The dev scores, not what evaluating cost (eval_seconds, eval_examples_per_second share the prefix).
    assert "eval_seconds" not in card and "eval_examples_per_second" not in card
    (dev,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("dev: ")]
    assert dev == (f"dev: eval_matthews_correlation {metrics['eval_matthews_correlation']:.4f}, "
                   f"eval_accuracy {metrics['eval_accuracy']:.4f}")
