#!/usr/bin/env python3
#SBATCH --job-name=adarank-bench
#SBATCH --time=24:00:00
"""Run the configurations x seeds of one benchmark list, and keep each finished run's small files.

    python script/bench/run.py LIST [--dry-run] [KEY=VALUE ...] [-- extra flags for every run]
    python script/bench/run.py --help
    python script/bench/run.py script/bench/cola-fidelity.list configs="lora-r2 plateau" seeds=42 jobs=1

For every seed and, within a seed, every chosen configuration (so that all configurations of the
first seed finish first), one run of the project in RUNS/<config>-seed<N>/ (its log beside it, in
RUNS/<config>-seed<N>.log):
  - a run whose RESULTS/<config>-seed<N>/metrics.json exists has finished: it is skipped;
  - a run directory that holds a finished run only has its small files collected;
  - any other run starts, or continues from its newest complete checkpoint (--resume_from_checkpoint
    auto), and once it ends its small files are copied to RESULTS/<config>-seed<N>/: the names in
    `keep`, never adapters or checkpoints.
JOBS runs go side by side (1 to 64), each with OMP_NUM_THREADS=THREADS (1 to 1024; default: this
machine's cores / JOBS: two single-threaded runs finish sooner than one two-threaded run on two cores;
BENCHMARKS.md), at nice level NICE (0 to 19, the lowest priority; -20 to -1 raise it, which only root
may). RUNS and RESULTS are made before the first run starts. The Python of the runs: $PYTHON, else
.venv/bin/python, else python3. Paths are relative to the repository's root. Exit 0 when every run
finished, 1 when one failed, 2 on bad input.

A list file holds one item a line (`#` starts a comment, a line ending in `\\` goes on):
  KEY = VALUE                   a setting; any KEY=VALUE on the command line replaces the list's
  NAME SCRIPT [FLAGS ...]       a configuration: its name, its entry script under src/ and its flags
Settings the driver reads: runs, results (folders; both needed), seeds (default 42), configs (the
ones run by default: every configuration of the list), flags (added to every configuration), keep,
jobs (default 2), threads, nice (default 0), and data (a file or folder that must exist). Any other
key (epochs, precision, ...) is a value for the flags: `{key}` in a configuration or in `flags` is
replaced by the value (a word that is `{key}` alone by the value's words, none where it is empty).
Refused, in one line on stderr before any run starts: a key neither the driver's nor a `{key}` in use, a
setting, seed or configuration given twice, a count out of its range, a folder that cannot be made.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
# sbatch runs a copy of this file from its spool folder: then the job's submit folder is the root.
ROOT = (HERE.parents[1] if len(HERE.parents) > 1 and (HERE.parents[1] / "src").is_dir()
        else Path(os.environ.get("SLURM_SUBMIT_DIR", ".")).resolve())
KEEP = "config.json metrics.json history.jsonl ranks.jsonl predictions.tsv predictions.jsonl diagnostics.jsonl"
DEFAULTS = {"seeds": "42", "flags": "", "keep": KEEP, "jobs": "2", "nice": "0"}
MOST = {"jobs": (64, "runs side by side; more only share the same cores"),
        "threads": (1024, "threads a run; more than any machine here has cores"),
        "nice": (19, "the lowest priority there is")}
DRIVER_KEYS = {"runs", "results", "seeds", "configs", "flags", "keep", "jobs", "threads", "nice", "data"}
SETTING = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$")
PLACEHOLDER = re.compile(r"\{(\w+)\}")


class ListError(Exception):
    """Bad input: one line on stderr, exit code 2."""


@dataclass
class BenchList:
    settings: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)  # setting -> its line in the list
    configs: dict[str, list[str]] = field(default_factory=dict)  # name -> script and flags, unexpanded


@dataclass(frozen=True)
class Run:
    name: str  # <config>-seed<N>
    argv: list[str]  # the entry script and every flag


def logical_lines(text: str):
    """(number, line) without comments; a line ending in a backslash goes on in the next one."""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].rstrip()
        start = start or number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = (pending + line).strip(), ""
        if line:
            yield start, line
        start = 0


def words_of(text: str, where: str) -> list[str]:
    """``text`` split as a shell splits it; a quote left open is bad input named by ``where``."""
    try:
        return shlex.split(text)
    except ValueError as error:  # shlex: "No closing quotation", "No escaped character"
        raise ListError(f"{where}: {str(error).lower()} in '{text}': close the quote or escape it") from None


def list_text(path: Path) -> str:
    if path.is_dir():
        raise ListError(f"{path} is a directory: pass a benchmark list file (script/bench/*.list)")
    if not path.exists():
        raise ListError(f"{path} does not exist: pass a benchmark list (script/bench/*.list)")
    if not path.is_file():  # reading a named pipe would wait for a writer
        mode = path.stat().st_mode
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise ListError(f"{path} is {kind}, not a file: pass a benchmark list file (script/bench/*.list)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ListError(f"{path} is not UTF-8 text (byte {error.start}): save the list as UTF-8") from None
    except OSError as error:
        raise ListError(f"{path} cannot be read ({error.strerror or error}): make it readable (chmod u+r) "
                        "or pass another list") from None


def read_list(path: Path) -> BenchList:
    text = list_text(path)
    bench = BenchList()
    for number, line in logical_lines(text):
        setting = SETTING.match(line)
        if setting:
            key, first = setting[1], bench.lines.setdefault(setting[1], number)
            if first != number:
                raise ListError(f"{path}:{number}: '{key}' is set twice (lines {first} and {number}): keep one")
            bench.settings[key] = setting[2].strip()
            continue
        name, *command = words_of(line, f"{path}:{number}")
        if not command or not command[0].endswith(".py") or not re.fullmatch(r"[\w.-]+", name) or name in (".", ".."):
            raise ListError(f"{path}:{number}: a configuration is NAME SCRIPT.py [FLAGS ...], NAME of letters, digits, "
                            f"'.', '_' and '-' (it names the run's folder), not '{line}'")
        if not (ROOT / command[0]).is_file():
            raise ListError(f"{path}:{number}: {command[0]} does not exist (scripts are relative to {ROOT})")
        if name in bench.configs:
            raise ListError(f"{path}:{number}: configuration '{name}' is named twice")
        bench.configs[name] = command
    if not bench.configs:
        raise ListError(f"{path} has no configuration: add a line NAME SCRIPT.py [FLAGS ...]")
    return bench


def check_keys(bench: BenchList, given: dict[str, str], path: Path) -> None:  # the driver's, or a {key} in use
    words = [word for command in bench.configs.values() for word in command]
    words += [bench.settings.get("flags", ""), given.get("flags", "")]  # the only settings expanded
    known = DRIVER_KEYS | {key for word in words for key in PLACEHOLDER.findall(word)}
    where = {**{key: f"{path}:{line}: " for key, line in bench.lines.items()}, **dict.fromkeys(given, "")}
    for key in (key for key in where if key not in known):
        close = difflib.get_close_matches(key, sorted(known), n=1)
        raise ListError(f"{where[key]}unknown setting '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                        + f": use one of {' '.join(sorted(known))}, or use it as {{{key}}} in a configuration or flags")


def apply_overrides(bench: BenchList, overrides: list[str], path: Path) -> dict[str, str]:
    """The list's settings over the driver's defaults, with KEY=VALUE words from the command line."""
    given: dict[str, str] = {}
    for word in overrides:
        key, _, value = word.partition("=")
        problem = "is not KEY=VALUE" if not SETTING.match(word) else f"sets '{key}' again" if key in given else ""
        if problem:
            raise ListError(f"'{word}' {problem}: give each setting once, as key=value (flags for every run after --)")
        given[key] = value.strip()
    check_keys(bench, given, path)
    settings = {**DEFAULTS, **bench.settings, **given}
    for key in ("runs", "results"):
        if not settings.get(key):
            raise ListError(f"the list sets no '{key}' folder")
    return settings


def expand(words: list[str], values: dict[str, str]) -> list[str]:
    """`{key}` alone -> the value's words; `{key}` within a word -> the value as it is."""
    out = []
    for word in words:
        whole = PLACEHOLDER.fullmatch(word)
        if whole:
            out.extend(words_of(lookup(values, whole[1]), whole[1]))
        else:
            out.append(PLACEHOLDER.sub(lambda m: lookup(values, m[1]), word))
    return out


