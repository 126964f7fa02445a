"""One fine-tuning run, top to bottom: arguments, data, model, adapters, training, outputs.

Every task script calls ``main(task)``; everything a run does is in ``train``.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from dataclasses import asdict

import torch
from transformers import set_seed
from transformers.utils import logging as hf_logging

from adarank.arguments import Arguments, parse_arguments, precision_note
from adarank.cpu_4bit import describe_kernels
from adarank.diagnostics import Diagnostics
from adarank.errors import exits_cleanly_on_usage_errors
from adarank.fused_adapters import fuse_adapter_forward
from adarank.run.callbacks import StepHistory, StepTimer
from adarank.memory import (
    NO_ADAPTER,
    PeakMemory,
    base_model_bytes,
    base_parameter_count,
    memory_summary,
    parameter_counts,
    quantized_bits_per_parameter,
    saved_adapter_size,
)
from adarank.methods import AdapterRequest, budget_label, budget_rank, get_method
from adarank.models import check_sequence_length
from adarank.modules import resolve_target_modules
from adarank.run.preemption import PREEMPTED_EXIT_CODE, MarkCheckpointComplete, StopOnSignal, resolve_auto_resume
from adarank.ranks import RankLog
from adarank.run.sampling import ResumableTrainer
from adarank.rundir import RunDirectory, checkpoint_step, default_run_dir
from adarank.run.environment import environment
from adarank.tasks import Task, get_task, recipe_of
from adarank.run.steps import count_optimizer_steps

log = logging.getLogger("adarank")
def synthetic_note(task: Task) -> str:
    return f"synthetic demo data (--demo): these numbers say nothing about {task.family}"


@exits_cleanly_on_usage_errors
def main(task: str, argv: list[str] | None = None, method: str | None = None, method_arguments=(),
         defaults: dict | None = None) -> dict:
    """The command line of a task script. ``method`` makes a registered method the script's
    default, with its own flags (``AdapterMethod.arguments``) and defaults."""
    _configure_logging()
    if method is not None:
        chosen = get_method(method)
        method_arguments = (*method_arguments, *([chosen.arguments] if chosen.arguments else []))
        defaults = {"method": method, **chosen.script_defaults, **(defaults or {})}
    return train(task, argv, method_arguments, defaults)


def train(task_name: str, argv: list[str] | None = None, method_arguments=(), defaults: dict | None = None) -> dict:
    task = get_task(task_name)
    args = parse_arguments(task, argv, method_arguments, defaults)
    method = get_method(args.adapter.method)
    task = task.configure(args.task_options, evaluate_only=not method.trains)
    budget_rank(args.adapter.budget)
    method.check_run(args.training, args.run)
    _ = args.training.device  # sets up the process group under torchrun, so that process_index is known
    main_process = args.training.process_index == 0
    if args.training.resume_from_checkpoint == "auto":
        finished = resolve_auto_resume(args)
        if finished is not None:
            return finished
    resume_from = args.training.resume_from_checkpoint
    resume_step = None if resume_from is None else checkpoint_step(resume_from)
    if args.run_dir is not None and main_process:  # refused before anything slow happens
        RunDirectory(args.run_dir).check_usable(args.run.overwrite_output_dir, resuming=resume_step is not None)

    set_seed(args.training.seed)
    data = task.load_data(args.data.data_dir, args.data.demo, args.data.max_train_samples, args.data.max_eval_samples)
    note = synthetic_note(task) if data.synthetic else None
    if note:
        log.warning("Using %s.", note)
    training = args.training
    total_step = steps_per_epoch = 0
    if method.trains:
        total_step = count_optimizer_steps(
            len(data.train), training.train_batch_size, training.world_size,
            training.gradient_accumulation_steps, training.num_train_epochs, training.max_steps,
            training.dataloader_drop_last,
        )
        steps_per_epoch = count_optimizer_steps(
            len(data.train), training.train_batch_size, training.world_size,
            training.gradient_accumulation_steps, num_train_epochs=1, max_steps=0,
            drop_last=training.dataloader_drop_last,
        )
        _scale_warmup(args, task, total_step)
    request = AdapterRequest(task, args.adapter, total_step, steps_per_epoch=steps_per_epoch, extra=args.extra,
                             gradient_checkpointing=training.gradient_checkpointing,
                             resume_from=training.resume_from_checkpoint)
    plan = method.plan(request)
    if plan.describe():
        log.info(plan.describe())
    # Every process of a multi-process run works in one directory: rank 0 names it (the default
    # name holds the time), checks it and creates it; the others write only their checkpoint shards.
    run = RunDirectory(_from_rank_zero(args.run_dir or default_run_dir(
        task.name, method.name, budget_label(plan.budget_rank), training.seed, data.synthetic, args.adapter.recipe)))
    if main_process:
        run.check_usable(args.run.overwrite_output_dir, resuming=resume_step is not None)
    # The Trainer's own files (checkpoints, TensorBoard logs) live inside the run directory.
    training.output_dir = str(run.checkpoints)

    tokenizer, model, model_name = task.load_model(
        args.model.model_name_or_path, load_in_4bit=method.quantized, compute_dtype=args.model.bnb_4bit_compute_dtype,
        classifier_dropout=args.model.classifier_dropout,
    )
    check_sequence_length(model, args.model.max_seq_length)
    request.task_type = task.peft_task_type(model)
    if method.trains:
        request.target_modules = resolve_target_modules(model, args.model.target_modules)
    request.head_modules = task.head_modules(model)
    memory = {"base": base_model_bytes(model), "quantized_bits_per_parameter": quantized_bits_per_parameter(model)}
    base_params = base_parameter_count(model)
    if main_process:
        run.prepare(overwrite=args.run.overwrite_output_dir, resume_step=resume_step)
    _barrier()
    request.rank_log = RankLog(run / "ranks.jsonl", enabled=main_process)
    set_seed(training.seed)  # the adapters' initial values depend on the seed alone
    built = method.build(model, plan, request)
    fused = 0 if args.run.peft_forward else fuse_adapter_forward(built.model)
    counts = parameter_counts(built.model, base_params)
    log.info(
        "%s on %s: %s trainable parameters (adapters %s, task head %s) of %s.",
        method.name, task.name, f"{counts['trainable_params']:,}", f"{counts['adapter_params']:,}",
        f"{counts['head_params']:,}", f"{counts['total_params']:,}",
    )

    tokenized = task.tokenize(data, tokenizer, args.model.max_seq_length)
    config = _config_document(args, task, data, model_name, request, built.plan or plan, counts, run)
    config["fused_adapter_layers"] = fused  # layers running adarank/fused_adapters.py's forward
    config["tokenized_cache"] = tokenized.tokenized_cache  # split -> read / written / empty / off
    if method.quantized:
        config["four_bit_cpu_kernels"] = describe_kernels(built.model)
    if main_process:
        run.write_json("config.json", config)

    stop = StopOnSignal()  # SIGUSR1 / SIGTERM (a cluster's warning): checkpoint, stop, exit to be requeued
    timer = StepTimer()
    trainer = ResumableTrainer(
        model=built.model,
        args=training,
        train_dataset=tokenized.train if method.trains else None,
        eval_dataset=tokenized.dev if len(tokenized.dev) > 1 else next(iter(tokenized.dev.values())),
        data_collator=task.collator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=task.trainer_metrics(),
        callbacks=[stop, timer, StepHistory(run / "history.jsonl"), *built.callbacks,
                   *([Diagnostics(run / "diagnostics.jsonl", built.model)] if args.run.diagnostics and main_process
                     else []),
                   MarkCheckpointComplete()],  # last: the other callbacks' state is saved by then
    )
    try:
        with PeakMemory() as peak:
            started = time.perf_counter()
            outcome = trainer.train(resume_from_checkpoint=training.resume_from_checkpoint) if method.trains else None
            train_seconds = time.perf_counter() - started
    finally:
        stop.restore_handlers()
    if stop.received is not None:
        log.warning("%s received: stopped after the checkpoint of step %d in %s; the same command with "
                    "--resume_from_checkpoint auto continues from there.", stop.signal_name,
                    trainer.state.global_step, run.checkpoints)
        raise SystemExit(PREEMPTED_EXIT_CODE)

    # The Trainer's length grouping shuffles evaluation batches too; the tasks' evaluate orders
    # examples itself (GLUE: shortest first) and writes predictions in dataset order.
    trainer.args.train_sampling_strategy = "sequential"
    with PeakMemory() as evaluation_peak:
        started = time.perf_counter()
        metrics, rows = task.evaluate(trainer, tokenized.dev)
        eval_seconds = time.perf_counter() - started
    counts = parameter_counts(built.model, base_params)  # again: growing methods change them in training
    metrics.update(
        counts,
        total_step=trainer.state.global_step,
        train_seconds=round(train_seconds, 2),
        train_examples_per_second=round(outcome.metrics["train_samples_per_second"], 2) if outcome else 0.0,
        train_loss=outcome.metrics.get("train_loss") if outcome else None,
        **timer.report(),
        eval_seconds=round(eval_seconds, 2),
        eval_examples_per_second=round(sum(len(split) for split in tokenized.dev.values()) / eval_seconds, 2),
        **peak.report(),
        peak_memory_evaluation_mb=evaluation_peak.report()["peak_memory_mb"],
        data="synthetic" if data.synthetic else data.source,
        # Time and peak memory cover the part of training after this step only.
        resumed_from_step=resume_step,
    )
    # Methods whose adapters change size during training report their own averages.
    metrics["average_adapter_params"] = counts["adapter_params"]
    if built.summary is not None:
        metrics.update(built.summary())
    if note:
        metrics["note"] = note
    if main_process:
        if method.trains:
            built.model.save_pretrained(str(run / "adapter"))
            memory["adapter"] = {"trainable_params": counts, **saved_adapter_size(run / "adapter")}
        else:
            memory["adapter"] = {"trainable_params": counts, **NO_ADAPTER}
        memory["peak"] = peak.report()
        metrics.update(memory_summary(memory))
        run.write_json("memory.json", memory)
        if args.run.merge_adapter:
            built.model.merge_and_unload().save_pretrained(str(run / "merged"))
            tokenizer.save_pretrained(str(run / "merged"))
        run.write_text(*task.predictions_file(rows, note))
        run.write_json("metrics.json", metrics)  # last: marks the run finished
        _print_summary(task, method.name, config["budget"], metrics, run)
    return metrics


def _config_document(args: Arguments, task, data, model_name, request, plan, counts, run: RunDirectory) -> dict:
    return {
        "task": task.name,
        "method": args.adapter.method,
        "budget": budget_label(plan.budget_rank),
        "recipe": args.adapter.recipe,  # whose defaults: paper (Table 8) or official (the authors' scripts)
        "recipe_values": asdict(recipe_of(task, args.adapter.recipe)),
        "task_metrics": list(task.metrics),  # headline first; metrics.json has eval_[<split>_]<metric>
        "dev_splits": list(task.dev_splits),
        "run_dir": str(run.path),
        "command": " ".join(sys.argv),
        "synthetic_data": data.synthetic,
        **({"note": synthetic_note(task)} if data.synthetic else {}),
        "data_source": data.source,
        "train_examples": len(data.train),
        "dev_examples": {k: len(v) for k, v in data.dev.items()},
        "model": model_name,
        "target_modules": request.target_modules,
        "head_modules": request.head_modules,
        "total_step": request.total_step,
        "adapter": plan.as_dict(),
        "parameters": counts,
        "arguments": {
            "model": asdict(args.model),
            "data": asdict(args.data),
            "adapter": asdict(args.adapter),
            "run": asdict(args.run),
            **{type(extra).__name__: asdict(extra) for extra in args.extra},
            "training": args.training.to_dict(),
        },
        "explicit_arguments": sorted(args.explicit),
        "precision": precision_note(args.training, args.explicit, task),
        "environment": environment(),
        **({"task_settings": task.describe()} if task.describe() else {}),
        "task_arguments": asdict(args.task_options) if args.task_options is not None else None,
        "warmup_note": args.warmup_note,
    }


def _from_rank_zero(value):
    """``value`` as process 0 has it, on every process (unchanged in a single process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _scale_warmup(args: Arguments, task: Task, total_step: int) -> None:
    """A recipe's warm-up given in steps (the authors' scripts: 100 to 3000) shrinks with the run,
    as the AdaLoRA schedule does, unless the user set --warmup_steps: a 3000-step warm-up would
    otherwise outlast a short run, whose learning rate never reached its peak."""
    recipe = recipe_of(task, args.adapter.recipe)
    if recipe.warmup < 1 or "warmup_steps" in args.explicit or "warmup_ratio" in args.explicit:
        return
    published = task.full_run_steps(recipe)
    if total_step < published:
        args.training.warmup_steps = max(1, round(recipe.warmup * total_step / published))
        args.warmup_note = (f"the {args.adapter.recipe} recipe's {recipe.warmup:g} warm-up steps for {published} "
                            f"steps, scaled to {args.training.warmup_steps} of this run's {total_step}")
        log.info("Warm-up: %s.", args.warmup_note)


def _print_summary(task: Task, method: str, budget: str, metrics: dict, run: RunDirectory) -> None:
    headline = {k: v for k, v in metrics.items() if k.startswith("eval_") and k.rsplit("_", 1)[-1] != "examples"
                and not k.endswith(("_loss", "_seconds_per_article"))}
    lines = [
        f"== {task.name} / {method} / budget {budget}"
        + (f" / {metrics['note']}" if metrics.get("note") else "") + " ==",
        "dev: " + ", ".join(f"{k} {v:.4f}" for k, v in headline.items()),
        f"trainable parameters: {metrics['trainable_params']:,} "
        f"(adapters {metrics['adapter_params']:,}, task head {metrics['head_params']:,})",
        f"training: {metrics['total_step']} steps in {metrics['train_seconds']:.1f} s, "
        f"{metrics['train_examples_per_second']:.1f} examples/s, peak memory {metrics['peak_memory_mb']:.0f} MB",
        f"run directory: {run.path}",
    ]
    print("\n".join(lines), flush=True)


def _configure_logging() -> None:
    # PEFT warns on saving AdaLoRA modules pruned to rank 0, which are expected.
    warnings.filterwarnings("ignore", message=r".*LoRA tensor\(s\) have invalid shape")
    logging.basicConfig(stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    hf_logging.set_verbosity_warning()
