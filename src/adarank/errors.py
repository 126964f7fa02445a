"""Errors a user can cause, and how a command line reports them."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from functools import wraps

USAGE_EXIT_CODE = 2


class UsageError(Exception):
    """Bad input from the user: reported as one line naming the problem and the fix."""


def first_line(error: Exception, limit: int = 200) -> str:
    """An exception's first line (at most ``limit`` characters), or its type where it says nothing."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


def whole_message(error: Exception, limit: int = 400) -> str:
    """An exception's message on one line (its lines joined), for messages whose later lines hold the values
    that explain the first (TrainingArguments': "... but found" and the strategies, a line each)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())[:limit] or type(error).__name__


def exits_cleanly_on_usage_errors(main: Callable) -> Callable:
    """Turn a UsageError into one line on stderr and exit code 2; bugs still raise."""

    @wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UsageError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(USAGE_EXIT_CODE) from None

    return wrapper


def configure_logging() -> None:
    """A command line's log: INFO lines with the time on stdout, the libraries' warnings only."""
    from transformers.utils import logging as hf_logging

    # PEFT warns on saving AdaLoRA modules pruned to rank 0, which are expected.
    warnings.filterwarnings("ignore", message=r".*LoRA tensor\(s\) have invalid shape")
    logging.basicConfig(stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    hf_logging.set_verbosity_warning()
