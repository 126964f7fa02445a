"""Whether a checkpoint can be resumed from: complete (every callback added its state) and intact
(every file as it was written).

The last callback to run at a save (``preemption.MarkCheckpointComplete``) writes
``COMPLETE_MARKER`` holding the size and sha256 of every file of the checkpoint. A file missing,
emptied, cut short or overwritten since then is found by comparing them, before the Trainer or a
method reads the file (they would fail deep inside with "header too small" or "pop from empty list").
A marker written before it held a manifest (an empty file) vouches for completeness alone.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from adarank.checksums import file_sha256
from adarank.errors import UsageError
from adarank.run.config import resumed_arguments
from adarank.run.directory import CHECKPOINTS, checkpoint_step
from adarank.run.same_run import check_same_run

COMPLETE_MARKER = "checkpoint_complete"
# Random states of processes other than the first: each process writes its own, while the first
# one writes the marker, so they are left out of the manifest.
OTHER_PROCESSES = re.compile(r"rng_state_[1-9]\d*\.pth")


def mark_complete(folder: Path) -> None:
    """Write the marker with the manifest of every file in ``folder`` (atomically: a marker is whole)."""
    files = {
        str(path.relative_to(folder)): {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != COMPLETE_MARKER and not OTHER_PROCESSES.fullmatch(path.name)
    }
    temporary = folder / f".{COMPLETE_MARKER}.tmp"
    temporary.write_text(json.dumps({"files": files}, indent=1) + "\n")
    os.replace(temporary, folder / COMPLETE_MARKER)


def checkpoint_problem(folder: Path) -> str | None:
    """What makes ``folder`` unfit to resume from, in a few words; None where it is intact."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return "is a file, not a checkpoint folder"
    if not folder.is_dir():
        return "does not exist"
    if (folder / CHECKPOINTS).is_dir():
        return f"is a run directory, not one of its checkpoints (they lie in its {CHECKPOINTS}/)"
    marker = folder / COMPLETE_MARKER
    if not marker.is_file() and not re.fullmatch(r"checkpoint-\d+", folder.name):
        return "is not a checkpoint folder (a checkpoint-N a run saves)"
    if not marker.is_file():
        return "was not completely saved (the job stopped while saving it)"
    files = _manifest(marker)
    if files is None:
        return f"has a damaged {COMPLETE_MARKER} (not the manifest of its files a save writes)"
    for name, saved in files.items():
        path = folder / name
        if not path.is_file():
            return f"lacks {name}"
        if path.stat().st_size != saved["bytes"]:
            return f"has {name} of {path.stat().st_size} bytes, {saved['bytes']} when saved"
        if file_sha256(path) != saved["sha256"]:
            return f"has {name} changed since it was saved"
    try:
        checkpoint_step(folder)
    except UsageError:
        return "has no readable trainer_state.json"
    return None


def _manifest(marker: Path) -> dict | None:
    """The manifest a marker holds, name -> {"bytes": size, "sha256": digest} ({} for an empty marker,
    written before markers held one); None where it is not one (damaged, or written by something else)."""
    try:
        text = marker.read_text(encoding="utf-8")
        files = json.loads(text)["files"] if text.strip() else {}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    entry = {"bytes": int, "sha256": str}
    if not isinstance(files, dict) or not all(
            isinstance(saved, dict) and all(isinstance(saved.get(key), kind) for key, kind in entry.items())
            for saved in files.values()):
        return None
    return files


def resumable_step(args, task: str) -> int | None:
    """The optimizer step of the checkpoint ``args`` give to --resume_from_checkpoint (None: a fresh start);
    one that does not exist, was not completely saved, was damaged since, or belongs to a run of
    another task or method, or started with other adapter flags (its run's config.json says) is refused."""
    checkpoint = args.training.resume_from_checkpoint
    if checkpoint is None:
        return None
    problem = checkpoint_problem(Path(checkpoint))
    if problem is not None:
        raise UsageError(f"--resume_from_checkpoint {checkpoint} {problem}: give an intact checkpoint-N folder of "
                         f"the run's {CHECKPOINTS}/, or --resume_from_checkpoint auto to take the newest intact one")
    check_same_run(Path(checkpoint).resolve().parent.parent, task, args.adapter.method,
                   f"--resume_from_checkpoint {checkpoint}",
                   "resume a checkpoint of the same task and method, or start afresh without it", resumed_arguments(args))
    return checkpoint_step(checkpoint)


def intact_checkpoints(checkpoints: Path):
    """The checkpoints of ``checkpoints``, newest first, each with its problem (None: intact)."""
    numbered = [p for p in Path(checkpoints).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    for folder in sorted(numbered, key=lambda p: int(p.name.split("-")[1]), reverse=True):
        yield folder, checkpoint_problem(folder)
