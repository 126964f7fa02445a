"""The command line of the bench scripts (run.py aside: sbatch runs a copy of it alone): bad input,
argparse's own complaints included, ends in one line on stderr, ``error: ...`` naming the problem and
the fix, exit code 2, before anything is measured or written; a run that fails is exit 1."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from adarank.errors import UsageError, exits_cleanly_on_usage_errors  # noqa: E402

__all__ = ["UsageError", "exits_cleanly_on_usage_errors", "command_line", "at_least", "threads_at_most",
           "folder_to_write", "MOST_THREADS"]

MOST_THREADS = 1024  # more than any machine the benchmarks run on has cores; torch overflows far above


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # a value of the wrong type, an unknown flag, a choice not offered
        raise UsageError(message if "choose from" in message else f"{message}: --help lists every flag")


def command_line(doc: str) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of the script's docstring."""
    return OneLineParser(description=doc.split("\n\n")[0])


def at_least(minimum: int, **options) -> None:
    """Refuse any option given below ``minimum`` (option name -> its value; None: not given)."""
    for name, value in options.items():
        if value is not None and value < minimum:
            raise UsageError(f"--{name} {value} must be at least {minimum}: give --{name} {minimum} or more")


def threads_at_most(flag: str, counts: list[int]) -> None:
    for count in counts:
        if count > MOST_THREADS:
            raise UsageError(f"--{flag} {count} is more than {MOST_THREADS} threads: give the machine's cores or fewer")


def folder_to_write(path: str, flag: str) -> None:
    """Refuse a folder that cannot be made because it, or a folder above it, is a file."""
    folder = Path(path).absolute()
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking:
        raise UsageError(f"--{flag} {path}: {blocking} is a file, not a folder: give a folder path")
