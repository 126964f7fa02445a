"""Flags a method would silently ignore, refused instead: one check for every method.

Some flags of the shared argument classes are read by some methods only (AdaLoRA's --init_r,
LoRA's --lora_r, the 4-bit compute dtype). Each method names those it reads in ``reads`` (its classes'
together: the 4-bit mixin adds the compute dtype); one the user gave explicitly to a method that does
not read it is refused, naming the methods that do. So is a flag of another method's own argument class,
which an entry script made for that method adds to the parser (src/custom's --r0 with --method adalora).
A method that trains nothing (--method none) says which of the flags only training reads were given.
Defaults are never refused: only the flags (or argument-file keys) the user gave.
"""

from __future__ import annotations

import logging
from dataclasses import fields

from adarank.errors import UsageError
from adarank.methods.base import METHODS, AdapterMethod

log = logging.getLogger("adarank")

SELECTIVE_FLAGS = ("lora_r", "init_r", "target_r", "tinit", "tfinal", "delta_t", "orth_reg_weight", "adalora_init",
                   "beta1", "beta2", "lora_alpha", "lora_dropout", "bnb_4bit_compute_dtype")
RANK_FLAGS = frozenset({"lora_r", "init_r", "target_r"})
# What only training reads: the adapters, the training data, the optimizer and its schedule. Not what an
# evaluation reads too: the evaluation batch size, --max_eval_samples, the data files and
# --validation_split_percentage (the records scored), the lengths and generation flags, the precision, --seed;
# nor --budget and --resume_from_checkpoint, which the job scripts give every method (the run's name, auto).
TRAINING_FLAGS = ("target_modules", "max_train_samples", "learning_rate", "num_train_epochs", "max_steps",
                  "per_device_train_batch_size", "gradient_accumulation_steps", "warmup_steps",
                  "weight_decay", "lr_scheduler_type", "max_grad_norm", "optim", "adam_beta1", "adam_beta2",
                  "adam_epsilon", "gradient_checkpointing", "peft_forward", "fast_dropout")


def check_method_flags(method: AdapterMethod, explicit: set[str], extra=()) -> None:
    """Refuse the flags in ``explicit`` that ``method`` does not read: a shared one outside its
    ``flags_read``, or one of another method's argument class among ``extra`` (the parsed ones)."""
    title = method.title or method.name
    for options in extra:
        given = [f"--{f.name}" for f in fields(options) if f.name in explicit]
        if type(options) is not method.arguments and given:
            owner = next((m.name for m in METHODS.values() if m.arguments is type(options)), "another method")
            raise UsageError(f"{_listed(given)} {_verb(given)} {owner}'s, not {title}'s: drop {_pronoun(given)}, "
                             f"or use --method {owner}")
    training = [f"--{flag}" for flag in TRAINING_FLAGS if flag in explicit]
    if training and not method.trains:  # said, not refused: a benchmark gives its baseline the others' flags
        log.warning("%s %s read by training only, and --method %s trains nothing (it scores the base model as it "
                    "is): %s not used", _listed(training), _verb(training), method.name,
                    "it is" if len(training) == 1 else "they are")
    reads = method.flags_read
    if reads is None:  # a method that has not said what it reads
        return
    foreign = [flag for flag in SELECTIVE_FLAGS if flag in explicit and flag not in reads]
    if not foreign:
        return
    readers = sorted(m.name for m in METHODS.values() if m.flags_read is not None and set(foreign) <= m.flags_read)
    hint = f" ({method.ranks_hint})" if method.ranks_hint and (RANK_FLAGS & set(foreign) or not reads) else ""
    named = [f"--{flag}" for flag in foreign]
    choose = f", or choose a method that reads {_pronoun(named)} (--method {', '.join(readers)})" if readers else ""
    raise UsageError(f"{_listed(named)} {_verb(named)} not {title}'s{hint}: drop {_pronoun(named)}{choose}")


def _listed(flags: list[str]) -> str:
    return flags[0] if len(flags) == 1 else ", ".join(flags[:-1]) + " and " + flags[-1]


def _verb(flags: list[str]) -> str:
    return "is" if len(flags) == 1 else "are"


def _pronoun(flags: list[str]) -> str:
    return "it" if len(flags) == 1 else "them"
