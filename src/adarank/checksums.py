"""A file's SHA-256, read in blocks: what checkpoints (run/integrity.py) and tokenized cache entries
(cache.py) record of their files, to find them changed later."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
