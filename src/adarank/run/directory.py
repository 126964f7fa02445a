"""The run directory: what training writes and analysis reads.

A run is finished once ``metrics.json`` exists; it is written last. A
finished run is never overwritten unless the user asks for it, nor is a
folder that holds something else (a model's folder). Documents written
once are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from adarank.errors import UsageError
from adarank.run.replaced import replacing, restore_interrupted, set_aside
from adarank.run.space import MIN_FREE_BYTES, check_free_space, existing_ancestor

FINISHED_MARKER = "metrics.json"
# The version of config.json and metrics.json written today; analysis/run_format.py reads every
# version up to it (a change to either document's entries raises it there and here). Version 3:
# metrics.json's average_adapter_params counts what every method holds and trains (SoRA's gates and
# all r_max directions too), and average_live_adapter_params what is switched on.
FORMAT_VERSION = 3
# Every document a run writes; a new run in the same directory removes them all first, so that no
# file of the previous run is left beside the new config.json.
RUN_FILES = (
    "metrics.json", "config.json", "history.jsonl", "ranks.jsonl", "predictions.tsv", "predictions.jsonl",
    "memory.json", "diagnostics.jsonl",
)
CHECKPOINTS = "checkpoints"  # the Trainer's output_dir, inside the run directory
RUN_FOLDERS = ("adapter", CHECKPOINTS, "merged")
# Every name a run puts in its directory (its hidden temporary files start with a dot too).
RUN_NAMES = frozenset((*RUN_FILES, *RUN_FOLDERS, ".lock", "tensorboard"))
# The run directories this process holds the lock of, by path: every RunDirectory of one path shares
# the lock, which is let go once none of them is left.
_HELD_LOCKS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def default_run_dir(task: str, method: str, budget_label: str, seed: int, demo: bool, recipe: str = "paper") -> Path:
    """runs/<task>/[demo-]<method>[-<recipe>]-<budget label>-seed<seed>-<time>, with the budget label
    of the resolved plan; the recipe is named where it is not the default (paper)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parts = [method, *([] if recipe == "paper" else [recipe]), *([] if budget_label == "none" else [budget_label])]
    label = "-".join(parts)  # --method none: no adapters, so no budget
    return Path("runs") / task / f"{'demo-' if demo else ''}{label}-seed{seed}-{stamp}"


def checkpoint_folder(output_dir: str | Path, step: int) -> Path:
    """Where the Trainer saves the checkpoint of ``step`` (methods add their state there)."""
    return Path(output_dir) / f"checkpoint-{step}"


