"""The faults a cluster job meets, survived or refused: SIGKILL at a random step, a damaged
checkpoint, a disk that fills up, a read-only run directory. Real runs of a tiny model; the disks
are tmpfs mounts (the tests that need one are skipped, saying why, where mount is refused)."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adarank.errors import UsageError
from adarank.run.directory import RunDirectory
from adarank.run.integrity import COMPLETE_MARKER, checkpoint_problem
from adarank.run.preemption import newest_complete_checkpoint
from adarank.run.space import refusing_a_full_disk
from conftest import run_task, steps_so_far
from fixtures.cli import error_line, fails_cleanly, without_progress_bars
from fixtures.paths import SRC


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(size, *options)``: a fresh tmpfs of ``size`` under tmp_path; unmounted afterwards."""
    mounted = []

    def mount(size: str, *options: str) -> Path:
        target = tmp_path / f"disk{len(mounted)}"
        target.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs",
                               str(target)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"this machine refuses to mount a tmpfs ({done.stderr.strip() or done.returncode}): "
                        "the full-disk and read-only tests need one (run them as root)")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], check=False)


def remount(target: Path, *options: str) -> None:
    subprocess.run(["mount", "-o", ",".join(["remount", *options]), str(target)], check=True)


def lora_argv(tiny_model: str, run_dir: Path, steps: int = 12, *more: str) -> list[str]:
    return ["--demo", "--model_name_or_path", tiny_model, "--method", "lora", "--max_steps", str(steps),
            "--per_device_train_batch_size", "8", "--logging_steps", "1", "--eval_strategy", "no",
            "--save_strategy", "steps", "--save_steps", "4", "--save_total_limit", "5",
            "--output_dir", str(run_dir), "--resume_from_checkpoint", "auto", *more]


# --- SIGKILL at a random step --------------------------------------------------------------------

def test_a_killed_run_resumes_to_the_result_of_an_uninterrupted_one(tiny_model, tmp_path):
    """SIGKILL gives no chance to checkpoint: the run continues from its newest complete checkpoint
    (one being written when the kill came is incomplete and skipped) and ends where an
    uninterrupted run ends. Each run is a process of its own, as on a cluster."""
    flags = ["--max_train_samples", "64", "--per_device_train_batch_size", "4", "--seed", "5",
             "--save_steps", "10", "--save_total_limit", "2"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    command = lambda run_dir: [sys.executable, str(SRC / "glue_sst2.py"), *lora_argv(tiny_model, run_dir, 60, *flags)]  # noqa: E731
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command(straight), capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    at = random.Random().randint(12, 45)  # a later epoch (16 steps each) than the first
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(command(killed), stdout=log, stderr=subprocess.STDOUT, env=env)
    history, deadline = killed / "history.jsonl", time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline and not (
            any(s >= at for s in steps_so_far(history))):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
    assert not (killed / "metrics.json").exists()
    checkpoint = newest_complete_checkpoint(killed / "checkpoints")
    assert checkpoint is not None, "killed before the first checkpoint"

    done = subprocess.run(command(killed), capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"Continuing from {checkpoint}" in done.stdout
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, killed))
    assert b["resumed_from_step"] == int(checkpoint.name.split("-")[1]) and b["total_step"] == a["total_step"] == 60
    for key in ("eval_loss", "eval_accuracy", "train_loss"):  # train_loss: over the whole run, both times
        assert b[key] == pytest.approx(a[key], rel=1e-5), key
    weights = load_file(straight / "adapter" / "adapter_model.safetensors")
    for key, value in load_file(killed / "adapter" / "adapter_model.safetensors").items():
        torch.testing.assert_close(value, weights[key], rtol=1e-5, atol=1e-6)


# --- a damaged newest checkpoint -----------------------------------------------------------------

@pytest.fixture(scope="module")
def stopped_adalora(tiny_model, tmp_path_factory):
    """An AdaLoRA run with checkpoints at steps 4, 8 and 12, as if stopped after the last one, and
    the metrics of the uninterrupted run."""
    run_dir = tmp_path_factory.mktemp("adalora") / "run"
    argv = ["--demo", "--model_name_or_path", tiny_model, "--method", "adalora", "--max_steps", "12",
            "--per_device_train_batch_size", "8", "--logging_steps", "1", "--save_strategy", "steps",
            "--save_steps", "4", "--save_total_limit", "5", "--output_dir", str(run_dir)]
    assert run_task("sst2", *argv) == 0
    finished = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").unlink()
    return run_dir, argv, finished