def lookup(values: dict[str, str], key: str) -> str:
    if key not in values:
        raise ListError(f"{{{key}}} is used but the list sets no '{key}'")
    return values[key]


def plan_runs(bench: BenchList, settings: dict[str, str], extra: list[str]) -> list[Run]:
    """Every chosen configuration x seed, seed by seed, with its whole command line."""
    chosen = settings.get("configs", "").split() or list(bench.configs)
    for name in (name for name in chosen if name not in bench.configs):
        raise ListError(f"unknown configuration '{name}': choose from {' '.join(bench.configs)}")
    seeds = settings["seeds"].split()
    if not seeds or not all(re.fullmatch(r"[0-9]+", seed) and int(seed) < 2**32 for seed in seeds):  # not '²'
        raise ListError(f"seeds must be whole numbers from 0 to 2^32 - 1, not '{settings['seeds']}'")
    for key, items in (("configs", chosen), ("seeds", [int(seed) for seed in seeds])):  # 1 and 01: one seed
        again = next((item for i, item in enumerate(items) if item in items[:i]), None)
        if again is not None:
            raise ListError(f"{key}='{settings[key]}' names {again} twice: name each once, or it runs twice")
    common = expand(words_of(settings["flags"], "flags"), settings)
    runs = []
    for seed in seeds:
        for name in chosen:
            run = f"{name}-seed{seed}"
            argv = [*expand(bench.configs[name], settings), *common, *extra, "--seed", seed,
                    "--output_dir", str(Path(settings["runs"]) / run), "--resume_from_checkpoint", "auto"]
            runs.append(Run(run, argv))
    return runs


