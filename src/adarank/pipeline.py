"""One fine-tuning run, top to bottom: arguments, data, model, adapters, training, outputs.

Every task script calls ``main(task)``; ``train`` reads as the phases of a run, each a function
below it, in the order they happen.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from transformers import set_seed

from adarank.arguments import Arguments, parse_arguments, scale_warmup
from adarank.command_line import script_setup
from adarank.errors import configure_logging, exits_cleanly_on_usage_errors
from adarank.loading import check_sequence_length
from adarank.memory import MemoryReport, ParameterCounts, PeakMemory, base_parameter_count, parameter_counts
from adarank.methods.flags import check_method_flags
from adarank.methods import AdapterMethod, AdapterRequest, BuiltAdapter, Plan, budget_label, budget_rank, get_method
from adarank.modules import check_rank_fits, resolve_target_modules
from adarank.quantization import describe_kernels
from adarank.run.callbacks import StepHistory, StepTimer
from adarank.run.config import config_document, synthetic_note
from adarank.run.diagnostics import Diagnostics
from adarank.run.directory import RunDirectory, default_run_dir
from adarank.run.distributed import barrier, from_rank_zero
from adarank.run.integrity import resumable_step
from adarank.run.metrics import RunMetrics, print_summary
from adarank.run.outputs import save_outputs
from adarank.run.batches import training_batches
from adarank.run.preemption import PREEMPTED_EXIT_CODE, MarkCheckpointComplete, StopOnSignal, resolve_auto_resume
from adarank.run.ranks import RankLog
from adarank.run.scalars import Scalars, ScalarsAtLogs
from adarank.run.steps import count_optimizer_steps
from adarank.fast_paths import take_fast_paths
from adarank.run.trainer import RunTrainer
from adarank.tasks import LoadedModel, Task, TaskData, get_task
from adarank.trainer_options import check_best_metric

log = logging.getLogger("adarank")


@exits_cleanly_on_usage_errors
def main(task: str, argv: list[str] | None = None, method: str | None = None, method_arguments=(),
         defaults: dict | None = None) -> dict:
    """The command line of a task script. ``method`` makes a registered method the script's
    default, with its own flags (``AdapterMethod.arguments``) and defaults; the method the command
    line names brings its own flags too."""
    configure_logging()
    method_arguments, defaults = script_setup(method, argv, method_arguments, defaults)
    return train(task, argv, method_arguments, defaults)


@dataclass
class Setup:
    """What the command line asked for, checked before anything slow happens."""

    args: Arguments
    task: Task
    method: AdapterMethod
    main_process: bool  # process 0 of a multi-process run: the one that writes the run's documents
    resume_step: int | None  # the optimizer step of the checkpoint the run continues from
    run: RunDirectory | None = None  # --output_dir, checked (and locked where it exists) before anything slow


@dataclass
class AdaptedModel:
    """The loaded model with the method's adapters, and what was measured of it on the way."""

    tokenizer: object
    name: str  # the model's name for config.json
    built: BuiltAdapter
    base_params: int
    memory: MemoryReport  # of the base model, before adapters
    counts: ParameterCounts  # before training
    fast_paths: dict[str, int]  # layers taking each fast path (adarank/fast_paths.py)
    scalars: Scalars  # ranks, budget and the method's figures for --report_to (run/scalars.py)


@dataclass
class Fitted:
    """What training left: the Trainer (its state and the model) and its time and memory."""

    trainer: RunTrainer
    outcome: object | None  # the Trainer's TrainOutput; None when nothing was trained
    seconds: float
    peak: PeakMemory
    timer: StepTimer