DAMAGES = {
    "emptied adapter_model.safetensors": ("adapter_model.safetensors", lambda p: p.write_bytes(b""),
                                          "has adapter_model.safetensors of 0 bytes"),
    "missing trainer_state.json": ("trainer_state.json", Path.unlink, "lacks trainer_state.json"),
    "truncated optimizer.pt": ("optimizer.pt", lambda p: os.truncate(p, 100), "has optimizer.pt of 100 bytes"),
    "missing method state": ("adalora_allocator.pt", Path.unlink, "lacks adalora_allocator.pt"),
    "garbage optimizer.pt": ("optimizer.pt", lambda p: p.write_bytes(os.urandom(p.stat().st_size)),
                             "has optimizer.pt changed since it was saved"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_auto_skips_a_damaged_checkpoint_for_the_newest_intact_one(stopped_adalora, tmp_path, caplog, capsys,
                                                                   damage):
    template, argv, finished = stopped_adalora
    run_dir = shutil.copytree(template, tmp_path / "run")
    name, spoil, problem = DAMAGES[damage]
    spoil(run_dir / "checkpoints" / "checkpoint-12" / name)
    argv = [a if a != str(template) else str(run_dir) for a in argv]

    explicit = fails_cleanly(capsys, "sst2", *argv, "--resume_from_checkpoint",
                             str(run_dir / "checkpoints" / "checkpoint-12"), one_line=True)
    assert f"checkpoint-12 {problem}" in explicit

    assert run_task("sst2", *argv, "--resume_from_checkpoint", "auto") == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "Skipping" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"Skipping {run_dir}/checkpoints/checkpoint-12: it {problem}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 8 and metrics["total_step"] == 12
    # The training loss of the whole run, as the uninterrupted run reported it.
    assert metrics["train_loss"] == pytest.approx(finished["train_loss"], rel=1e-6)
    assert metrics["eval_loss"] == pytest.approx(finished["eval_loss"], rel=1e-5)


def test_auto_starts_over_where_no_checkpoint_is_intact(stopped_adalora, tmp_path, caplog):
    template, argv, _ = stopped_adalora
    run_dir = shutil.copytree(template, tmp_path / "run")
    for folder in (run_dir / "checkpoints").iterdir():
        (folder / "adapter_model.safetensors").write_bytes(b"")
    argv = [a if a != str(template) else str(run_dir) for a in argv]
    assert run_task("sst2", *argv, "--resume_from_checkpoint", "auto") == 0
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("Skipping" in m for m in messages) == 3 and any("No intact checkpoint" in m for m in messages)
    assert json.loads((run_dir / "metrics.json").read_text())["resumed_from_step"] is None


# --- a full disk, a read-only directory ----------------------------------------------------------

def test_a_disk_that_fills_during_a_checkpoint_stops_the_run_in_one_line_and_auto_continues(tiny_model, tmpfs, capsys):
    disk = tmpfs("2m")  # a tiny model's checkpoint is about 0.75 MB (mostly the tokenizer): two fit, not three
    run_dir = disk / "run"
    code = run_task("sst2", *lora_argv(tiny_model, run_dir))
    line = error_line(code, without_progress_bars(capsys.readouterr().err), one_line=True)
    assert f"no space left on the device of {run_dir}/checkpoints/checkpoint-12 while writing the checkpoint of " \
           "step 12" in line and "MB needed" in line and "continue from checkpoint-8" in line
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-8"]
    assert checkpoint_problem(run_dir / "checkpoints" / "checkpoint-8") is None  # the half-written one is gone
    assert not (run_dir / "metrics.json").exists()

    remount(disk, "size=16m")  # space freed
    assert run_task("sst2", *lora_argv(tiny_model, run_dir)) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 8 and metrics["total_step"] == 12


def test_a_full_disk_leaves_no_document_half_written(tmpfs):
    disk = tmpfs("64k")
    subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=4k"], capture_output=True)  # until full
    run = RunDirectory(disk)
    with pytest.raises(UsageError, match=f"no space left on the device of {disk} while writing metrics.json"), \
            refusing_a_full_disk(disk, 100_000, "metrics.json", lambda: "rerun"):
        run.write_json("metrics.json", {"eval_accuracy": 0.5, "padding": "x" * 100_000})
    assert [p.name for p in disk.iterdir()] == ["filler"]  # no metrics.json, no temporary file


def test_too_little_free_space_is_refused_before_anything_is_written(tiny_model, tmpfs, capsys):
    disk = tmpfs("2m")
    (disk / "filler").write_bytes(b"\0" * 1_600_000)
    line = fails_cleanly(capsys, "sst2", *lora_argv(tiny_model, disk / "run"), one_line=True)
    assert f"{disk} has 0." in line and "MB free, and a run needs about 1.0 MB" in line
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_a_read_only_output_directory_is_refused_in_one_line(tiny_model, tmpfs, capsys):
    disk = tmpfs("1m")
    (disk / "run").mkdir()
    (disk / "run" / "metrics.json").write_text('{"eval_accuracy": 0.9}')
    remount(disk, "ro")
    for target in (disk / "run", disk / "new"):
        line = fails_cleanly(capsys, "sst2", *lora_argv(tiny_model, target, 12, "--overwrite_output_dir"),
                             one_line=True)
        assert f"--output_dir {target} is not writable" in line and "Read-only file system" in line
    assert sorted(p.name for p in disk.rglob("*")) == ["metrics.json", "run"]
