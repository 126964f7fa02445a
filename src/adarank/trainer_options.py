"""Trainer options a run cannot honour, refused in one line before anything is loaded.

Every TrainingArguments flag reaches the command line. Some change what a run is (its dev metrics come
from every dev example's prediction, with the labels the task names), some need what is not here (a
package, a process group, the hub), some hold values the Trainer reads only once it runs (a compile
backend; the JSON-object flags, checked in ``trainer_kwargs``). Left to the Trainer, each ended in a
traceback at start-up or, worse, after the whole training.
"""

from __future__ import annotations

import copy
import importlib.util
import os

from huggingface_hub import constants

from adarank.errors import UsageError, first_line
from adarank.tasks import Task
from adarank.trainer_kwargs import check_object_flags

# (TrainingArguments field, the flag that sets it, does the run's value ask for it, why a run cannot take it)
CHANGES_THE_RUN = (
    ("prediction_loss_only", "--prediction_loss_only", bool, "the dev metrics need every example's prediction"),
    ("label_names", "--label_names", lambda v: v is not None, "each task names its own labels"),
    ("batch_eval_metrics", "--batch_eval_metrics", bool, "the dev metrics are computed once over the whole dev set"),
    ("eval_do_concat_batches", "--no_eval_do_concat_batches", lambda v: not v,
     "the dev metrics need the predictions of all batches together"),
    ("dataloader_drop_last", "--dataloader_drop_last", bool,
     "it drops the last dev batch too, and every dev example must be scored"),
    ("debug", "--debug", bool, "its underflow/overflow checks fail on this harness's models (boolean inputs)"),
)
# Options the Trainer reads only beside another, and drops without a word otherwise: (flag, the other, is it used)
READ_ONLY_WITH = (
    ("fsdp_config", "--fsdp", lambda training, optim: bool(training.fsdp)),
    ("optim_target_modules", "a GaLore or APOLLO --optim (galore_adamw, apollo_adamw, ...)",
     lambda training, optim: "galore" in optim or "apollo" in optim),
)
# a word in --optim's value -> the package (its import name) that optimizer needs
OPTIMIZER_PACKAGES = {"galore": "galore_torch", "apollo": "apollo_torch", "lomo": "lomo_optim",
                      "schedule_free": "schedulefree", "grokadamw": "grokadamw", "torch_xla": "torch_xla",
                      "npu": "torch_npu", "anyprecision": "torchdistx", "torch_4bit": "torchao",
                      "torch_8bit": "torchao", "stable_adamw": "optimi"}
PIP_NAMES = {"optimi": "torch-optimi"}  # where pip's name is not the import name
MODEL_OPTIMIZERS = ("galore", "apollo", "lomo")  # built from the model's layers, not from parameters alone
BACKEND_PACKAGES = {"tvm": "tvm"}  # compile backends dynamo registers whose package it imports only as it compiles


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _needed_packages(training) -> list[tuple[str, str]]:
    """(flag, package) for each option whose package is missing."""
    optim = str(getattr(training.optim, "value", training.optim))
    needed = [("--optim " + optim, package) for word, package in OPTIMIZER_PACKAGES.items() if word in optim]
    if training.use_liger_kernel:
        needed.append(("--use_liger_kernel", "liger_kernel"))
    return [(flag, package) for flag, package in needed if not _installed(package)]


def check_trainer_options(training, task: Task, explicit=frozenset()) -> None:
    """Refuse the first Trainer option this run cannot honour (``explicit``: the flags the user gave, which
    tells which of two aliases to name)."""
    for name, flag, asks, why in CHANGES_THE_RUN:
        if asks(getattr(training, name)):
            raise UsageError(f"{flag} cannot be used here: {why}; leave it out")
    optim = str(getattr(training.optim, "value", training.optim))
    for name, reader, read in READ_ONLY_WITH:
        if name in explicit and not read(training, optim):
            raise UsageError(f"--{name} is read only with {reader}, which this run does not use: leave it out")
    if training.label_smoothing_factor and getattr(task, "is_regression", False):
        raise UsageError(f"--label_smoothing_factor smooths class labels, and {task.name} is a regression (its labels "
                         "are scores): leave it out")
    if missing := _needed_packages(training):
        flag, package = missing[0]
        pip = f" (pip install {PIP_NAMES[package]})" if package in PIP_NAMES else ""
        raise UsageError(f"{flag} needs the package {package}{pip}, which is not installed: install it or leave "
                         "the flag out")
    if training.fsdp and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise UsageError("--fsdp shards the model over processes, and this run has one: start it with torchrun "
                         "--nproc_per_node N, or leave --fsdp out")
    if training.push_to_hub and constants.HF_HUB_OFFLINE:  # as the hub client reads HF_HUB_OFFLINE
        raise UsageError("--push_to_hub with HF_HUB_OFFLINE set: the hub is out of reach; unset HF_HUB_OFFLINE "
                         "(and log in), or leave --push_to_hub out")
    if str(getattr(training.save_strategy, "value", training.save_strategy)) == "best" and \
            training.metric_for_best_model is None:
        raise UsageError("--save_strategy best keeps the checkpoint with the best --metric_for_best_model, and none "
                         "is given: add one (loss, or a dev metric of the task)")
    _check_texts(training)
    check_object_flags(training, explicit)


