"""A run sent SIGUSR1 or SIGTERM (what SLURM sends before a preemption or the time limit)
checkpoints at the next optimizer step, exits to be requeued, and the same command with
--resume_from_checkpoint auto ends where an uninterrupted run ends. Real processes, real signals."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adarank.run.preemption import COMPLETE_MARKER, PREEMPTED_EXIT_CODE, newest_complete_checkpoint
from conftest import QUICK, read_jsonl, run_task, steps_so_far
from fixtures.cli import fails_cleanly
from fixtures.paths import SRC

SCRIPTS = {"lora": SRC / "glue_sst2.py", "adalora": SRC / "glue_sst2.py", "plateau": SRC / "custom" / "glue_sst2.py"}


def command(method: str, tiny_model: str, run_dir: Path, per_epoch: bool = False) -> list[str]:
    """``per_epoch``: the defaults' evaluation and checkpoint every epoch (64 steps), logs every 10 steps."""
    every = ["--logging_steps", "10"] if per_epoch else ["--logging_steps", "1", "--eval_strategy", "no",
                                                          "--save_strategy", "no"]
    flags = ["--demo", "--model_name_or_path", tiny_model, "--max_steps", "200", "--max_train_samples", "256",
             "--per_device_train_batch_size", "4", *every, "--seed", "7", "--output_dir", str(run_dir),
             "--resume_from_checkpoint", "auto"]
    if method == "plateau":
        flags += ["--eval_every", "25", "--plateau_patience", "1", "--plateau_min_delta", "1e9"]
    else:
        flags += ["--method", method]
    return [sys.executable, str(SCRIPTS[method]), *flags]


def start(argv: list[str], log: Path) -> subprocess.Popen:
    """The command in its own process, its output to ``log`` (a pipe nobody reads would block it)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)


def finish(process: subprocess.Popen, log: Path) -> str:
    process.wait(timeout=600)
    return log.read_text()


def signal_at_step(process: subprocess.Popen, history: Path, step: int, signum: int) -> None:
    """Send ``signum`` once history.jsonl shows training past ``step``."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if any(s >= step for s in steps_so_far(history)):
            process.send_signal(signum)
            return
        time.sleep(0.01)
    raise AssertionError(f"the run ended or stalled before step {step} (exit {process.poll()})")


@pytest.mark.parametrize("method, signum, per_epoch", [
    ("adalora", signal.SIGUSR1, False), ("lora", signal.SIGTERM, False), ("plateau", signal.SIGUSR1, False),
    ("adalora", signal.SIGTERM, True)])
