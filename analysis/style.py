"""One look for every figure of the project: method colours, sizes, saving."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs on SLURM nodes and CI without a display

import matplotlib.pyplot as plt  # noqa: E402
from run_reader import AnalysisError  # noqa: E402

METHOD_COLORS = {
    "lora": "#1f77b4",
    "adalora": "#d62728",
    "qlora": "#2ca02c",
    "qadalora": "#9467bd",
    "plateau": "#ff7f0e",
}
_SPARE_COLORS = ("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
FORMATS = ("png", "pdf", "svg")

plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "figure.dpi": 100, "savefig.dpi": 200})


def method_color(method: str) -> str:
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return _SPARE_COLORS[sum(map(ord, method)) % len(_SPARE_COLORS)]


def save(figure, out: str | Path) -> Path:
    out = Path(out)
    if out.suffix.lstrip(".").lower() not in FORMATS:
        raise AnalysisError(f"cannot write {out}: give --out a file ending in {', '.join('.' + f for f in FORMATS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, bbox_inches="tight")
    plt.close(figure)
    return out