def python() -> str:
    return os.environ.get("PYTHON") or (".venv/bin/python" if (ROOT / ".venv/bin/python").exists() else "python3")


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def whole(settings: dict[str, str], key: str, least: int, default: int | None = None) -> int:
    """A count from ``least`` to its bound in MOST."""
    value = settings.get(key) or (str(default) if default is not None else "")
    if not re.fullmatch(r"-?[0-9]+", value) or int(value) < least:  # ASCII digits: int('²') fails
        raise ListError(f"{key} must be a whole number, {least} or more, not '{value}'")
    most, why = MOST[key]
    if int(value) > most:
        raise ListError(f"{key} must be {most} or less, not '{value}' ({why}): give {key}={most} or less")
    return int(value)


def nice_level(settings: dict[str, str]) -> int:
    nice = whole(settings, "nice", -20)
    if nice < 0 and os.geteuid() != 0:
        raise ListError(f"nice={nice} raises the runs' priority, which only root may: give nice=0 to 19")
    return nice


def make_folders(folders: dict[str, Path]) -> None:
    """Make each folder and what is missing above it; where one cannot be made or written to, the folders
    made here are removed again and the error is one line."""
    made: list[Path] = []
    for key, folder in folders.items():
        missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
        try:
            for part in missing:
                part.mkdir()
                made.append(part)
            problem = "" if os.access(folder, os.W_OK | os.X_OK) else "it is not writable"
        except OSError as error:
            problem = f"{error.strerror or error} ({error.filename})" if error.filename else str(error)
        if problem:
            for part in reversed(made):
                part.rmdir()
            raise ListError(f"{key}: cannot make or write to {folder}: {problem}: give a folder you can write to")