def test_a_signalled_run_resumes_to_the_result_of_an_uninterrupted_one(tiny_model, tmp_path, method, signum,
                                                                        per_epoch):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    command_for = lambda run_dir: command(method, tiny_model, run_dir, per_epoch)  # noqa: E731
    done = start(command_for(straight), tmp_path / "straight.log")
    output = finish(done, tmp_path / "straight.log")
    assert done.returncode == 0, output[-2000:]

    at = random.Random().randint(70, 130)  # in a later epoch (64 steps each), 70 steps before the end at least
    first = start(command_for(stopped), tmp_path / "first.log")
    signal_at_step(first, stopped / "history.jsonl", at, signum)
    output = finish(first, tmp_path / "first.log")
    assert first.returncode == PREEMPTED_EXIT_CODE, output[-2000:]
    assert f"{signal.Signals(signum).name} received" in output and not (stopped / "metrics.json").exists()
    checkpoint = newest_complete_checkpoint(stopped / "checkpoints")
    assert checkpoint is not None and int(checkpoint.name.split("-")[1]) >= at

    again = start(command_for(stopped), tmp_path / "again.log")  # what the requeued job runs
    output = finish(again, tmp_path / "again.log")
    assert again.returncode == 0, output[-2000:]
    assert f"Continuing from {checkpoint}" in output

    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, stopped))
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-5) and b["total_step"] == a["total_step"] == 200
    weights = load_file(straight / "adapter" / "adapter_model.safetensors")
    for key, value in load_file(stopped / "adapter" / "adapter_model.safetensors").items():
        torch.testing.assert_close(value, weights[key], rtol=1e-5, atol=1e-6)
    if method != "lora":  # the same allocation or growth events, logged once each
        assert read_jsonl(stopped / "ranks.jsonl") == read_jsonl(straight / "ranks.jsonl")
    # The same history: no evaluation or log that only the broken-off epoch would have made.
    a_history, b_history = (read_jsonl(d / "history.jsonl") for d in (straight, stopped))
    assert [(h["step"], sorted(h)) for h in b_history] == [(h["step"], sorted(h)) for h in a_history]
    stopped_at = int(checkpoint.name.split("-")[1])
    for a_record, b_record in zip(a_history, b_history):
        # The end-of-training summary times and averages the steps this process ran, not the whole run,
        # and the first loss logged after resuming averages the steps since the resume.
        skip = {"step", "epoch", "train_loss"} | ({"loss"} if stopped_at < a_record["step"] < stopped_at + 10 else set())
        measured = [k for k in a_record if k not in skip and "runtime" not in k and "per_second" not in k]
        assert [b_record[k] for k in measured] == pytest.approx([a_record[k] for k in measured], rel=1e-4)


def test_auto_skips_a_half_written_checkpoint_and_starts_fresh_without_one(tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    args = ("sst2", "--demo", "--model_name_or_path", tiny_model, "--method", "adalora", "--max_steps", "12",
            "--save_strategy", "steps", "--save_steps", "4", "--save_total_limit", "5",
            "--output_dir", str(run_dir), *QUICK[:4])
    assert run_task(*args, "--resume_from_checkpoint", "auto") == 0  # nothing to continue: a fresh start
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-12", "checkpoint-4",
                                                                            "checkpoint-8"]
    (run_dir / "checkpoints" / "checkpoint-12" / COMPLETE_MARKER).unlink()  # as if killed while saving it
    assert newest_complete_checkpoint(run_dir / "checkpoints").name == "checkpoint-8"


