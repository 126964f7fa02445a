"""QLoRA (default) or QLoRA + AdaLoRA (--method qadalora) on GLUE QNLI, on a 4-bit NF4 base."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # src/, when adarank is not pip-installed

from adarank.four_bit_entry import main_four_bit  # noqa: E402

if __name__ == "__main__":
    main_four_bit("qnli", "src/glue-qnli.py")
