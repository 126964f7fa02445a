"""script/slurm/run_glue.sh on a real SLURM cluster (one node on localhost: script/slurm/slurm-local.sh):
a job told to stop (USR1 to its batch shell, as --signal=B:USR1 does before the time limit)
checkpoints, requeues itself, and the requeued job ends where an uninterrupted run ends."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import read_jsonl
from fixtures.glue import write_sst2_folder
from fixtures.paths import ROOT

# One pytest worker runs them all, one after another: the node has two CPUs, and the two-task job needs both.
pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]


def cluster_idle() -> str | None:
    """None where a SLURM node is idle here, else why the test cannot run."""
    if shutil.which("sbatch") is None:
        return ("SLURM is not installed here "
                "(bash script/slurm/slurm-local.sh start installs and starts a local cluster)")
    deadline = time.monotonic() + 120
    while True:
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
        if "idle" in state.stdout.split():
            return None
        # A running cluster whose node is still busy (the previous test's job completing): wait for it.
        busy = {"mixed", "allocated", "completing"} & {word.rstrip("*~#-") for word in state.stdout.split()}
        if not busy or time.monotonic() > deadline:
            return f"no idle SLURM node (sinfo: {(state.stdout + state.stderr).strip()[:200] or 'nothing'})"
        time.sleep(1)


def job_state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def wait_for(condition, what: str, seconds: int = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def stop_requeue_and_finish(job: str, history: Path, log: Path) -> None:
    """Signal a running job as SLURM does before its time limit, see it requeue itself, and let it finish."""
    try:
        wait_for(lambda: history.is_file() and len(read_jsonl(history)) > 20, "the job's first steps")
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)
        wait_for(lambda: job_state(job) == "PENDING", "the job to requeue itself")
        text = log.read_text(errors="replace")
        assert "SIGUSR1 received" in text and f"requeueing job {job}" in text
        # A requeued job waits before it may start again; a test need not, once the node has cleaned up
        # after the first start (sooner, slurmd refuses the job: "Job credential revoked").
        wait_for(lambda: "idle" in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                                  timeout=30).stdout.split(), "the node to be idle again")
        time.sleep(2)
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
        wait_for(lambda: job_state(job) == "", "the requeued job to finish", seconds=600)
    finally:
        subprocess.run(["scancel", job], timeout=30)


def job_setup(tmp_path: Path, tiny_model: str, steps: int, *extra: str) -> tuple[list, dict, Path]:
    """The job's flags (AdaLoRA on demo data, batch 2, a loss logged every step), its environment,
    and its run directory; the job runs a copy of its script, which finds job.sh in tmp_path/script/slurm."""
    for folder in ("src", "script"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    flags = ["sst2", "adalora", "small", "7", "--demo", "--model_name_or_path", tiny_model, "--max_steps", str(steps),
             "--per_device_train_batch_size", "2", "--logging_steps", "1", "--eval_strategy", "no",
             "--save_strategy", "no", *extra]
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    env.update(PYTHON=sys.executable, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return flags, env, tmp_path / "runs" / "sst2" / "adalora-small-seed7"


def reference_run(tmp_path: Path, flags: list, env: dict, **more_env: str) -> Path:
    """The same job run straight through with plain bash, outside SLURM; its run directory."""
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "src").symlink_to(ROOT / "src")
    straight = subprocess.run(["bash", str(ROOT / "script" / "slurm" / "run_glue.sh"), *flags], capture_output=True,
                              text=True, env={**env, "SLURM_SUBMIT_DIR": str(reference), **more_env}, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    return reference / "runs" / "sst2" / "adalora-small-seed7"


def test_a_job_told_to_stop_requeues_itself_and_finishes_as_an_uninterrupted_run(tiny_model, tmp_path):
    """Stopped in the first of its 3 epochs (256 steps of batch 2, 600 in all: far more than run in the
    moment between the signal and the checkpoint); test_preemption stops runs in later epochs."""
    reason = cluster_idle()
    if reason:
        pytest.skip(reason)
    flags, env, run_dir = job_setup(tmp_path, tiny_model, 600)
    reference = reference_run(tmp_path, flags, env)

    # The script's GPU and memory requests, scaled down to this one-node CPU cluster. Submitted through the
    # link users know (script/run_glue.sh -> script/slurm/run_glue.sh); the job runs a copy of the file.
    submit = subprocess.run(
        ["sbatch", "--parsable", "--gres=gpu:0", "--cpus-per-task=1", "--mem=2G", "--chdir", str(tmp_path),
         "--export=ALL", "-o", str(tmp_path / "job-%j.out"), str(ROOT / "script" / "run_glue.sh"), *flags],
        capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)  # the job's SLURM_SUBMIT_DIR
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip().split(";")[0]
    stop_requeue_and_finish(job, run_dir / "history.jsonl", tmp_path / f"job-{job}.out")
    log = (tmp_path / f"job-{job}.out").read_text()
    assert "Continuing from runs/sst2/adalora-small-seed7/checkpoints/checkpoint-" in log, log[-2000:]

    a = json.loads((reference / "metrics.json").read_text())
    b = json.loads((run_dir / "metrics.json").read_text())
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-5) and b["total_step"] == 600
    assert read_jsonl(run_dir / "ranks.jsonl") == read_jsonl(reference / "ranks.jsonl")
    assert [h["step"] for h in read_jsonl(run_dir / "history.jsonl") if "loss" in h] == list(range(1, 601))


def test_a_job_of_two_tasks_trains_through_srun_and_ends_as_the_same_run_under_torchrun(tiny_model, tmp_path):
    """The path across nodes, on one node: with two tasks in the allocation, srun starts the two DDP
    processes (script/slurm/srun_task.sh), forwards the batch shell's signal to both, and the requeued job
    ends exactly where two processes under torchrun (NPROC=2, no SLURM) end."""
    reason = cluster_idle()
    if reason:
        pytest.skip(reason)
    flags, env, run_dir = job_setup(tmp_path, tiny_model, 400, "--max_eval_samples", "32")
    reference = reference_run(tmp_path, flags, env, NPROC="2")

    submit = subprocess.run(
        ["sbatch", "--parsable", "--ntasks=2", "--gres=gpu:0", "--cpus-per-task=1", "--mem=3G", "--chdir",
         str(tmp_path), "--export=ALL", "-o", str(tmp_path / "job-%j.out"),
         str(ROOT / "script" / "slurm" / "run_glue.sh"), *flags],
        capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip().split(";")[0]
    log = tmp_path / f"job-{job}.out"
    stop_requeue_and_finish(job, run_dir / "history.jsonl", log)
    text = log.read_text(errors="replace")  # two tasks' progress bars interleave
    assert text.count("SIGUSR1 received") == 2, text[-3000:]  # srun passed the signal to both tasks

    config = json.loads((run_dir / "config.json").read_text())
    assert config["environment"]["processes"] == 2 and config["environment"]["slurm_job"] == job
    a = json.loads((reference / "metrics.json").read_text())
    b = json.loads((run_dir / "metrics.json").read_text())
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-5) and b["resumed_from_step"] > 20
    assert read_jsonl(run_dir / "ranks.jsonl") == read_jsonl(reference / "ranks.jsonl")


def test_the_matrix_runs_as_an_array_and_its_report_job_writes_the_tables(tiny_model, tmp_path):
    reason = cluster_idle()
    if reason:
        pytest.skip(reason)
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "RUNS": str(runs),
           # the array's GPU and memory requests, scaled down to this one-node CPU cluster
           "SBATCH_EXTRA": "--gres=gpu:0 --cpus-per-task=1 --mem=1G", "SBATCH_REPORT_EXTRA": "--mem=1G"}
    argv = ["bash", str(ROOT / "script" / "slurm" / "run_matrix.sh"), "--tasks", "sst2", "--methods", "lora adalora",
            "--budgets", "small", "--seeds", "1", "--", "--data_dir", str(write_sst2_folder(tmp_path / "glue")),
            "--model_name_or_path", tiny_model,
            "--max_steps", "6", "--save_strategy", "no", "--max_train_samples", "64", "--max_eval_samples", "32"]
    submit = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert submit.returncode == 0, submit.stderr
    report_job = submit.stdout.split("report job ")[1].split()[0]
    array_job = submit.stdout.split("submitted array job ")[1].split()[0]
    try:
        wait_for(lambda: job_state(report_job) == "" and job_state(array_job) == "", "the array and its report",
                 seconds=600)
    finally:
        subprocess.run(["scancel", array_job, report_job], timeout=30)
    for method in ("lora", "adalora"):
        assert (runs / "sst2" / f"{method}-small-seed1" / "metrics.json").is_file(), method
    assert "adalora - lora" in (runs / "tables.md").read_text()
    assert (runs / "report.html").stat().st_size > 1000
    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 0 and "nothing to submit" in again.stdout