def test_auto_starts_over_where_every_checkpoint_is_incomplete(tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    args = ("sst2", "--demo", "--model_name_or_path", tiny_model, "--method", "lora", "--max_steps", "8",
            "--save_strategy", "steps", "--save_steps", "4", "--output_dir", str(run_dir), *QUICK[:4])
    assert run_task(*args) == 0
    (run_dir / "metrics.json").unlink()
    for marker in (run_dir / "checkpoints").glob(f"*/{COMPLETE_MARKER}"):
        marker.unlink()  # killed while saving, and the Trainer had already removed the older checkpoint
    assert run_task(*args, "--resume_from_checkpoint", "auto") == 0
    assert json.loads((run_dir / "metrics.json").read_text())["resumed_from_step"] is None


@pytest.mark.parametrize("marker", ['{"files": []}', '{"files": {"adapter_model.safetensors": 3}}', "[]"])
def test_auto_skips_a_checkpoint_whose_marker_is_not_a_manifest(tmp_path, marker):
    from adarank.run.integrity import intact_checkpoints

    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text('{"global_step": 4}')
    (checkpoint / COMPLETE_MARKER).write_text(marker)  # valid JSON, but not the manifest a save writes
    [(folder, problem)] = intact_checkpoints(tmp_path)
    assert folder == checkpoint and problem.startswith(f"has a damaged {COMPLETE_MARKER}")


def test_auto_on_a_finished_run_does_nothing(tiny_model, tmp_path, capsys):
    run_dir = tmp_path / "done"
    args = ("sst2", "--demo", "--model_name_or_path", tiny_model, "--method", "lora", "--max_steps", "2",
            "--output_dir", str(run_dir), *QUICK)
    assert run_task(*args) == 0
    before = (run_dir / "metrics.json").read_text()
    assert run_task(*args, "--resume_from_checkpoint", "auto") == 0
    assert "already holds a finished run: nothing to do" in capsys.readouterr().out
    assert (run_dir / "metrics.json").read_text() == before


def test_auto_needs_the_run_directory(tiny_model, capsys):
    line = fails_cleanly(capsys, "sst2", "--demo", "--model_name_or_path", tiny_model, "--resume_from_checkpoint", "auto",
                         one_line=True)
    assert line == "error: --resume_from_checkpoint auto needs --output_dir: the run directory to continue"


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_the_job_script_passes_the_signal_on_and_a_second_submission_finishes(tiny_model, tmp_path, signum):
    """script/run_glue.sh as SLURM's batch shell: the signal reaches the batch shell (--signal=B:USR1),
    which passes it to the run; outside SLURM the script exits 75 instead of requeueing."""
    (tmp_path / "src").symlink_to(SRC)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SLURM_SUBMIT_DIR": str(tmp_path), "PYTHON": sys.executable}
    env.pop("SLURM_JOB_ID", None)
    job = [str(SRC.parent / "script" / "run_glue.sh"), "sst2", "lora", "small", "7", "--demo",
           "--model_name_or_path", tiny_model, "--max_steps", "300", "--per_device_train_batch_size", "8",
           "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no"]
    run_dir = tmp_path / "runs" / "sst2" / "lora-small-seed7"
    with open(tmp_path / "first.log", "w") as out:
        first = subprocess.Popen(["bash", *job], stdout=out, stderr=subprocess.STDOUT, env=env)
    signal_at_step(first, run_dir / "history.jsonl", 10, signum)
    assert first.wait(timeout=600) == PREEMPTED_EXIT_CODE, (tmp_path / "first.log").read_text()[-2000:]
    assert newest_complete_checkpoint(run_dir / "checkpoints") is not None
    second = subprocess.run(["bash", *job], capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert json.loads((run_dir / "metrics.json").read_text())["total_step"] == 300


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_a_run_stopped_after_its_final_checkpoint_resumes_without_another_step(tiny_model, tmp_path, method):
    """Stopped between its last checkpoint (at --max_steps, mid-epoch) and its results, a run resumed with
    auto trained a fifth step of four: the Trainer takes a step before it compares the step with max_steps."""
    run = tmp_path / method
    argv = ("--demo", "--method", method, "--model_name_or_path", tiny_model, "--max_steps", "4", "--max_eval_samples",
            "8", "--per_device_train_batch_size", "8", "--logging_steps", "1", "--save_strategy", "steps",
            "--save_steps", "2", "--output_dir", str(run))
    assert run_task("cola", *argv) == 0
    whole = json.loads((run / "metrics.json").read_text())
    ranks = (run / "ranks.jsonl").read_text() if method == "adalora" else None
    history = read_jsonl(run / "history.jsonl")
    (run / "metrics.json").unlink()  # as a run stopped after its final checkpoint
    assert run_task("cola", *argv, "--resume_from_checkpoint", "auto") == 0
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["resumed_from_step"] == 4 and resumed["total_step"] == whole["total_step"] == 4
    assert {k: resumed[k] for k in ("train_loss", "eval_loss", "eval_matthews_correlation")} == \
        {k: whole[k] for k in ("train_loss", "eval_loss", "eval_matthews_correlation")}
    assert ranks is None or (run / "ranks.jsonl").read_text() == ranks  # its final record at step 4 still
    # the history's (and TensorBoard's) train_loss is the run's, as metrics.json's: it was this process's mean
    assert [h["train_loss"] for h in read_jsonl(run / "history.jsonl") if "train_loss" in h][-1] == \
        resumed["train_loss"] == whole["train_loss"]
    assert max(h["step"] for h in read_jsonl(run / "history.jsonl")) == max(h["step"] for h in history) == 4
