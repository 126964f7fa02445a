"""QLoRA (default) or QLoRA + AdaLoRA (--method qadalora) summarizing CNN/DailyMail on a 4-bit NF4 base."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # src/, when adarank is not pip-installed

from adarank.pipeline import main  # noqa: E402

if __name__ == "__main__":
    main("cnndailymail", defaults={"method": "qlora"})
