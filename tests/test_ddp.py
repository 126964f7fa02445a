"""Two processes with DDP on the CPU (torchrun, gloo), against one process with the same global batch.
SoRA's gates step outside the optimizer, on gradients it averages across the processes itself: the
processes end with equal folded adapters only if that average is taken."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import read_jsonl, run_task
from test_scalars import scalars

HERE = Path(__file__).resolve().parent
STEPS = 8


@pytest.mark.parametrize("method", ["lora", "adalora", "sora"])
def test_two_processes_train_as_one_with_the_same_global_batch(method, tiny_model, tmp_path):
    flags = ["--demo", "--model_name_or_path", tiny_model, "--method", method, "--max_steps", str(STEPS),
             "--logging_steps", "1", "--save_strategy", "no", "--eval_strategy", "no", "--max_eval_samples", "32",
             "--learning_rate", "1e-3", "--report_to", "tensorboard"]
    env = {**os.environ, "DUMP": str(tmp_path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(HERE / "ddp_driver.py"), "sst2", *flags, "--per_device_train_batch_size", "4",
                           "--output_dir", str(tmp_path / "ddp")], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert run_task("sst2", *flags, "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "one")) == 0

    # Both processes end with the same adapters (and AdaLoRA masks): DDP averaged their gradients.
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["tensors"].keys() == ranks[1]["tensors"].keys()
    for name, tensor in ranks[0]["tensors"].items():
        assert torch.equal(tensor, ranks[1]["tensors"][name]), name
    assert ranks[0]["rank_pattern"] == ranks[1]["rank_pattern"]

    ddp, one = (tmp_path / "ddp", tmp_path / "one")
    config = json.loads((ddp / "config.json").read_text())
    assert config["total_step"] == STEPS and config["arguments"]["training"]["use_cpu"]  # gloo DDP on CPUs
    # The loss is the mean over the global batch, not scaled by the number of processes: at the start
    # both runs stand at the untrained model's loss (LoRA: about ln 2 for two classes; AdaLoRA adds
    # its orthogonal regulariser).
    first = [next(r["loss"] for r in read_jsonl(run / "history.jsonl") if "loss" in r) for run in (ddp, one)]
    assert first[0] == pytest.approx(first[1], rel=0.05)
    if method == "lora":
        assert first[0] == pytest.approx(0.693, rel=0.05)
    # Only process 0 writes: one record per event, every dev example once.
    if method == "adalora":
        events = [r["event"] for r in read_jsonl(ddp / "ranks.jsonl")]
        assert events.count("initial") == 1 and events.count("final") == 1
        assert [r["step"] for r in read_jsonl(ddp / "ranks.jsonl")] == [r["step"] for r in read_jsonl(one / "ranks.jsonl")]
        # One writer of TensorBoard events (a file name ends in <host>.<pid>.<n>), with one process's curves.
        assert len({f.name.split(".")[-2] for f in (ddp / "tensorboard").glob("events.out.tfevents.*")}) == 1
        steps = [[s for s, _ in scalars(run)["Budget/total_rank"]] for run in (ddp, one)]
        assert steps[0] == steps[1]
    rows = [line for line in (ddp / "predictions.tsv").read_text().splitlines() if not line.startswith("#")][1:]
    assert len(rows) == 32 and len({tuple(r.split("\t")[:2]) for r in rows}) == 32
    # Same global batch and steps, other data order: the dev loss agrees to within 2%.
    losses = [json.loads((run / "metrics.json").read_text())["eval_loss"] for run in (ddp, one)]
    assert losses[0] == pytest.approx(losses[1], rel=0.02)


def test_a_signalled_two_process_job_stops_together_and_resumes_to_the_uninterrupted_result(tiny_model, tmp_path):
    """script/run_glue.sh with NPROC=2 (torchrun) as a batch shell that SLURM signals: the signal goes
    to both workers, which stop at the same step, checkpoint and exit 75; run again, the job ends as
    an uninterrupted two-process run."""
    from safetensors.torch import load_file

    from test_preemption import signal_at_step

    root = HERE.parent
    (tmp_path / "src").symlink_to(root / "src")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "NPROC": "2", "PYTHON": sys.executable,
           "SLURM_SUBMIT_DIR": str(tmp_path)}
    env.pop("SLURM_JOB_ID", None)
    job = ["bash", str(root / "script" / "run_glue.sh"), "sst2", "adalora", "small", "7", "--demo",
           "--model_name_or_path", tiny_model, "--max_steps", "160", "--per_device_train_batch_size", "2",
           "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no", "--max_eval_samples", "32"]
    runs = {name: tmp_path / name / "sst2" / "adalora-small-seed7" for name in ("straight", "stopped")}
    straight = subprocess.run(job, capture_output=True, text=True, env={**env, "RUNS": str(tmp_path / "straight")},
                              timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    with open(tmp_path / "first.log", "w") as out:
        first = subprocess.Popen(job, stdout=out, stderr=subprocess.STDOUT, env={**env, "RUNS": str(tmp_path / "stopped")})
    signal_at_step(first, runs["stopped"] / "history.jsonl", 70, signal.SIGUSR1)
    assert first.wait(timeout=600) == 75, (tmp_path / "first.log").read_text()[-3000:]
    again = subprocess.run(job, capture_output=True, text=True, env={**env, "RUNS": str(tmp_path / "stopped")},
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Continuing from" in again.stdout + again.stderr
    a, b = (json.loads((run / "metrics.json").read_text()) for run in runs.values())
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-5) and b["resumed_from_step"] >= 70
    weights = load_file(runs["straight"] / "adapter" / "adapter_model.safetensors")
    for key, value in load_file(runs["stopped"] / "adapter" / "adapter_model.safetensors").items():
        torch.testing.assert_close(value, weights[key], rtol=1e-5, atol=1e-6)
    assert read_jsonl(runs["stopped"] / "ranks.jsonl") == read_jsonl(runs["straight"] / "ranks.jsonl")