def train(task_name: str, argv: list[str] | None = None, method_arguments=(), defaults: dict | None = None) -> dict:
    setup = _set_up(task_name, argv, method_arguments, defaults)
    if isinstance(setup, dict):
        return setup  # --resume_from_checkpoint auto found the run finished
    set_seed(setup.args.training.seed)
    data = setup.task.load_data(setup.args.data.data_dir, setup.args.data.demo, setup.args.data.max_train_samples,
                                setup.args.data.max_eval_samples)
    if data.synthetic:
        log.warning("Using %s.", synthetic_note(setup.task))
    request = _request(setup, data)
    plan = setup.method.plan(request)
    if plan.describe():
        log.info(plan.describe())
    run = _run_directory(setup, plan, data)
    loaded = _load_model(setup, request, plan)
    tokenized = setup.task.tokenize(data, loaded.tokenizer, setup.args.model.max_seq_length)
    request.train_batches = training_batches(tokenized.train, loaded.model, setup.task.collator(loaded.tokenizer),
                                             setup.args.training.train_batch_size)
    with run.replacing(setup.main_process):  # a run this one replaces comes back if this one fails first
        adapted = _adapted_model(setup, request, plan, run, loaded)
        config = _write_config(setup, data, tokenized, request, adapted, run)
        fitted = _fit(setup, adapted, tokenized, run)
        return _finish(setup, data, tokenized, adapted, fitted, run, config)


def _set_up(task_name: str, argv, method_arguments, defaults) -> Setup | dict:
    """Parse and check every argument, and find where a resumed run continues from."""
    task = get_task(task_name)
    args = parse_arguments(task, argv, method_arguments, defaults)
    method = get_method(args.adapter.method)
    task = task.configure(args.task_options, evaluate_only=not method.trains)
    budget_rank(args.adapter.budget)
    method.check_run(args.training, args.run)
    check_method_flags(method, args.explicit, args.extra)  # flags this method would ignore
    _ = args.training.device  # sets up the process group under torchrun, so that process_index is known
    setup = Setup(args, task, method, args.training.process_index == 0, None)
    if args.run_dir is not None and setup.main_process:  # a directory another process writes to: refused now
        setup.run = RunDirectory(args.run_dir).lock_if_present()
    barrier()  # the other processes read it as process 0 left it (a run set aside there put back)
    if args.training.resume_from_checkpoint == "auto":
        finished = resolve_auto_resume(args, task.name)
        if finished is not None:
            return finished
    setup.resume_step = resumable_step(args, task.name)
    if setup.run is not None:  # refused before anything slow happens
        setup.run.check_usable(args.run.overwrite_output_dir, resuming=setup.resume_step is not None)
    return setup


def _request(setup: Setup, data: TaskData) -> AdapterRequest:
    """What the method is told of the run before the model is loaded: its step counts (which fit
    AdaLoRA's schedule and scale a recipe's warm-up to the run) and the method's own flags."""
    training = setup.args.training
    total_step = steps_per_epoch = 0
    if setup.method.trains:
        def steps(epochs: float, max_steps: int) -> int:
            return count_optimizer_steps(len(data.train), training.train_batch_size, training.world_size,
                                         training.gradient_accumulation_steps, epochs, max_steps,
                                         training.dataloader_drop_last)

        total_step = steps(training.num_train_epochs, training.max_steps)
        steps_per_epoch = steps(1, 0)
        scale_warmup(setup.args, setup.task, total_step)
    return AdapterRequest(setup.task, setup.args.adapter, total_step, steps_per_epoch=steps_per_epoch,
                          method_arguments=setup.args.options_of(setup.method.arguments), resume_from=training.resume_from_checkpoint,
                          gradient_checkpointing=training.gradient_checkpointing, explicit=frozenset(setup.args.explicit),
                          trainer_evaluates=training.eval_strategy != "no")


