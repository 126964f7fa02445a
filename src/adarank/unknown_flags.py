"""Flags and argument-file keys that no argument class knows: one line naming the closest known ones."""

from __future__ import annotations

import difflib
from dataclasses import fields

from transformers import HfArgumentParser

from adarank.errors import UsageError
from adarank.validation import is_number


def argparse_error(message: str):
    raise UsageError(f"{message.rstrip('.')}: --help lists every flag")


def _close(name: str, known: list[str]) -> list[str]:
    """Up to three known names like ``name``, as close as the closest one (a typo has one answer)."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    ratio = {c: difflib.SequenceMatcher(None, name, c).ratio() for c in close}
    return [c for c in close if ratio[c] >= ratio[close[0]] - 0.1] if close else []


def _owners(name: str) -> list[str]:
    """The registered methods whose own flags include ``name`` (they join the parser with the --method)."""
    from adarank.methods.base import METHODS  # registered by now: the built-in ones and the entry script's

    return [m.name for m in METHODS.values() if m.arguments is not None and name in
            {f.name for f in fields(m.arguments)}]


# bitsandbytes' loading flags a user may bring from other QLoRA scripts: here a choice of method, or fixed.
NOT_FLAGS_HERE = {
    "bnb_4bit_quant_type": "the 4-bit methods quantise to NF4, QLoRA's data type, always",
    "bnb_4bit_use_double_quant": "the 4-bit methods quantise the quantisation constants too, as QLoRA does, always",
    "load_in_4bit": "a 4-bit base is a method's: give --method qlora, qadalora, qdora or qrslora",
    "load_in_8bit": "no method trains on an 8-bit base: give a 4-bit method (--method qlora) or a full-precision one",
}


def _suggestion(name: str, known: list[str], prefix: str = "--") -> str:
    if (bare := name.lstrip("-").replace("-", "_")) in NOT_FLAGS_HERE:
        return NOT_FLAGS_HERE[bare]
    if owners := _owners(name.lstrip("-").replace("-", "_")):
        return f"a flag of --method {' or '.join(owners)}: give that method, or drop it"
    close = _close(name.lstrip("-").replace("-", "_"), known)
    if not close:
        return "no flag is close" if prefix else "no key is close"
    names = [f"{prefix}{c}" if prefix else repr(c) for c in close]
    return "did you mean " + (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]) + "?"


def check_flags(parser: HfArgumentParser, argv: list[str]) -> None:
    """Refuse flags no argument class knows, and stray words, naming the closest flags."""
    _, remaining = parser.parse_known_args(args=argv)
    if not remaining:
        return
    # Candidates: the underscore spelling of every flag (HfArgumentParser also accepts dashes).
    known = sorted({o[2:] for o in parser._option_string_actions if o.startswith("--") and "-" not in o[2:]})
    unknown, stray = [], []
    follows_flag = False
    for word in remaining:
        if word.startswith("-") and not is_number(word):
            flag = word.split("=", 1)[0]
            unknown.append(f"{flag} ({_suggestion(flag, known)})")
            follows_flag = "=" not in word
        elif follows_flag:  # the value of the unknown flag before it
            follows_flag = False
        else:
            stray.append(repr(word))
    problems = []
    if unknown:
        problems.append(f"unknown flag{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    if stray:
        problems.append(
            f"unexpected argument{'s' if len(stray) > 1 else ''} {', '.join(stray)} (flags are given as --name value; "
            "a JSON/YAML file of arguments must be the only argument)"
        )
    raise UsageError("; ".join(problems) + ": --help lists every flag")


def check_keys(source: str, given: dict, classes) -> None:
    """Refuse keys of an argument file that name no flag, naming the closest ones."""
    known = sorted({f.name for cls in classes for f in fields(cls) if f.init})
    unknown = [key for key in given if key not in known]
    if unknown:
        named = ", ".join(f"{key} (YAML reads an unquoted yes, no, on or off as a truth value: quote the key)"
                          if isinstance(key, bool) else f"{str(key)!r} ({_suggestion(str(key), known, prefix='')})"
                          for key in unknown)
        raise UsageError(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {named}: "
                         "use the flag names of --help as keys")
