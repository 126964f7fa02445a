"""Disk space: what a checkpoint needs, checked before training starts, and a disk that fills up
while the run writes, reported in one line (the path, the space needed) instead of a traceback.

The estimate of a checkpoint, stated: the trainable parameters six times in fp32 (the weights,
Adam's two moments, and room for a method's per-parameter state such as AdaLoRA's importance
averages), plus the tokenizer's files as the Trainer saves them beside every checkpoint, plus
64 KiB for the scheduler, random and trainer states; and a tenth more.
"""

from __future__ import annotations

import errno
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from adarank.errors import UsageError

MIN_FREE_BYTES = 1 << 20  # before anything is known of the model: a disk with less free is full
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def existing_ancestor(path: Path) -> Path:
    """``path`` itself where it exists, else the nearest folder above it that does."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(existing_ancestor(path)).free


def megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


def checkpoint_bytes(model, tokenizer) -> int:
    """The stated estimate of one checkpoint's size (see above)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokenizer_files = 0
    if tokenizer is not None:
        with tempfile.TemporaryDirectory() as folder:
            tokenizer.save_pretrained(folder)
            tokenizer_files = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
    return int(1.1 * (6 * 4 * trainable + tokenizer_files + 64 * 1024))


def check_free_space(path: Path, needed: int, what: str) -> None:
    free = free_bytes(path)
    if free < needed:
        raise UsageError(f"{existing_ancestor(path)} has {megabytes(free)} free, and {what} needs about "
                         f"{megabytes(needed)}: free space there, or choose another --output_dir")


def _says_disk_full(error: BaseException | None) -> bool:
    """Whether an error, or one it came from, is the operating system's "no space left"."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in FULL_DISK_ERRNOS or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextmanager
def refusing_a_full_disk(path: Path, needed: int, what: str, then: Callable[[], str], only_writes: bool = False):
    """A full disk while the block writes ``what`` under ``path`` becomes one line: the path, the
    space needed and free, and ``then()`` (what to do once space is freed). ``only_writes``: the block
    does nothing but write, so any error while less than ``needed`` is free counts (torch.save reports
    a full disk as "unexpected pos" or an iostream error, without the system's code)."""
    try:
        yield
    except Exception as error:  # the tokenizer's writer raises a bare Exception on a full disk
        free = free_bytes(path)
        if isinstance(error, UsageError) or not (_says_disk_full(error) or only_writes and free < needed):
            raise
        raise UsageError(f"no space left on the device of {path} while writing {what}: about {megabytes(needed)} "
                         f"needed, {megabytes(free)} free; free space, then {then()}") from None
