"""GLUE CoLA with dynamic rank scheduling via loss plateau (--method plateau): --help lists --r0 ..."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # src/, when adarank is not pip-installed

from adarank.pipeline import main  # noqa: E402
import plateau  # noqa: E402,F401  (registers the plateau method)

if __name__ == "__main__":
    main("cola", method="plateau")
