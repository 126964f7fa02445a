"""The command line of the analysis tools: a parser described by the tool's docstring, its inputs
(run directories, or one folder of them), and the options several tools share."""

from __future__ import annotations

import argparse
import sys

from run_reader import AnalysisError


def command_line(doc: str, runs: str | None = None, root: str | None = None, nargs: str = "+",
                 csv: bool = False, figure: str | None = None) -> argparse.ArgumentParser:
    """A parser with the first paragraph of ``doc`` as its description; ``runs`` (help text): run
    directories as positional arguments; ``root``: one folder of runs; ``csv``: --csv; ``figure``:
    --out, an image file (the help's ending: where it goes by default)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if runs:
        parser.add_argument("runs", nargs=nargs, help=runs)
    if root:
        parser.add_argument("root", help=root)
    if csv:
        parser.add_argument("--csv", action="store_true", help="print CSV instead of Markdown")
    if figure is not None:
        parser.add_argument("--out", help=f"output file (.png, .pdf or .svg){figure}")
    return parser


# The fewest resamples a 95% percentile interval is read from: its ends are the 2.5% tails, which
# take about a thousand resamples to settle (Efron and Tibshirani, An Introduction to the Bootstrap, ch. 19).
LEAST_RESAMPLES = 1000
MOST_RESAMPLES = 100_000  # each resample scores every run on a fresh draw of the dev examples: minutes already


def add_paper_options(parser: argparse.ArgumentParser, paper: str) -> None:
    """--paper (``paper``: what it adds) and --bootstrap, for the tools that compare methods."""
    parser.add_argument("--paper", action="store_true", help=paper)
    parser.add_argument("--bootstrap", type=int, default=2000,
                        help=f"bootstrap resamples (at least {LEAST_RESAMPLES}; default: 2000)")


def enough_resamples(resamples: int) -> None:
    """Refuse a --bootstrap too small to place the ends of a 95% interval."""
    if resamples < LEAST_RESAMPLES:
        raise AnalysisError(f"--bootstrap must be at least {LEAST_RESAMPLES}, not {resamples}: the 95% interval's "
                            "ends are its 2.5% tails, which fewer resamples place by chance (default: 2000)")
    if resamples > MOST_RESAMPLES:
        raise AnalysisError(f"--bootstrap must be at most {MOST_RESAMPLES}, not {resamples}: each resample scores every "
                            "run again, and the interval's ends stop moving long before (default: 2000)")


def at_least(minimum: int, **options) -> None:
    """Refuse any option given below ``minimum`` (option name -> its value; None: not given)."""
    for name, value in options.items():
        if value is not None and value < minimum:
            bound = "0 or more" if minimum == 0 else f"at least {minimum}"
            raise AnalysisError(f"--{name} must be {bound}, not {value}")


def fail_cleanly(main):
    """Run ``main``; an AnalysisError becomes one line on stderr and exit code 2."""

    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except AnalysisError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
