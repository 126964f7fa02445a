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


def setting_colors(labels: dict, runs: list) -> dict:
    """Setting -> colour for a figure of ``runs``, one each among the settings of their tasks (so a
    report's figures of one task agree), and a setting's seeds share it. Each method's plainest
    setting (the shortest label) keeps the method's colour; its others take colours that mean no
    method, then those of methods not shown."""
    tasks = {run.task for run in runs}
    labels = {key: label for key, label in labels.items() if key[0] in tasks}
    taken = {method_color(key[1]) for key in labels}
    palette = [*_SPARE_COLORS, *METHOD_COLORS.values(), *plt.get_cmap("tab20").colors[1::2]]
    spare = [colour for colour in palette if colour not in taken]
    colours, used = {}, set()
    for key in sorted(labels, key=lambda k: (len(labels[k]), labels[k])):
        colour = method_color(key[1])
        if colour in used:
            colour = spare.pop(0) if spare else palette[len(colours) % len(palette)]
        colours[key] = colour
        used.add(colour)
    return colours


def legend_below(figure, handles: list, labels: list[str]):
    """One legend for the whole figure, below its panels, where it covers no data (the figure
    must use constrained layout, which makes room for it)."""
    width = figure.get_figwidth()
    longest = max(map(len, labels), default=1)
    columns = max(1, min(len(labels), int(width // (0.055 * longest + 0.6))))
    return figure.legend(handles, labels, loc="outside lower center", ncol=columns, fontsize=7, frameon=False)


def _what(path: Path) -> str:
    """What ``path``, which is there and is no folder, is."""
    if path.is_char_device() or path.is_block_device():
        return "a device"
    return "a pipe" if path.is_fifo() else "a socket" if path.is_socket() else "a file"


def unwritable(out: Path, error: OSError) -> AnalysisError:
    """The line that says why ``out`` cannot be written: a file (or a device, ...) where a folder should be, say."""
    blocking = next((folder for folder in out.parents if folder.exists() and not folder.is_dir()), None)
    why = f"{blocking} is {_what(blocking)}, not a folder" if blocking else error.strerror or str(error)
    return AnalysisError(f"cannot write {out}: {why}; give --out a path in a folder you can write to")


def save(figure, out: str | Path) -> Path:
    out = Path(out)
    if out.suffix.lstrip(".").lower() not in FORMATS:
        raise AnalysisError(f"cannot write {out}: give --out a file ending in {', '.join('.' + f for f in FORMATS)}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out, bbox_inches="tight")
    except OSError as error:
        raise unwritable(out, error) from None
    finally:
        plt.close(figure)
    return out
