"""A run replaced with --overwrite_output_dir stays aside until the new run can stand in for it.

Starting afresh in a directory that holds a run moves that run's files into ``.replaced/`` instead of
deleting them. They are deleted once the new run has finished. Should the new run fail before it has
saved a checkpoint (a flag refused once the model is built, a Trainer that cannot start, an evaluation
that breaks), its files go and the replaced ones come back, so a refused or broken run loses nothing.
Once the new run has a checkpoint it is the run to continue (a stopped run resumes), and the replaced
files wait in ``.replaced/`` until it finishes.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from adarank.errors import UsageError

log = logging.getLogger(__name__)

REPLACED = ".replaced"


def set_aside(path: Path, names: Sequence[str]) -> None:
    """Move the run files ``names`` found in ``path`` into ``path/.replaced``. Where an earlier replaced
    run still waits there (its replacement stopped before finishing), that one is kept and the
    unfinished replacement's files go."""
    present = [path / name for name in names if (path / name).exists()]
    aside = path / REPLACED
    keep = not aside.exists()
    moved: list[Path] = []
    item = aside
    try:
        if keep and present:
            aside.mkdir()
        for item in present:
            if keep:
                item.rename(aside / item.name)
                moved.append(item)
            else:
                _remove(item)
    except OSError as error:  # a file the system will not let go (read-only, immutable): all back in place
        for back in moved:
            (aside / back.name).rename(back)
        if keep and aside.is_dir() and not any(aside.iterdir()):
            aside.rmdir()
        raise UsageError(f"--overwrite_output_dir could not {'move aside' if keep else 'remove'} "
                         f"{item} ({error.strerror}): make it writable, or choose another "
                         "--output_dir") from None


def put_back(path: Path, names: Sequence[str], checkpoints: Path) -> None:
    """After a failed run: the replaced run's files back in place of its own, unless it saved a checkpoint."""
    aside = path / REPLACED
    if not aside.is_dir():
        return
    if any(checkpoints.glob("checkpoint-*")):
        log.warning("The run this one replaced waits in %s until this run finishes (it has checkpoints to "
                    "continue from); to keep it, move it out before running again.", aside)
        return
    _restore(path, names)
    log.warning("This run failed before its first checkpoint: the run it was to replace is back in %s.", path)


def restore_interrupted(path: Path, names: Sequence[str], checkpoints: Path, finished: bool) -> None:
    """Before a run looks at ``path`` (holding its lock): a replaced run still aside with no checkpoint of
    its replacement beside it was left by a replacement killed before it could put it back (SIGKILL, or
    SIGTERM while the model loaded). It goes back in place, so that this run sees, and keeps, what is there.
    A replacement that finished (``finished``: killed before it dropped the replaced run) stays."""
    if not (path / REPLACED).is_dir():
        return
    if finished:
        shutil.rmtree(path / REPLACED)
    elif not any(checkpoints.glob("checkpoint-*")):
        _restore(path, names)
        log.warning("A run that was to replace the one in %s stopped before its first checkpoint: that run is "
                    "back in place.", path)


def _restore(path: Path, names: Sequence[str]) -> None:
    aside = path / REPLACED
    for name in names:
        _remove(path / name)
    for item in aside.iterdir():
        item.rename(path / item.name)
    aside.rmdir()


def _remove(item: Path) -> None:
    if item.is_dir():
        shutil.rmtree(item)
    else:
        item.unlink(missing_ok=True)


@contextmanager
def replacing(path: Path, names: Sequence[str], checkpoints: Path, main_process: bool) -> Iterator[None]:
    """Around a run's training: drop the replaced run once it has finished, put it back if it failed first."""
    try:
        yield
    except BaseException:
        if main_process:
            put_back(path, names, checkpoints)
        raise
    if main_process:
        shutil.rmtree(path / REPLACED, ignore_errors=True)
