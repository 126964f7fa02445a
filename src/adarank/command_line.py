"""A command line read before its full parse: the method it names (whose own flags join the parser) and
the values of the flags that decide other defaults."""

from __future__ import annotations

import sys
from pathlib import Path

from adarank.argument_file import is_argument_file, read_argument_file
from adarank.errors import UsageError
from adarank.methods.base import METHODS, get_method


def requested_method(argv: list[str] | None) -> str | None:
    """The --method a command line (or its one argument file) names, read before the full parse because
    a method's own flags join the parser; None where it names none (or the file cannot be read: the
    parse says why)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and is_argument_file(argv[0]):
        try:
            document = read_argument_file(Path(argv[0]))
        except UsageError:
            return None
        method = document.get("method") if isinstance(document, dict) else None
        return method if isinstance(method, str) else None
    return flag_value(argv, "method")


def script_setup(method: str | None, argv: list[str] | None, method_arguments: tuple,
                 defaults: dict | None) -> tuple[tuple, dict | None]:
    """A task script's method flags and defaults. ``method`` (a script made for a registered method) is the
    default method, with its script's defaults where the command line names no other: the plateau scripts'
    large budget and Trainer without evaluations are plateau's, not SoRA's there. The own flags of both it
    and the method the command line names join the parser."""
    named = requested_method(argv)
    if method is not None:
        own = get_method(method).script_defaults if named in (None, method) else {}
        defaults = {"method": method, **own, **(defaults or {})}
    for name in (method, named):
        chosen = METHODS.get(name) if name else None
        if chosen is not None and chosen.arguments is not None and chosen.arguments not in method_arguments:
            method_arguments = (*method_arguments, chosen.arguments)
    return method_arguments, defaults


def asks_for(value: str | None) -> bool:
    """Whether a boolean flag followed by ``value`` (None: nothing follows) turns its option on."""
    return value is None or value.lower() not in ("false", "no", "f", "n", "0")


def flag_value(argv: list[str], name: str) -> str | None:
    """The value of ``--name value`` or ``--name=value`` in argv, read before the full parse
    because it decides the other defaults: the last one given, as the parse takes."""
    value = None
    for i, item in enumerate(argv):
        if item == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
        elif item.startswith(f"--{name}="):
            value = item.split("=", 1)[1]
    return value