def _run_directory(setup: Setup, plan: Plan, data: TaskData) -> RunDirectory:
    """The run directory, named after the plan where --output_dir was not given. Every process of a
    multi-process run works in it: rank 0 names it (the default name holds the time) and checks it;
    the others write only their checkpoint shards."""
    args = setup.args
    run = RunDirectory(from_rank_zero(args.run_dir or default_run_dir(
        setup.task.name, setup.method.name, budget_label(plan.budget_rank), setup.args.training.seed, data.synthetic,
        args.adapter.recipe)))
    check_best_metric(args.training, setup.task, list(data.dev), args.explicit)  # the splits evaluations log
    if setup.main_process:
        run.check_usable(args.run.overwrite_output_dir, resuming=setup.resume_step is not None)
    setup.args.training.output_dir = str(run.checkpoints)  # the Trainer's files (checkpoints, TensorBoard logs)
    return run


def _load_model(setup: Setup, request: AdapterRequest, plan: Plan) -> LoadedModel:
    """Load the model and tell the request what the method adapts in it (refusing a rank it cannot hold)."""
    args, method = setup.args, setup.method
    loaded = setup.task.load_model(
        args.model.model_name_or_path, load_in_4bit=method.quantized, compute_dtype=args.model.bnb_4bit_compute_dtype,
        classifier_dropout=args.model.classifier_dropout,
    )
    setup.task = loaded.task  # the task bound to the model it loaded
    check_sequence_length(loaded.model, args.model.max_seq_length)
    request.task_type = setup.task.peft_task_type(loaded.model)
    if method.trains:
        request.target_modules = resolve_target_modules(loaded.model, args.model.target_modules)
        check_rank_fits(loaded.model, request.target_modules, method.largest_rank(plan))
    request.head_modules = setup.task.head_modules(loaded.model)
    return loaded


def _adapted_model(setup: Setup, request: AdapterRequest, plan: Plan, run: RunDirectory,
                   loaded: LoadedModel) -> AdaptedModel:
    """Measure the base model, take the run directory, and add the method's adapters."""
    args, method, model = setup.args, setup.method, loaded.model
    memory, base_params = MemoryReport.of_base(model), base_parameter_count(model)
    if setup.main_process:
        run.prepare(overwrite=args.run.overwrite_output_dir, resume_step=setup.resume_step)
    barrier()
    scalars = Scalars()
    request.rank_log = RankLog(run / "ranks.jsonl", enabled=setup.main_process, scalars=scalars)
    set_seed(setup.args.training.seed)  # the adapters' initial values depend on the seed alone
    built = method.build(model, plan, request)
    fast_paths = take_fast_paths(built.model, setup.args.training, method, args.run)
    built.plan = built.plan or plan
    counts = parameter_counts(built.model, base_params)
    log.info("%s on %s: %s trainable parameters (adapters %s, task head %s) of %s.", method.name, setup.task.name,
             f"{counts.trainable_params:,}", f"{counts.adapter_params:,}", f"{counts.head_params:,}",
             f"{counts.total_params:,}")
    return AdaptedModel(loaded.tokenizer, loaded.name, built, base_params, memory, counts, fast_paths, scalars)


def _write_config(setup: Setup, data: TaskData, tokenized: TaskData, request: AdapterRequest,
                  adapted: AdaptedModel, run: RunDirectory) -> dict:
    config = config_document(setup.args, setup.task, data, adapted.name, request, adapted.built.plan, adapted.counts, run)
    config.update(adapted.fast_paths)
    config["tokenized_cache"] = tokenized.tokenized_cache  # split -> read / written / empty / off
    if setup.method.quantized:
        config["four_bit_cpu_kernels"] = describe_kernels(adapted.built.model)
    if setup.main_process:
        run.write_json("config.json", config)
    return config


