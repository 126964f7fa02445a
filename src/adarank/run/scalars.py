"""What makes a method, live in TensorBoard, W&B or any integration of ``--report_to``: ranks,
budget, AdaLoRA's mask threshold and orthogonal regulariser, growth events, trainable parameters
and the dev metrics, beside the Trainer's loss and learning rate.

The names follow the AdaLoRA authors' scheme, so their dashboards and ours read alike:

- ``Ranknum/<module kind>/<layer>``: each adapted matrix's rank (a custom-scalars layout draws one
  panel per module kind, a line per layer);
- ``Budget/total_rank``, ``Budget/budget`` (b(t)), ``Budget/mask_threshold`` (AdaLoRA's pruning
  threshold);
- ``Growth/rank_added`` at a growth event;
- ``Orth_regu_loss/lora_A`` and ``Orth_regu_loss/lora_B`` (AdaLoRA's regulariser, each half);
  ``orth_regu_loss`` (R), ``regu_loss`` (gamma R, the part of the loss it is), ``num_train_param``
  (adapter parameters held and trained now) and ``num_live_param`` (those of the directions switched on:
  fewer under AdaLoRA's mask and SoRA's gates, as metrics.json counts them): written ``train/<name>`` as
  the Trainer writes its own;
- ``Eval_<task>/<metric>``: the dev metrics of every evaluation.

Events (``ranks.jsonl`` records) are sent at the step of their record; the rest at logging steps
and evaluations. The integrations write on process 0 only. A resumed run's TensorBoard writer
purges what the stopped run wrote after its checkpoint, so every curve holds each step once.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback
from transformers.integrations.integration_utils import (INTEGRATION_TO_CALLBACK, TensorBoardCallback,
                                                         WandbCallback)

TENSORBOARD_DIR = "tensorboard"  # inside the run directory


def rank_scalars(record: dict, previous: dict | None = None) -> dict[str, float]:
    """The scalars of one ``ranks.jsonl`` record (``previous``: the record before it, for growth)."""
    scalars = {f"Ranknum/{kind}/{layer}": rank
               for layer, kinds in record["ranks"].items() for kind, rank in kinds.items()}
    scalars["Budget/total_rank"] = record["total_rank"]
    scalars["Budget/budget"] = record["budget"]
    if "mask_threshold" in record:
        scalars["Budget/mask_threshold"] = record["mask_threshold"]
    if record["event"] == "grow" and previous is not None:
        scalars["Growth/rank_added"] = record["total_rank"] - previous["total_rank"]
    return scalars


def is_namespaced(key: str) -> bool:
    """A key already named as a chart (``Ranknum/...``): written as it is, not as ``train/<key>``."""
    return "/" in key


def split(logs: dict) -> tuple[dict, dict]:
    """(the Trainer's kind of keys, namespaced keys)."""
    plain = {k: v for k, v in logs.items() if not is_namespaced(k)}
    return plain, {k: v for k, v in logs.items() if is_namespaced(k)}


class RunTensorBoard(TensorBoardCallback):
    """The Trainer's TensorBoard writer, writing into ``<run>/tensorboard/`` and keeping namespaced
    keys as they are; on a resumed run it purges the steps after the checkpoint."""

    def __init__(self, logging_dir: Path):
        super().__init__()
        self.logging_dir = str(logging_dir)
        self.purge_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0:  # resumed: what the stopped run logged after its checkpoint goes
            self.purge_step = state.global_step + 1
        super().on_train_begin(args, state, control, **kwargs)
        self._write_layout()

    def _init_summary_writer(self, args):
        """The run's writer; only the first one of a resumed run purges."""
        if self._SummaryWriter is not None:
            self.tb_writer = self._SummaryWriter(log_dir=self.logging_dir, purge_step=self.purge_step)
            self.purge_step = None

    def on_train_end(self, args, state, control, **kwargs):
        """Flush, and keep the writer for what the run logs after training (the final evaluation, the
        last rank record): a second file would be named by the second it was made in and a counter of
        the process, and TensorBoard reads files in name order, so within one second counter 10 sorts
        before 9, and a resumed run's purge marker read after it would drop the final steps."""
        if self.tb_writer is not None:
            self.tb_writer.flush()

    def close(self) -> None:
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None

    def _write_layout(self) -> None:
        if self.tb_writer is not None and hasattr(self.tb_writer, "add_custom_scalars"):
            kinds = ("query", "key", "value", "attention.output", "intermediate", "output", "q_proj", "k_proj",
                     "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
            self.tb_writer.add_custom_scalars({"Ranknum": {
                kind: ["Multiline", [rf"Ranknum/{kind}/.*"]] for kind in kinds}})

    def on_log(self, args, state, control, logs=None, **kwargs):
        plain, named = split(logs or {})
        if plain:
            super().on_log(args, state, control, logs=plain, **kwargs)
        if named and state.is_world_process_zero:
            if self.tb_writer is None:
                self._init_summary_writer(args)
            if self.tb_writer is not None:
                for key, value in named.items():
                    self.tb_writer.add_scalar(key, value, state.global_step)
                self.tb_writer.flush()


class RunWandb(WandbCallback):
    """The Trainer's W&B logger, keeping namespaced keys as they are."""

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        plain, named = split(logs or {})
        if plain:
            super().on_log(args, state, control, model=model, logs=plain, **kwargs)
        if named and state.is_world_process_zero:
            if not self._initialized:
                self.setup(args, state, model)
            self._wandb.log({**named, "train/global_step": state.global_step})


OURS = {TensorBoardCallback: RunTensorBoard, WandbCallback: RunWandb}


def use_run_integrations(handler, run_path: Path) -> None:
    """Swap the Trainer's TensorBoard and W&B callbacks (where ``--report_to`` asked for them) for ours."""
    for callback in list(handler.callbacks):
        theirs = type(callback)
        if theirs in OURS:  # in its place: the writer starts before the methods' callbacks log
            handler.callbacks[handler.callbacks.index(callback)] = (
                RunTensorBoard(run_path / TENSORBOARD_DIR) if theirs is TensorBoardCallback else RunWandb())


class Scalars:
    """Sends scalars to the reporting integrations of one Trainer (``bind``), as its own logs go."""

    def __init__(self):
        self._trainer = None
        self._last_record: dict | None = None
        self._at_log: tuple[int, dict] = (-1, {})  # the ranks a logging step sent: (its step, the scalars)

    def bind(self, trainer) -> None:
        self._trainer = trainer

    @property
    def integrations(self) -> list:
        if self._trainer is None:
            return []
        kinds = tuple(INTEGRATION_TO_CALLBACK.values())
        return [c for c in self._trainer.callback_handler.callbacks if isinstance(c, kinds)]

    def send(self, scalars: dict[str, float], step: int | None = None) -> None:
        """Write ``scalars`` at ``step`` (default: the Trainer's global step)."""
        receivers = self.integrations
        if not receivers or not scalars:
            return
        trainer = self._trainer
        state = trainer.state
        if step is not None and step != state.global_step:
            state = copy.copy(state)
            state.global_step = step
        for callback in receivers:
            callback.on_log(trainer.args, state, trainer.control, logs=dict(scalars), model=trainer.model)

    def rank_record(self, record: dict) -> None:
        """A ``ranks.jsonl`` record, at its step (RankLog calls this for every record it writes); what a
        logging step of that step sent already, with the same value, is not sent twice."""
        step, logged = self._at_log
        self.send({k: v for k, v in rank_scalars(record, self._last_record).items()
                   if not (step == record["step"] and logged.get(k) == v)}, record["step"])
        self._last_record = record

    def continue_from(self, record: dict) -> None:
        """A resumed run's last ``ranks.jsonl`` record before it went on: its ranks are the ranks now (without
        it a resumed run sent none until its next record), and the one a growth is counted from."""
        self._last_record = record

    def ranks_now(self, step: int) -> dict[str, float]:
        """The last record's ranks and budget, for the logging steps between events (none at the step of a
        record, sent already: a curve holds each step once)."""
        if self._last_record is None or self._last_record["step"] == step:
            return {}
        ranks = {k: v for k, v in rank_scalars(self._last_record).items() if not k.startswith("Growth/")}
        self._at_log = (step, ranks)
        return ranks


class ScalarsAtLogs(TrainerCallback):
    """At every logging step: the ranks now, the trainable adapter parameters, and the method's own
    scalars (``method_scalars``: e.g. AdaLoRA's regulariser); at every evaluation: ``Eval_<task>/``."""

    def __init__(self, scalars: Scalars, task: str, adapter_parameters: Callable[[], int],
                 method_scalars: Callable[[], dict] | None = None):
        self.scalars = scalars
        self.task = task
        self.adapter_parameters = adapter_parameters
        self.method_scalars = method_scalars

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or not self.scalars.integrations:  # training logs, reported somewhere
            return
        parameters = self.adapter_parameters()
        values = {**self.scalars.ranks_now(state.global_step), "num_train_param": parameters,
                  "num_live_param": parameters}
        if self.method_scalars is not None:  # methods that switch directions off send their own live count
            values.update(self.method_scalars())
        self.scalars.send(values)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics:
            self.scalars.send({f"Eval_{self.task}/{k.removeprefix('eval_')}": v for k, v in metrics.items()
                               if isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second", "epoch"))})
