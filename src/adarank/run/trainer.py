"""The Trainer a run trains with: the epoch-seeded order of ``sampling.py``, plus what a run that
is stopped, resumed or short of disk space needs.

- The training loss of the whole run: the Trainer averages the loss over the steps of its own
  process, so a resumed run reported the resumed part alone. Each checkpoint keeps the sum of the
  losses up to its step (``LOSS_SUM``), and a resumed run adds its own to it.
- The space a checkpoint needs (``space.checkpoint_bytes``) is checked before the first step; a
  disk that fills up while a checkpoint is written ends the run in one line naming the checkpoint,
  and the half-written folder is removed, so the last complete checkpoint is the one resumed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import TrainOutput

from adarank.run.directory import checkpoint_folder
from adarank.run.integrity import COMPLETE_MARKER
from adarank.run.preemption import newest_complete_checkpoint
from adarank.run.sampling import ResumableTrainer
from adarank.run.scalars import RunTensorBoard, Scalars, use_run_integrations
from adarank.run.space import check_free_space, checkpoint_bytes, refusing_a_full_disk

LOSS_SUM = "loss_sum.json"


def loss_sum_before(checkpoint: str | None) -> float | None:
    """The sum of the training losses up to ``checkpoint`` (0 for a fresh start; None where a
    checkpoint of an earlier version does not say)."""
    if checkpoint is None:
        return 0.0
    path = Path(checkpoint) / LOSS_SUM
    return float(json.loads(path.read_text())["loss_sum"]) if path.is_file() else None


class RunTrainer(ResumableTrainer):
    _loss_before: float | None = 0.0
    checkpoint_bytes = 0  # the estimate of one checkpoint, set when training starts

    def report_scalars(self, scalars: Scalars, run_path: Path) -> None:
        """TensorBoard writing into ``<run>/tensorboard/`` and W&B keeping the methods' chart names, where
        ``--report_to`` asked for them; ``scalars`` sends through this Trainer's integrations."""
        use_run_integrations(self.callback_handler, run_path)
        scalars.bind(self)

    def close_reports(self) -> None:
        """Close the run's TensorBoard file once the run has logged its last record."""
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, RunTensorBoard):
                callback.close()

    def resume_advice(self) -> str:
        newest = newest_complete_checkpoint(Path(self.args.output_dir))
        return ("run the same command with --resume_from_checkpoint auto to continue from "
                + (newest.name if newest is not None else "the start (no complete checkpoint yet)"))

    def _run_epoch(self, *args, **kwargs):
        # Resumed at the run's last step (stopped after its final checkpoint, before its results were written):
        # the Trainer takes a step before it compares the step with max_steps, so the run trained one too many.
        if 0 < self.state.max_steps <= self.state.global_step:
            return None
        return super()._run_epoch(*args, **kwargs)

    def writing(self, path: Path, what: str):
        """A block that writes ``what`` under ``path``: a full disk there ends the run in one line."""
        return refusing_a_full_disk(path, self.checkpoint_bytes, what, self.resume_advice)

    def train(self, resume_from_checkpoint=None, **kwargs):
        self._loss_before = loss_sum_before(resume_from_checkpoint)
        self.checkpoint_bytes = checkpoint_bytes(self.model, self.processing_class)
        output_dir = Path(self.args.output_dir)
        if self.args.save_strategy != "no" and self.is_world_process_zero():
            check_free_space(output_dir, self.checkpoint_bytes, "a checkpoint (by the estimate of run/space.py)")
        try:
            with self.writing(output_dir.parent, "the run's logs"):
                output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        except BaseException:
            for callback in self.callback_handler.callbacks:  # the bar ends before the error is told, not after
                if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
                    callback.training_bar.close()
            raise
        whole = self._whole_run_loss()
        return TrainOutput(output.global_step, whole, {**output.metrics, "train_loss": whole})

    def _whole_run_loss(self) -> float | None:
        """The mean loss over every step of the run, those before a resume included; None where they are unknown."""
        if self._loss_before is None:
            return None
        return (self._loss_before + self._total_loss_scalar) / max(self.state.global_step, 1)

    def log(self, logs: dict, *args, **kwargs) -> None:
        # The Trainer's own train_loss averages this process's steps alone: the history and TensorBoard
        # get the run's, as metrics.json does.
        if "train_loss" in logs and self._loss_before is not None:
            logs = {**logs, "train_loss": self._whole_run_loss()}
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        folder = checkpoint_folder(self.args.output_dir, self.state.global_step)
        # A checkpoint of this step saved before (a damaged one that auto skipped) is not complete again
        # until this save has ended.
        (folder / COMPLETE_MARKER).unlink(missing_ok=True)
        try:
            with refusing_a_full_disk(folder, self.checkpoint_bytes, f"the checkpoint of step {self.state.global_step}",
                                      self.resume_advice, only_writes=True):
                super()._save_checkpoint(model, trial)
                if self.args.should_save and self._loss_before is not None:
                    loss_sum = self._loss_before + self._total_loss_scalar + self._tr_loss.item()
                    (folder / LOSS_SUM).write_text(json.dumps({"step": self.state.global_step, "loss_sum": loss_sum}))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # incomplete: never resumed, and its space is free again
            raise
