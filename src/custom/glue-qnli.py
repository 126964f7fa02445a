"""GLUE QNLI with dynamic rank scheduling via loss plateau (--method plateau): --help lists --r0 ..."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # src/, when adarank is not pip-installed

from adarank.pipeline import main  # noqa: E402
from custom.plateau import register  # noqa: E402

if __name__ == "__main__":
    register()
    main("qnli", method="plateau")