def _fit(setup: Setup, adapted: AdaptedModel, tokenized: TaskData, run: RunDirectory) -> Fitted:
    """Train (a signal from the cluster checkpoints and stops the run, to be requeued)."""
    task, built, trains = setup.task, adapted.built, setup.method.trains
    stop = StopOnSignal()  # SIGUSR1 / SIGTERM (a cluster's warning): checkpoint, stop, exit to be requeued
    timer = StepTimer()
    diagnostics = [Diagnostics(run / "diagnostics.jsonl", built.model)] if setup.args.run.diagnostics \
        and setup.main_process else []
    trainer = RunTrainer(
        model=built.model,
        args=setup.args.training,
        train_dataset=tokenized.train if trains else None,
        eval_dataset=tokenized.dev if len(tokenized.dev) > 1 else next(iter(tokenized.dev.values())),
        data_collator=task.collator(adapted.tokenizer),
        processing_class=adapted.tokenizer,
        compute_metrics=task.trainer_metrics(),
        callbacks=[stop, timer, StepHistory(run / "history.jsonl"), *built.callbacks, *diagnostics,
                   ScalarsAtLogs(adapted.scalars, task.name, lambda: parameter_counts(
                       built.model, adapted.base_params).adapter_params, built.scalars),
                   MarkCheckpointComplete()],  # last: the other callbacks' state is saved by then
    )
    trainer.report_scalars(adapted.scalars, run.path)
    try:
        with PeakMemory() as peak:
            started = time.perf_counter()
            outcome = trainer.train(resume_from_checkpoint=setup.args.training.resume_from_checkpoint) if trains else None
            seconds = time.perf_counter() - started
    finally:
        stop.restore_handlers()
    if stop.received is not None:
        log.warning("%s received: stopped after the checkpoint of step %d in %s; the same command with "
                    "--resume_from_checkpoint auto continues from there.", stop.signal_name,
                    trainer.state.global_step, run.checkpoints)
        raise SystemExit(PREEMPTED_EXIT_CODE)
    return Fitted(trainer, outcome, seconds, peak, timer)


def _finish(setup: Setup, data: TaskData, tokenized: TaskData, adapted: AdaptedModel, fitted: Fitted,
            run: RunDirectory, config: dict) -> dict:
    """Evaluate on the dev splits, then write the adapter, memory.json, the predictions and, last,
    metrics.json (which marks the run finished)."""
    trainer, built = fitted.trainer, adapted.built
    # The Trainer's length grouping shuffles evaluation batches too; the tasks' evaluate orders
    # examples itself (GLUE: shortest first) and writes predictions in dataset order.
    trainer.args.train_sampling_strategy = "sequential"
    with PeakMemory() as evaluation_peak:
        started = time.perf_counter()
        evaluation, rows = setup.task.evaluate(trainer, tokenized.dev)
        eval_seconds = time.perf_counter() - started
    counts = parameter_counts(built.model, adapted.base_params)  # again: growing methods change them in training
    outcome = fitted.outcome.metrics if fitted.outcome else {}
    note = synthetic_note(setup.task) if data.synthetic else None
    metrics = RunMetrics(
        evaluation=evaluation, parameters=counts, total_step=trainer.state.global_step,
        train_seconds=fitted.seconds, train_examples_per_second=outcome.get("train_samples_per_second", 0.0),
        train_loss=outcome.get("train_loss"), speed=fitted.timer.report(), eval_seconds=eval_seconds,
        eval_examples_per_second=sum(len(split) for split in tokenized.dev.values()) / eval_seconds,
        peak=fitted.peak.report(), peak_memory_evaluation_mb=evaluation_peak.report()["peak_memory_mb"],
        data="synthetic" if data.synthetic else data.source, resumed_from_step=setup.resume_step,
        average_adapter_params=counts.adapter_params, method_figures=built.summary() if built.summary else {},
        note=note,
    )
    with trainer.writing(run.path, "the run's results"):
        if setup.main_process:
            save_outputs(run, built.model, adapted.tokenizer, adapted.memory, metrics, config,
                         setup.task.predictions_file(rows, note), trains=setup.method.trains,
                         merge=setup.args.run.merge_adapter)
            print_summary(setup.task.name, setup.method.name, config["budget"], metrics.as_dict(), run)
    trainer.close_reports()
    return metrics.as_dict()

