"""Stopping cleanly when the cluster asks: a checkpoint at the next optimizer step, then exit.

SLURM sends SIGUSR1 (``--signal=B:USR1@<seconds>``) or SIGTERM before a job's
time limit or a preemption. The run then saves a checkpoint at the end of the
optimizer step in progress (a TrainerCallback, not a kill), stops, and exits
with ``PREEMPTED_EXIT_CODE``, which the job scripts turn into a requeue; the
same command with ``--resume_from_checkpoint auto`` continues from there.
A checkpoint is complete once every callback has added its state to it: the
last callback then writes ``COMPLETE_MARKER`` with the manifest of its files, and only
checkpoints found complete and intact (``run/integrity.py``) are resumed from automatically.
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import torch
from transformers import TrainerCallback

from adarank.errors import UsageError
from adarank.run.directory import RunDirectory, checkpoint_folder
from adarank.run.same_run import check_same_run
from adarank.run.integrity import COMPLETE_MARKER, intact_checkpoints, mark_complete

log = logging.getLogger("adarank")

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: try again later
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopOnSignal(TrainerCallback):
    """Turns SIGUSR1 or SIGTERM into a checkpoint and a stop at the next optimizer step.

    The stop breaks the epoch off, and the Trainer then runs its end-of-epoch hooks: the
    checkpoint is taken there, once, and an evaluation or log that only the broken-off epoch
    would trigger is skipped, so the resumed run repeats the uninterrupted one exactly.
    """

    def __init__(self):
        self.received: int | None = None
        self._previous = {sig: signal.signal(sig, self._note) for sig in SIGNALS}

    def _note(self, signum, frame) -> None:
        self.received = signum

    def on_step_end(self, args, state, control, **kwargs):
        if _any_process(self.received is not None, args.device):  # every process stops at the same step
            self.received = self.received or signal.SIGUSR1
            control.should_training_stop = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.received is not None:
            if abs(state.epoch - round(state.epoch)) > 1e-6:  # broken off, not a real epoch end
                control.should_evaluate = control.should_log = False
            control.should_save = True

    def restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def signal_name(self) -> str | None:
        return None if self.received is None else signal.Signals(self.received).name


def _any_process(flag: bool, device) -> bool:
    """Whether ``flag`` holds on any process of a multi-process run (itself, in a single process):
    the signal reaches the processes at slightly different steps, and they must stop together."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


class MarkCheckpointComplete(TrainerCallback):
    """Placed after every other callback: their ``on_save`` state is in the checkpoint by now."""

    def on_save(self, args, state, control, **kwargs):
        folder = checkpoint_folder(args.output_dir, state.global_step)
        if state.is_world_process_zero and folder.is_dir():
            mark_complete(folder)


def newest_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The checkpoint of the latest step whose saving finished (a half-written one is ignored)."""
    complete = [p for p in checkpoints.glob("checkpoint-*") if (p / COMPLETE_MARKER).is_file()]
    return max(complete, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)


def resolve_auto_resume(args, task: str) -> dict | None:
    """--resume_from_checkpoint auto: the run directory's newest complete checkpoint, or a fresh
    start where there is none; a run that already finished is reported, not repeated. A run of
    another task or method in the directory is refused (and one started with other adapter flags, where a
    checkpoint of it is resumed: ``integrity.resumable_step``)."""
    if args.run_dir is None:
        raise UsageError("--resume_from_checkpoint auto needs --output_dir: the run directory to continue")
    run = RunDirectory(args.run_dir)
    if not args.run.overwrite_output_dir:
        check_same_run(run.path, task, args.adapter.method, f"--output_dir {run.path}",
                       "choose another --output_dir, or pass --overwrite_output_dir to replace it")
        if run.finished:
            print(f"{run.path} already holds a finished run: nothing to do", flush=True)
            return _finished_metrics(run)
    newest = None
    for folder, problem in intact_checkpoints(run.checkpoints):
        if problem is None:
            newest = folder
            break
        log.warning("Skipping %s: it %s.", folder, problem)
    args.training.resume_from_checkpoint = None if newest is None else str(newest)
    if newest is not None:
        log.info("Continuing from %s.", newest)
    elif any(run.checkpoints.glob("checkpoint-*")):
        log.warning("No intact checkpoint in %s: starting over.", run.checkpoints)
        args.run.overwrite_output_dir = True
    return None


def _finished_metrics(run: RunDirectory) -> dict:
    """The metrics.json of a finished run; a damaged one (not a JSON object) is refused in one line."""
    path = run / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        metrics = None
    if not isinstance(metrics, dict):
        raise UsageError(f"{path} is damaged (not the JSON object a finished run writes): pass "
                         "--overwrite_output_dir to run again (from the newest intact checkpoint, or from the start), "
                         "or choose another --output_dir")
    return metrics
