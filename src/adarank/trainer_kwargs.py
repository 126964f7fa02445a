"""The Trainer flags whose values are JSON objects, checked against what reads them before the run starts:
--lr_scheduler_kwargs against the chosen scheduler's signature (and one trial of it), the checkpointing
keyword arguments against torch.utils.checkpoint's and the Trainer's keys, --accelerator_config against
AcceleratorConfig. TrainingArguments keeps such values as they are given; each bad one ended in a traceback
when the Trainer built the scheduler, the first checkpointed step, or as TrainingArguments parsed."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import warnings
from pathlib import Path

from adarank.errors import UsageError, first_line

# What the Trainer passes a scheduler itself (the last epoch: from a checkpoint's state), never the user
SCHEDULER_OWN = {"optimizer": "", "num_warmup_steps": " (--warmup_steps)", "num_training_steps": " (--max_steps)",
                 "last_epoch": " (--resume_from_checkpoint)"}
# Schedulers get_scheduler calls without the kwargs, and those whose function passes them on to a class
KWARGS_IGNORED = ("constant", "constant_with_warmup")
KWARGS_PASSED_ON = {"reduce_lr_on_plateau": ("torch.optim.lr_scheduler", "ReduceLROnPlateau"),
                    "greedy": ("transformers.optimization", "GreedyLR")}
# --gradient_checkpointing_kwargs: (key, its test, what it must be). The Trainer takes every_n_layers and
# offload; torch.utils.checkpoint the rest (its context_fn is a function, which JSON cannot give).
CHECKPOINTING_KEYS = (
    ("use_reentrant", lambda v: isinstance(v, bool), "true or false"),
    ("preserve_rng_state", lambda v: isinstance(v, bool), "true or false"),
    ("determinism_check", lambda v: v in ("default", "none"), "default or none"),
    ("debug", lambda v: isinstance(v, bool), "true or false"),
    ("early_stop", lambda v: isinstance(v, bool), "true or false"),
    ("every_n_layers", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a whole number >= 1"),
    ("offload", lambda v: isinstance(v, bool), "true or false"),
)


def check_object_flags(training, explicit=frozenset()) -> None:
    """Refuse the first scheduler or checkpointing keyword argument the run would fail on (``explicit``: the
    flags the user gave, which tells which of two aliases to name)."""
    _check_scheduler_kwargs(training)
    _check_checkpointing_kwargs(training, explicit)


def _not_an_object(value) -> bool:
    """Whether a dict flag's value is set and is no JSON object (text TrainingArguments did not read as one)."""
    return value is not None and not isinstance(value, dict)


def _scheduler_parameters(kind: str) -> dict[str, inspect.Parameter] | None:
    """The parameters the --lr_scheduler_type ``kind`` takes from --lr_scheduler_kwargs (the Trainer's own
    included); None where it takes any."""
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType

    if kind in KWARGS_IGNORED:  # get_scheduler leaves them out: a value given would be lost
        return {}
    if kind in KWARGS_PASSED_ON:
        module, name = KWARGS_PASSED_ON[kind]
        target = getattr(importlib.import_module(module), name)
    else:
        target = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(kind)]
    parameters = inspect.signature(target).parameters
    return None if any(p.kind is p.VAR_KEYWORD for p in parameters.values()) else dict(parameters)


def first_step_learns(training, warmup_steps: int) -> bool:
    """Whether the --lr_scheduler_type's first step of a one-step run with ``warmup_steps`` of warm-up has a
    learning rate above 0 (a linear warm-up's first step has 0; some schedules start above it): the
    schedule itself, built on a stand-in optimizer, says. One the Trainer cannot build is judged there."""
    import torch
    from transformers.optimization import get_scheduler

    kind = str(getattr(training.lr_scheduler_type, "value", training.lr_scheduler_type))
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        get_scheduler(kind, optimizer, num_warmup_steps=warmup_steps, num_training_steps=1,
                      scheduler_specific_kwargs=dict(training.lr_scheduler_kwargs or {}))
    except (ValueError, TypeError):
        return True
    return optimizer.param_groups[0]["lr"] > 0


def _check_scheduler_kwargs(training) -> None:
    """Refuse --lr_scheduler_kwargs the chosen scheduler cannot take, or one it lacks, before the Trainer builds it."""
    kind = str(getattr(training.lr_scheduler_type, "value", training.lr_scheduler_type))
    given = training.lr_scheduler_kwargs
    if _not_an_object(given):
        raise UsageError(f"--lr_scheduler_kwargs {given!r} is not a JSON object: write it as '{{\"key\": value}}' "
                         "with the keyword arguments of the scheduler")
    given = given or {}
    parameters = _scheduler_parameters(kind)
    takes = None if parameters is None else [name for name in parameters if name not in SCHEDULER_OWN]
    accepts = "it takes any keyword" if takes is None else f"it takes: {', '.join(takes)}" if takes else \
        "it takes none"
    for key in given:
        if key in SCHEDULER_OWN:
            raise UsageError(f"--lr_scheduler_kwargs: {key} is the Trainer's to set{SCHEDULER_OWN[key]}: leave it "
                             f"out (--lr_scheduler_type {kind}: {accepts})")
        if takes is not None and key not in takes:
            raise UsageError(f"--lr_scheduler_kwargs: --lr_scheduler_type {kind} takes no {key!r} ({accepts}): "
                             "drop it, or choose the scheduler it belongs to")
    needed = [name for name in takes or () if parameters[name].default is inspect.Parameter.empty]
    for name in needed:
        if name not in given:
            raise UsageError(f"--lr_scheduler_type {kind} needs {name} in --lr_scheduler_kwargs (as in "
                             f"'{{\"{name}\": 100}}'; {accepts})")
    if problem := _scheduler_trial(kind, given):
        shown = f" with --lr_scheduler_kwargs {json.dumps(given)}" if given else ""
        raise UsageError(f"--lr_scheduler_type {kind}{shown}: {problem} ({accepts})")