@dataclass(frozen=True)
class Driver:
    runs: Path
    results: Path
    keep: tuple[str, ...]
    jobs: int
    threads: int
    nice: int

    def collect(self, run: Run) -> None:
        source, target = self.runs / run.name, self.results / run.name
        target.mkdir(parents=True, exist_ok=True)
        for name in self.keep:
            if (source / name).is_file():
                shutil.copyfile(source / name, target / name)

    def one(self, run: Run) -> bool:
        """Train (or continue) one run and keep its small files; False where it failed."""
        if not (self.runs / run.name / "metrics.json").is_file():
            env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
            with open(self.runs / f"{run.name}.log", "a") as log:
                code = subprocess.call(["nice", "-n", str(self.nice), python(), *run.argv], stdout=log,
                                       stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            if code != 0 or not (self.runs / run.name / "metrics.json").is_file():
                print(f"failed: {run.name} (see {self.runs / run.name}.log)", file=sys.stderr, flush=True)
                return False
        self.collect(run)
        print(f"finished: {run.name}", flush=True)
        return True


def driver_of(settings: dict[str, str]) -> Driver:
    jobs = whole(settings, "jobs", 1)
    keep = tuple(settings["keep"].split())
    if any("/" in name or name in ("adapter", "checkpoints", "merged") for name in keep):
        raise ListError(f"keep names files of a run directory, never folders: '{settings['keep']}'")
    if missing := [name for name in ("config.json", "metrics.json") if name not in keep]:
        raise ListError(f"keep must name {' and '.join(missing)}: a run is finished when RESULTS/<run>/metrics.json "
                        f"exists, and its config.json says what ran (keep is '{settings['keep']}')")
    for key in ("runs", "results"):
        folder = ROOT / settings[key]
        blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        if blocking:
            raise ListError(f"{key}: {blocking} is a file, not a folder: give a folder path for the {key}")
    if (ROOT / settings["runs"]).resolve() == (ROOT / settings["results"]).resolve():
        raise ListError(f"runs and results are one folder ({settings['runs']}): results keep a copy of each finished "
                        "run's small files, so give them a folder of their own")
    data = settings.get("data")
    if data and not (ROOT / data).exists():
        raise ListError(f"data: {data} does not exist (paths are relative to {ROOT})")
    return Driver(Path(settings["runs"]), Path(settings["results"]), keep, jobs,
                  whole(settings, "threads", 1, max(1, cores() // jobs)), nice_level(settings))


def split_arguments(argv: list[str]) -> tuple[Path, bool, list[str], list[str]]:
    """LIST, --dry-run, KEY=VALUE words, and the flags after --."""
    extra: list[str] = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1:]
    dry = "--dry-run" in argv
    words = [word for word in argv if word != "--dry-run"]
    if not words or "=" in words[0] or words[0].startswith("-"):
        raise ListError("usage: python script/bench/run.py LIST [--dry-run] [KEY=VALUE ...] [-- flags for every run] "
                        "(--help says more)")
    return Path(words[0]).resolve(), dry, words[1:], extra


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv[: argv.index("--")] if "--" in argv else argv):
        print(__doc__.strip())
        return 0
    try:
        path, dry, overrides, extra = split_arguments(argv)
        os.chdir(ROOT)
        bench = read_list(path)
        settings = apply_overrides(bench, overrides, path)
        runs = plan_runs(bench, settings, extra)
        driver = driver_of(settings)
        pending = [run for run in runs if not (driver.results / run.name / "metrics.json").is_file()]
        if pending and not dry:  # before the first run starts: a folder that cannot be made stops nothing midway
            make_folders({"runs": driver.runs, "results": driver.results})
    except ListError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    to_train = [run for run in pending if not (driver.runs / run.name / "metrics.json").is_file()]
    jobs = driver.jobs
    print(f"{len(runs) - len(pending)} finished, {len(pending) - len(to_train)} to collect, {len(to_train)} "
          f"run(s) to do, {jobs} at a time, {driver.threads} thread(s) each", flush=True)
    if dry:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `--dry-run | head` ends quietly, as other listings do
        for run in to_train:
            print(shlex.join([run.name, *run.argv]))
        return 0
    if not pending:
        return 0
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        outcomes = list(pool.map(driver.one, pending))
    return 0 if all(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