def checkpoint_step(checkpoint: str | Path) -> int:
    """The optimizer step a Trainer checkpoint was taken at."""
    state = Path(checkpoint) / "trainer_state.json"
    try:
        return int(json.loads(state.read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(
            f"--resume_from_checkpoint {checkpoint} is not a readable Trainer checkpoint (its trainer_state.json "
            f"is missing or damaged): give a checkpoint-N folder from the run's {CHECKPOINTS}/"
        ) from None


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._made = False  # by this run's prepare (and so to go again where the run fails before writing to it)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def finished(self) -> bool:
        return (self.path / FINISHED_MARKER).is_file()

    def check_usable(self, overwrite: bool, resuming: bool) -> None:
        """Refuse a place the run cannot write to, a directory holding a finished run, or checkpoints a
        new run would delete."""
        self._check_writable()
        if overwrite:
            return
        if self.finished:
            raise UsageError(
                f"{self.path} already holds a finished run: choose another --output_dir "
                "or pass --overwrite_output_dir to replace it"
            )
        checkpoints = sorted(self.checkpoints.glob("checkpoint-*"), key=lambda p: p.stat().st_mtime)
        if checkpoints and not resuming:
            raise UsageError(
                f"{self.path} holds checkpoints of an unfinished run: continue it with --resume_from_checkpoint "
                f"{checkpoints[-1]}, or pass --overwrite_output_dir to start over"
            )
        if self.foreign:
            raise UsageError(
                f"--output_dir {self.path} is not empty and holds no run of this project (no config.json of one, "
                "no checkpoints): choose a new or empty --output_dir, or pass --overwrite_output_dir to write the "
                "run into it (replacing any config.json there)"
            )

    @property
    def foreign(self) -> bool:
        """A directory that is not empty and holds no run of this project (a model's folder, say): a run
        written into it would replace its config.json and mix its files with the folder's."""
        if not self.path.is_dir():
            return False
        names = {p.name for p in self.path.iterdir()}
        if "config.json" in names:
            return not _written_by_a_run(self.path / "config.json")
        if names & {FINISHED_MARKER, CHECKPOINTS, "history.jsonl"}:
            return False
        return any(name not in RUN_NAMES and not name.startswith(".") for name in names)

    def _check_writable(self) -> None:
        """A directory (or a place to make one) where a file can be made, with space left on its disk."""
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--output_dir {self.path} is a file, not a directory: choose another --output_dir")
        parent = existing_ancestor(self.path)
        if not parent.is_dir():
            raise UsageError(f"--output_dir {self.path} lies under {parent}, a file: choose another --output_dir")
        try:
            with tempfile.NamedTemporaryFile(dir=parent, prefix=".adarank-probe-"):
                pass
        except OSError as error:
            raise UsageError(f"--output_dir {self.path} is not writable: making a file in {parent} failed "
                             f"({error.strerror}): choose a directory this process can write to") from None
        check_free_space(self.path, MIN_FREE_BYTES, "a run")

    def lock_if_present(self) -> RunDirectory:
        """Take the directory's lock where it exists already: another process writing to it is
        refused before anything slow happens (a new directory is locked when it is made). Then a run that a
        killed replacement left set aside is put back, or dropped where the replacement had finished."""
        self._check_writable()
        if self.path.is_dir() and not self.foreign:  # a foreign one is refused (check_usable), not written to
            self._lock()
            restore_interrupted(self.path, RUN_FILES + RUN_FOLDERS, self.checkpoints, self.finished)
        return self

    def prepare(self, overwrite: bool, resume_step: int | None = None) -> None:
        """Take the directory for this process; start it afresh, or trim its logs back to a checkpoint."""
        self.check_usable(overwrite, resume_step is not None)
        self._made = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        if resume_step is None:
            self._clear()
        else:
            self._rewind_logs(resume_step)

    def _lock(self) -> None:
        # Held while this process works in the directory, and let go when it ends, also when it is
        # killed: a second job on the same directory stops here instead of mixing its files with this one's.
        key = str(self.path.resolve())
        self._held = _HELD_LOCKS.get(key) or _Lock(self.path)
        _HELD_LOCKS[key] = self._held

    def _clear(self) -> None:
        set_aside(self.path, RUN_FILES + RUN_FOLDERS)  # kept until this run can stand in for it (run/replaced.py)

    @contextmanager
    def replacing(self, main_process: bool) -> Iterator[None]:
        """Around training: a run this one replaced is dropped once it finishes, put back if it fails first.
        A directory this run made goes again where it fails before writing anything to it (a method that
        refuses its adapters once the model is loaded)."""
        try:
            with replacing(self.path, RUN_FILES + RUN_FOLDERS, self.checkpoints, main_process):
                yield
        except BaseException:
            if self._made and self._holds_only({".lock"}):
                shutil.rmtree(self.path, ignore_errors=True)  # while still locked: no other job takes it meanwhile
                self._unlock()
            raise

    def _holds_only(self, names: set[str]) -> bool:
        try:
            return {item.name for item in self.path.iterdir()} <= names
        except OSError:
            return False

    def _unlock(self) -> None:
        held = _HELD_LOCKS.pop(str(self.path.resolve()), None)
        if held is not None:
            held.file.close()

    def _rewind_logs(self, step: int) -> None:
        """Drop log lines written after ``step`` by a run that is resumed from there, and the
        end-of-training records of a run that was stopped there (it did not end)."""
        for name in ("history.jsonl", "ranks.jsonl", "diagnostics.jsonl"):
            path = self.path / name
            if path.is_file():
                kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                        if _complete(line) and json.loads(line)["step"] <= step and not _ending(json.loads(line))]
                self.write_text(name, "".join(line + "\n" for line in kept))

    def write_json(self, name: str, document: dict) -> None:
        self.write_text(name, json.dumps(document, indent=2, default=str) + "\n")

    def write_text(self, name: str, text: str) -> None:
        target = self.path / name
        handle, temporary = tempfile.mkstemp(dir=self.path, prefix=f".{name}.")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(temporary, 0o644)  # mkstemp makes files private; runs are shared
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


class _Lock:
    def __init__(self, path: Path):
        self.file = open(path / ".lock", "w")  # noqa: SIM115  (closed, and so let go, with this object)
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise UsageError(
                f"another process is writing to {path}: wait for it to end or choose another --output_dir"
            ) from None


def read_config_json(config: Path) -> dict | None:
    """A config.json's contents; None where it cannot be read as a JSON object."""
    try:
        document = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _written_by_a_run(config: Path) -> bool:
    """A config.json this project wrote: it holds format_version (version 1 files: task, method, adapter)."""
    document = read_config_json(config)
    return document is not None and ("format_version" in document or {"task", "method", "adapter"} <= set(document))


def _ending(record: dict) -> bool:
    """A record written when training ended: a ranks.jsonl "final" event, the Trainer's summary."""
    return record.get("event") == "final" or "train_runtime" in record


def _complete(line: str) -> bool:
    """False for an empty line or one cut off mid-write (a job stopped while logging)."""
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True
