"""The per-user cache folder, and tokenized splits kept in it: a data set is tokenized once per
tokenizer and settings.

An entry's key hashes everything the tokenized rows depend on: the split's content (every
column, in row order, after any subset was drawn), the tokenizer (its class, its serialized
vocabulary and rules, its special tokens, the library versions), the encode function's source
and the settings it closes over (maximum lengths, prompt tokens). A changed file, tokenizer,
setting or encode function makes a new entry, never a stale read.

Entries are ``datasets`` Arrow folders under ``<cache root>/tokenized/`` (``$ADARANK_CACHE``
moves the root), memory-mapped when read once each file is found to hold the bytes it was written
with (their SHA-256 sums are saved with them; a damaged entry is tokenized and written again).
``ADARANK_TOKEN_CACHE=0`` turns the cache off; delete the folder to reclaim its space (full
CNN/DailyMail takes gigabytes).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import datasets
import pyarrow as pa
import tokenizers
import transformers

from adarank.checksums import file_sha256
from adarank.errors import UsageError

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """$ADARANK_CACHE, else $XDG_CACHE_HOME/adarank, else ~/.cache/adarank."""
    if os.environ.get("ADARANK_CACHE"):
        return Path(os.environ["ADARANK_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "adarank"


class _HashSink:
    """A write-only file object that feeds what is written to a hash."""

    def __init__(self):
        self.hash = hashlib.sha256()
        self.closed = False

    def write(self, data) -> int:
        self.hash.update(data)
        return len(data)

    def flush(self):
        pass

    def close(self):
        self.closed = True


def content_hash(split: datasets.Dataset) -> str:
    """The split's rows as Arrow IPC bytes, hashed (a selection or slice counts as its own rows)."""
    table = split.flatten_indices().data.table if split._indices is not None else split.data.table
    sink = _HashSink()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.hash.hexdigest()


def tokenizer_identity(tokenizer) -> str:
    """What decides a tokenizer's output, hashed."""
    parts = [type(tokenizer).__name__, transformers.__version__, tokenizers.__version__,
             json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str),
             str(tokenizer.truncation_side), str(tokenizer.model_max_length)]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Less the truncation and padding the last call left set: they are each call's own arguments,
        # in the key as settings. Cleared for the moment of serializing, then put back.
        truncation, padding = backend.truncation, backend.padding
        backend.no_truncation()
        backend.no_padding()
        try:
            parts.append(backend.to_str())
        finally:
            if truncation is not None:
                backend.enable_truncation(**truncation)
            if padding is not None:
                backend.enable_padding(**padding)
    else:
        parts.append(json.dumps(sorted(tokenizer.get_vocab().items())))
        parts.append(json.dumps(tokenizer.init_kwargs, sort_keys=True, default=str))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _source(function: Callable) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):  # no source file: its bytecode and constants
        return hashlib.sha256(function.__code__.co_code + repr(function.__code__.co_consts).encode()).hexdigest()


SWITCH = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def enabled() -> bool:
    """$ADARANK_TOKEN_CACHE: on unless it says 0, false, no or off (in any case); another value is refused."""
    value = os.environ.get("ADARANK_TOKEN_CACHE", "1")
    if value.strip().lower() not in SWITCH:
        raise UsageError(f"ADARANK_TOKEN_CACHE={value!r}: set it to 0 (off) or 1 (on), or unset it")
    return SWITCH[value.strip().lower()]


CHECKSUMS = "adarank-checksums.json"  # in an entry: each of its files' SHA-256, written before the entry appears


def _checksums(folder: Path, names: set[str] | None = None) -> dict[str, str]:
    """The SHA-256 of each file in ``folder`` (of those ``names``, where given)."""
    sums = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name != CHECKSUMS and (names is None or path.name in names):
            sums[path.name] = file_sha256(path)
    return sums


def _damage(entry: Path) -> str | None:
    """What is wrong with an entry's files against the checksums written with them; None where nothing is.
    Files beside them (a later ``map``'s cache files) are not the entry's."""
    try:
        written = json.loads((entry / CHECKSUMS).read_text())
    except (OSError, ValueError):
        return "it has no readable checksums (written by an earlier version)"
    if not isinstance(written, dict) or not written:
        return "its checksums file is damaged"
    now = _checksums(entry, names=set(written))
    changed = sorted(name for name in written if now.get(name) != written[name])
    return f"{', '.join(changed)} differ from the bytes written" if changed else None


def tokenized(split: datasets.Dataset, encode: Callable, tokenizer, settings: dict,
              **map_arguments) -> tuple[datasets.Dataset, str]:
    """``split.map(encode, batched=True, **map_arguments)``, read from the cache where an earlier run
    wrote it. Returns the rows and what happened: ``read``, ``written``, ``empty`` (no rows) or ``off``
    (cache disabled or its folder not writable)."""
    def compute() -> datasets.Dataset:
        return split.map(encode, batched=True, desc="tokenizing", **map_arguments)

    if not enabled():
        return compute(), "off"
    if len(split) == 0:  # nothing to tokenize (no training split under --method none), nor to save
        return compute(), "empty"
    key = hashlib.sha256(json.dumps({
        "rows": content_hash(split),
        "tokenizer": tokenizer_identity(tokenizer),
        "encode": _source(encode),
        "settings": settings,
        "map": map_arguments,
        "datasets": datasets.__version__,
    }, sort_keys=True, default=str).encode()).hexdigest()[:24]
    entry = cache_root() / "tokenized" / key
    damaged = False
    if (entry / "dataset_info.json").is_file():
        try:
            damage = _damage(entry)
            if damage is not None:
                raise ValueError(damage)
            rows = datasets.load_from_disk(str(entry))
            log.info("%d tokenized rows read from the cache (%s)", len(rows), entry)
            return rows, "read"
        except Exception as error:  # any damage, a state.json of another shape too (KeyError, TypeError)
            log.warning("tokenized cache entry %s unreadable (%s): tokenizing again", entry, error)
            damaged = True
    rows = compute()
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{key}-"))
        rows.save_to_disk(str(scratch / "rows"))
        (scratch / "rows" / CHECKSUMS).write_text(json.dumps(_checksums(scratch / "rows")))
        if damaged:
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.rename(scratch / "rows", entry)  # atomic: a reader sees all of it or nothing
        except OSError:  # another process (a DDP rank) wrote the same entry first
            pass
        shutil.rmtree(scratch, ignore_errors=True)
    except OSError as error:
        log.warning("tokenized rows not cached (%s): set ADARANK_CACHE to a writable folder", error)
        return rows, "off"
    return datasets.load_from_disk(str(entry)), "written"