def _scheduler_trial(kind: str, given: dict) -> str | None:
    """What building the scheduler, and stepping it, says of the values given (None: nothing): on one
    parameter, over a few steps, as the Trainer would build it over the run."""
    import torch
    from torch.optim.lr_scheduler import LambdaLR
    from transformers.optimization import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's on stepping with no optimizer step, and the like
        try:
            scheduler = get_scheduler(kind, optimizer, num_warmup_steps=1, num_training_steps=3,
                                      scheduler_specific_kwargs=dict(given))
            for _ in range(4 if isinstance(scheduler, LambdaLR) else 0):  # warm-up, decay, past the end
                scheduler.step()
        except (ValueError, TypeError, ArithmeticError) as error:
            return first_line(error)
    return None


def _check_checkpointing_kwargs(training, explicit) -> None:
    """Refuse --gradient_checkpointing_kwargs (--activation_checkpointing_kwargs) that torch.utils.checkpoint or
    the Trainer would fail on at the first training step."""
    flag = "--activation_checkpointing_kwargs" if "activation_checkpointing_kwargs" in explicit \
        else "--gradient_checkpointing_kwargs"
    given = training.activation_checkpointing_kwargs
    example = '\'{"use_reentrant": false}\''
    if _not_an_object(given):
        raise UsageError(f"{flag} {given!r} is not a JSON object: write it as {example}")
    known = {key: (test, requirement) for key, test, requirement in CHECKPOINTING_KEYS}
    _refuse_unknown_keys(flag, given or {}, known)
    for key, value in (given or {}).items():
        test, requirement = known[key]
        if not test(value):
            raise UsageError(f"{flag}: {key} {json.dumps(value)} must be {requirement}")
    if (given or {}).get("debug") and given.get("use_reentrant", True):
        raise UsageError(f"{flag}: debug needs \"use_reentrant\": false (checkpointing with re-entry has no debug "
                         "mode): add it, or drop debug")


def check_read_as_parsed(value_of, source: str | None = None) -> None:
    """Refuse the values TrainingArguments fails on in a traceback as it parses them: --accelerator_config and
    --fsdp_config (with --fsdp), which it reads then, and --deepspeed, whose package it imports then
    (``value_of``: a flag's value as given, by name; ``source``: the argument file that gives them)."""
    check_accelerator_config(value_of("accelerator_config"), source)
    fsdp_config = value_of("fsdp_config")
    if value_of("fsdp") and isinstance(fsdp_config, str) and not fsdp_config.startswith("{"):
        name = "--fsdp_config" if source is None else f"{source}: fsdp_config"
        if not isinstance(_json_file(fsdp_config, name, '\'{"min_num_params": 0}\''), dict):
            raise UsageError(f"{name} {fsdp_config}: the file holds no JSON object: write one")
    if value_of("deepspeed") is not None and importlib.util.find_spec("deepspeed") is None:
        name = "--deepspeed" if source is None else f"{source}: deepspeed"
        raise UsageError(f"{name} needs the package deepspeed, which is not installed: install it or leave the "
                         "flag out")


def check_accelerator_config(value, source: str | None = None) -> None:
    """Refuse an --accelerator_config (as given: a JSON object, its text, or a JSON file's path) that
    TrainingArguments fails on in a traceback as it reads it: a file that is not there or holds no JSON
    object, or a key AcceleratorConfig does not have. Text that is no JSON it refuses in one line itself."""
    from transformers.trainer_pt_utils import AcceleratorConfig

    name = "--accelerator_config" if source is None else f"{source}: accelerator_config"
    example = '\'{"split_batches": true}\''
    config, shown = value, name
    if isinstance(value, str) and value.startswith("{"):
        try:
            config = json.loads(value)
        except ValueError:
            return
    elif isinstance(value, str):  # the path of a JSON file
        config, shown = _json_file(value, name, example), f"{name} {value}"
    if config is None or isinstance(config, AcceleratorConfig):
        return
    if not isinstance(config, dict):
        raise UsageError(f"{shown}: not a JSON object: write it as {example}")
    _refuse_unknown_keys(shown, config, AcceleratorConfig.__dataclass_fields__)


def _json_file(value: str, name: str, example: str):
    """The JSON document in the file a flag ``name`` names (TrainingArguments reads it as it parses): a file
    that is not there or holds no JSON is refused."""
    path, shown = Path(value), f"{name} {value}"
    if not path.is_file():
        why = "is a folder" if path.is_dir() else "no such file"
        raise UsageError(f"{shown}: {why}: give a JSON object ({example}) or the path of a JSON file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UsageError(f"{shown}: the file holds no JSON ({first_line(error)}): fix it") from None


def _refuse_unknown_keys(name: str, given: dict, known) -> None:
    """Refuse the first key of the JSON object ``given`` (the value of ``name``) that is none of ``known``."""
    for key in given:
        if key not in known:
            raise UsageError(f"{name}: unknown key {key!r} (it takes: {', '.join(known)}): drop it")
