"""Numbers a user types, checked at the edge: each bad value refused in one line naming it, before
the data or the model is loaded.

Three steps. ``join_negative_values`` lets ``--learning_rate -1e-3`` reach the parser as one
flag and value (argparse would take ``-1e-3`` for a flag and say "expected one argument").
``typed_file_values`` gives an argument file's values the types of their flags (YAML reads
``1e-3`` as a string) or names the file and key that holds a wrong type. ``check_numbers`` holds
every training number to its range; each method checks its own numbers when it plans.
"""

from __future__ import annotations

import math
import netrc
import os
import re
import typing
from dataclasses import fields
from types import NoneType, UnionType
from urllib.parse import urlsplit

from adarank.errors import UsageError

SEED_LIMIT = 2**32  # numpy's seeds, which set_seed seeds too, lie below it

# (argument group, name, test, what the value must be); None values are not checked (unset).
RULES = (
    ("training", "learning_rate", lambda v: v > 0, "must be > 0"),
    ("training", "per_device_train_batch_size", lambda v: v >= 1, "must be at least 1"),
    ("training", "per_device_eval_batch_size", lambda v: v >= 1, "must be at least 1"),
    ("training", "gradient_accumulation_steps", lambda v: v >= 1, "must be at least 1"),
    ("training", "max_steps", lambda v: v == -1 or v >= 1,
     "must be a positive number of steps (or -1: --num_train_epochs decides)"),
    ("training", "warmup_steps", lambda v: 0 <= v < 1 or (v >= 1 and float(v).is_integer()),
     "must be a fraction of the run in [0, 1) or a whole number of steps"),
    ("training", "weight_decay", lambda v: v >= 0, "must be >= 0"),
    ("training", "max_grad_norm", lambda v: v >= 0, "must be >= 0 (0: no clipping)"),
    ("training", "seed", lambda v: 0 <= v < SEED_LIMIT, f"must be a whole number from 0 to {SEED_LIMIT - 1}"),
    ("training", "data_seed", lambda v: 0 <= v < SEED_LIMIT, f"must be a whole number from 0 to {SEED_LIMIT - 1}"),
    ("training", "logging_steps", lambda v: v > 0, "must be > 0 (below 1: a fraction of the run)"),
    ("training", "eval_steps", lambda v: v > 0, "must be > 0 (below 1: a fraction of the run)"),
    ("training", "save_steps", lambda v: v > 0, "must be > 0 (below 1: a fraction of the run)"),
    ("training", "save_total_limit", lambda v: v >= 1, "must be at least 1 (leave it unset to keep every checkpoint)"),
    ("training", "dataloader_num_workers", lambda v: v >= 0, "must be >= 0"),
    ("training", "adam_beta1", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("training", "adam_beta2", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("training", "adam_epsilon", lambda v: v >= 0, "must be >= 0"),
    ("training", "label_smoothing_factor", lambda v: 0 <= v < 1, "must be in [0, 1) (0: no smoothing)"),
    ("training", "neftune_noise_alpha", lambda v: v >= 0, "must be >= 0 (leave it unset for no noise)"),
    ("training", "eval_delay", lambda v: v >= 0, "must be >= 0 (epochs or steps to wait before the first evaluation)"),
    ("training", "eval_accumulation_steps", lambda v: v >= 1,
     "must be at least 1 (leave it unset to keep the predictions on the device until the evaluation ends)"),
    ("model", "max_seq_length", lambda v: v >= 1, "must be at least 1 token"),
    ("model", "classifier_dropout", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("data", "max_train_samples", lambda v: v >= 1, "must be at least 1 (leave it unset to train on every example)"),
    ("data", "max_eval_samples", lambda v: v >= 1, "must be at least 1 (leave it unset to evaluate on every example)"),
)


# Steps TrainingArguments rewrites before any check could see them: an eval_steps of 0 silently
# becomes logging_steps. These are checked as the user gave them.
REWRITTEN_STEPS = ("eval_steps",)


def check_given_steps(given: dict[str, object], source: str | None = None) -> None:
    """Refuse a rewritten step count (``given``: name to the text or value the user gave) below 1 step."""
    for name in REWRITTEN_STEPS:
        value = given.get(name)
        if value is not None and not isinstance(value, bool) and is_number(str(value)) and float(value) <= 0:
            raise UsageError(f"{flag_name(source, name)} {float(value):g} must be > 0 (below 1: a fraction of the run)")


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def join_negative_values(argv: list[str]) -> list[str]:
    """``--flag -1e-3`` as ``--flag=-1e-3``: argparse reads a word that starts with a dash and is
    not a plain decimal as a flag, so a negative value would be refused as a missing one."""
    joined: list[str] = []
    for word in argv:
        previous = joined[-1] if joined else ""
        if word.startswith("-") and is_number(word) and previous.startswith("--") and "=" not in previous:
            joined[-1] = f"{previous}={word}"
        else:
            joined.append(word)
    return joined


def flag_name(source: str | None, name: str) -> str:
    """How a value is named to the user: the flag, or the argument file and its key."""
    return f"--{name}" if source is None else f"{source}: {name}"


def check_numbers(args, source: str | None = None) -> None:
    """Refuse the first training number out of its range (``source``: the argument file they came from)."""
    for group, name, test, requirement in RULES:
        value = getattr(getattr(args, group), name, None)
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, float) and not math.isfinite(value) or not test(value):
            raise UsageError(f"{flag_name(source, name)} {value:g} {requirement}")
    groups = (args.model, args.data, args.adapter, args.run, args.training, *args.extra, args.task_options)
    for options in groups:  # every other number the user gave, a method's or task family's own flags included
        for name, value in (vars(options) if options is not None else {}).items():
            if (options is not args.training or name in args.explicit) and isinstance(value, float) \
                    and not math.isfinite(value):
                raise UsageError(f"{flag_name(source, name)} {value:g} must be a finite number")
    training = args.training
    if training.max_steps < 1 and training.num_train_epochs <= 0:
        raise UsageError(f"{flag_name(source, 'num_train_epochs')} {training.num_train_epochs:g} trains nothing: "
                         "give a positive number of epochs, or --max_steps")


def _kind(annotation) -> type | None:
    """bool, int, float or str for a flag of that type (optional or not); None for any other."""
    options = typing.get_args(annotation) if isinstance(annotation, UnionType) or \
        typing.get_origin(annotation) is typing.Union else (annotation,)
    options = [o for o in options if o is not NoneType]
    return options[0] if len(options) == 1 and options[0] in (bool, int, float, str) else None


# Text flags that take comma-separated items, so an argument file may give them as a list.
COMMA_SEPARATED = ("target_modules", "optim_args")


def _typed(kind: type, value, key: str):
    """``value`` as a ``kind`` where it is one (a number written as text included); raises ValueError."""
    if isinstance(value, list) and key not in COMMA_SEPARATED:
        raise ValueError("one value (the flag takes one, not a list)")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise ValueError("true or false")
    if kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return ",".join(value)  # a list for a comma-separated flag (--target_modules query,value)
        raise ValueError("text")
    wanted = "a number" if kind is float else "a whole number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or not is_number(str(value)):
        raise ValueError(wanted)
    number = float(value)
    if kind is int:
        if not number.is_integer():
            raise ValueError(wanted)
        return int(number)
    return number


def typed_file_values(source: str, given: dict, classes) -> dict:
    """An argument file's values with the types of their flags; a value of another type is refused, naming
    the file and the key. No value (null, a YAML key left empty) is the default where the flag's default is
    none, and is left out as if not given; for another flag it is refused."""
    kinds = {f.name: _kind(typing.get_type_hints(cls).get(f.name)) for cls in classes for f in fields(cls) if f.init}
    unset = {f.name for cls in classes for f in fields(cls) if f.init and f.default is None}
    typed = dict(given)
    for key, value in given.items():
        if value is None and key in unset:
            del typed[key]
            continue
        if value is None:
            raise UsageError(f"{source}: {key} has no value: give it one, or leave the key out for its default")
        kind = kinds.get(key)
        if kind is None:
            continue
        try:
            typed[key] = _typed(kind, value, key)
        except ValueError as wanted:
            raise UsageError(f"{source}: {key} {value!r} is not {wanted}: write it as --help shows the flag's "
                             "value") from None
    return typed


def check_reporting(training) -> None:
    """Refuse a ``--report_to`` the Trainer would fail on once the run directory is taken: a name that
    is no integration, one whose package is not installed, or W&B with no way to log in."""
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = list(training.report_to or [])
    usage = "give one of them (a list in an argument file), all (every one installed) or none"
    if "none" in names and len(names) > 1:
        raise UsageError(f"--report_to {' '.join(names)}: none reports nothing, so it stands alone")
    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            known = ", ".join(sorted(INTEGRATION_TO_CALLBACK))
            raise UsageError(f"--report_to {name!r} is no integration the Trainer has ({known}): {usage}")
        if name not in get_available_reporting_integrations():
            installed = ", ".join(get_available_reporting_integrations()) or "none"
            raise UsageError(f"--report_to {name}: its package is not installed here: install it, or choose "
                             f"one that is ({installed}) or none")
    if "wandb" in names and os.environ.get("WANDB_MODE") not in ("offline", "disabled", "dryrun") \
            and not _wandb_key_here():
        raise UsageError("--report_to names wandb (all: every installed integration), and W&B has no API key here: "
                         "run `wandb login` or set WANDB_API_KEY, set WANDB_MODE=offline to log to files, or name "
                         "other integrations")


def _wandb_key_here() -> bool:
    """Whether W&B would find an API key (WANDB_API_KEY, or the ~/.netrc entry `wandb login` writes),
    asked without W&B itself: its login starts a service process and, with a key, asks the server."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    machine = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc  # with its port, as W&B
    try:  # the path given, as W&B gives it: without one, Python refuses a .netrc others can read
        entry = netrc.netrc(os.environ.get("NETRC") or os.path.expanduser("~/.netrc")).authenticators(machine)
    except (OSError, netrc.NetrcParseError):  # no such file, or one netrc cannot read
        return False
    return entry is not None and bool(entry[2])  # the key is the entry's password


# Flags that name real data, which --demo's built-in synthetic data would silently replace.
REAL_DATA_FLAGS = ("data_dir", "data_file", "validation_file", "test_file", "validation_split_percentage",
                   "text_column", "summary_column")


def check_demo_data(demo: bool, explicit: set[str], source: str | None = None) -> None:
    """Refuse --demo beside a flag that names real data: one of the two would be ignored."""
    given = [name for name in REAL_DATA_FLAGS if name in explicit]
    if not (demo and given):
        return
    if source is None:
        raise UsageError(f"--demo trains on built-in synthetic data, so --{given[0]} would be ignored: drop --demo "
                         f"to use that data, or drop --{given[0]}")
    raise UsageError(f"{source}: demo trains on built-in synthetic data, so {given[0]} would be ignored: drop demo to "
                     f"use that data, or drop {given[0]}")


def check_launch_environment() -> None:
    """The variables a launcher sets (torchrun; script/slurm/srun_task.sh under srun): whole numbers, and a
    multi-process WORLD_SIZE with the rendezvous address that comes with it. Set by hand or left over
    from another job, they failed in TrainingArguments with a message that blamed the flags."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        value = os.environ.get(name)
        if value is not None and not re.fullmatch(r"-?\d+", value.strip()):
            raise UsageError(f"{name}={value!r} is not a whole number: the launcher (torchrun) sets it; unset it, or "
                             "start the run with torchrun")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 1:
        problem = "is no number of processes"
    elif world > 1 and not os.environ.get("MASTER_ADDR"):
        problem = "asks for several processes, but no launcher set MASTER_ADDR"
    else:
        return
    raise UsageError(f"WORLD_SIZE={world} {problem}: unset WORLD_SIZE, or start the run with torchrun "
                     "(script/run_glue.sh with NPROC=N)")