def check_best_metric(training, task: Task, splits: list[str], explicit=frozenset()) -> None:
    """Refuse a --metric_for_best_model (or the Trainer's "loss" under --load_best_model_at_end) that the
    evaluations during training do not log, which the Trainer found at the first evaluation (a KeyError):
    ``splits``, the dev splits they evaluate (each metric under its split's name where there are several,
    MNLI's matched_accuracy); the task's metrics where the Trainer computes them (summarization's: the loss)."""
    metric = training.metric_for_best_model
    known = ("loss", *task.metrics) if task.trainer_metrics() is not None else ("loss",)
    names = [f"{split}_{name}" for split in splits for name in known] if len(splits) > 1 else list(known)
    if metric is not None and metric.removeprefix("eval_") not in names:
        default = "" if "metric_for_best_model" in explicit else " (the Trainer's default with --load_best_model_at_end)"
        raise UsageError(f"--metric_for_best_model {metric}{default} is no metric of {task.name}'s evaluations: use "
                         f"one of {', '.join(names)}")


def _optimizer_trial(training) -> None:
    """Build the optimizer --optim and --optim_args name, as the Trainer would, on one parameter: a value it
    cannot read (momentum=fast) or take (momentum=-1) is refused now, not after the run directory is taken.
    Optimizers built around the model (GaLore, APOLLO, LOMO) are left to the Trainer."""
    import torch
    from transformers import Trainer

    optim = str(getattr(training.optim, "value", training.optim))
    if any(word in optim for word in MODEL_OPTIMIZERS):
        return
    try:
        optimizer, arguments = Trainer.get_optimizer_cls_and_kwargs(training)
        optimizer([torch.nn.Parameter(torch.zeros(1))], **arguments)
    except (ValueError, TypeError) as error:
        raise UsageError(f"--optim {optim} --optim_args {training.optim_args!r}: {first_line(error)}: fix the value, "
                         "or leave it out") from None
    if ignored := _ignored_keys(training, arguments):
        adam = " (AdamW's betas and eps are --adam_beta1, --adam_beta2, --adam_epsilon)" if "betas" in arguments \
            and ignored[0] in ("betas", "beta1", "beta2", "eps") else ""
        raise UsageError(f"--optim_args: --optim {optim} does not read {ignored[0]!r}, and the Trainer would drop it "
                         f"without a word: leave it out{adam}")


def _ignored_keys(training, arguments: dict) -> list[str]:
    """The --optim_args keys the optimizer's keyword arguments do not depend on (``arguments``: those built from
    every key): the same without the key, and the same with another value in it."""
    items = dict(item.partition("=")[::2] for item in training.optim_args.replace(" ", "").split(","))
    ignored = []
    for key, value in items.items():
        without = {k: v for k, v in items.items() if k != key}
        other = {**items, key: value + "7"}
        if all(_arguments_with(training, variant) == arguments for variant in (without, other)):
            ignored.append(key)
    return ignored


def _arguments_with(training, items: dict) -> dict | None:
    """The optimizer's keyword arguments had --optim_args been ``items`` (None: a value it cannot read)."""
    from transformers import Trainer

    variant = copy.copy(training)
    variant.optim_args = ",".join(f"{key}={value}" for key, value in items.items()) or None
    try:
        return Trainer.get_optimizer_cls_and_kwargs(variant)[1]
    except (ValueError, TypeError):
        return None


def _compile_backends(known: list[str]) -> list[str]:
    """The compile backends of ``known`` (accelerate's) that this torch can run: registered with dynamo, and
    their package installed ("no": no compilation)."""
    from torch._dynamo import list_backends

    registered = set(list_backends(exclude_tags=()))
    return [name for name in known if name == "no" or name in registered
            and (name not in BACKEND_PACKAGES or _installed(BACKEND_PACKAGES[name]))]


def _check_texts(training) -> None:
    """Values of text flags the Trainer fails on only once it starts: --optim_args, the compile backend and mode."""
    for item in training.optim_args.replace(" ", "").split(",") if training.optim_args else ():  # as transformers
        key, _, value = item.partition("=")
        if not key or not value or "=" in value:
            raise UsageError(f"--optim_args {training.optim_args!r}: {item!r} is not key=value: write it as "
                             "comma-separated key=value items (beta1=0.9,eps=1e-8)")
    if training.optim_args:
        _optimizer_trial(training)
    from accelerate.utils import DynamoBackend

    backend = training.torch_compile_backend
    backends = [member.value.lower() for member in DynamoBackend]
    if backend is not None and backend.lower() not in backends:
        raise UsageError(f"--torch_compile_backend {backend} is no backend accelerate knows: use one of "
                         f"{', '.join(backends)}, or leave it out (inductor)")
    if backend is not None and backend.lower() not in _compile_backends(backends):
        raise UsageError(f"--torch_compile_backend {backend} cannot compile here (torch has no such backend, or its "
                         f"package is not installed): use one of {', '.join(_compile_backends(backends))}, or leave "
                         "it out (inductor)")
    if training.torch_compile_mode is not None and (backend or "inductor").lower() == "inductor":
        from torch._inductor import list_mode_options

        modes = list(list_mode_options())
        if training.torch_compile_mode not in modes:
            raise UsageError(f"--torch_compile_mode {training.torch_compile_mode} is no mode of the inductor "
                             f"backend: use one of {', '.join(modes)}, or leave it out")
