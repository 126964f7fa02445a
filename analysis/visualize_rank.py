"""Rank-allocation heatmaps from ranks.jsonl: where the budget went.

    python analysis/visualize_rank.py RUN_DIR [RUN_DIR ...] [--out FILE] [--over-time]

Default: for each run, the rank of every adapted matrix (module type x layer,
colour and number) at the initial step and the final step, side by side; all
runs share one colour scale. ``--over-time``: a strip of heatmaps at several
steps and the total rank against the step, with AdaLoRA's schedule phases
(warm-up, pruning, final) or a growth method's growth events marked.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import style
from cli import at_least, command_line, fail_cleanly
from run_reader import KIND_LABELS, AnalysisError, Damaged, Run, layer_order, load_run
from run_settings import run_labels, setting_labels

plt = style.plt


def rank_matrix(record: dict) -> tuple[np.ndarray, list[str], list[str]]:
    """(ranks[kind, layer], kinds, layer labels) from one ranks.jsonl record; NaN where not adapted."""
    layers = sorted(record["ranks"], key=layer_order)
    kinds = list(dict.fromkeys(kind for modules in record["ranks"].values() for kind in modules))  # as logged
    matrix = np.full((len(kinds), len(layers)), np.nan)
    for column, layer in enumerate(layers):
        for kind, rank in record["ranks"][layer].items():
            matrix[kinds.index(kind), column] = rank
    return matrix, kinds, layers


def short_layer(label: str) -> str:
    """A layer's tick label: "3", or "e3" / "d3" for an encoder-decoder model's stacks."""
    stack, _, index = label.rpartition(".")
    return f"{stack[:1]}{index}" if stack else index


def row_height(kinds: int) -> float:
    """Inches for one row of heatmaps: a line per module type, plus its title and layer axis."""
    return 0.25 * kinds + 0.9


def draw_heatmap(ax, record: dict, vmax: float, title: str):
    matrix, kinds, layers = rank_matrix(record)
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
    size = 8 if len(layers) <= 12 else 6
    for (row, column), value in np.ndenumerate(matrix):
        if not np.isnan(value):
            shade = "white" if value < 0.6 * vmax else "black"
            ax.text(column, row, f"{value:.0f}", ha="center", va="center", fontsize=size, color=shade)
    ax.set_xticks(range(len(layers)), [short_layer(layer) for layer in layers], fontsize=size)
    ax.set_yticks(range(len(kinds)), [KIND_LABELS.get(k, k) for k in kinds])
    ax.set_xlabel("layer (e: encoder, d: decoder)" if any("." in layer for layer in layers) else "layer")
    ax.set_title(title)
    return image


def _ranks_of(run: Run) -> list[dict]:
    ranks = run.ranks()
    if ranks.truncated:
        print(f"note: {run.path / 'ranks.jsonl'} ends in a cut-off line (the run was stopped mid-write); "
              f"drawing its {len(ranks.records)} complete records")
    return ranks.records


def _label(record: dict, first: bool) -> str:
    if first:
        name = "initial"
    else:
        name = "final" if record["event"] == "final" else "last logged"
    return f"{name}: step {record['step']}, total rank {record['total_rank']}"


def row_label(label: str, seed, kinds: int) -> str:
    """A heatmap row's label, "<setting in words>" wrapped to the row's height, then "seed N"."""
    characters = max(16, int(row_height(kinds) * 100 / 7))  # 9-point text: about 7 px a character at 100 dpi
    return textwrap.fill(label, characters, break_on_hyphens=False) + f"\nseed {seed}"


def heatmaps_figure(runs: list[Run], labels: dict | None = None):
    """Initial and final allocation of each run, one row per run, one colour scale for all; each row
    is named by its run's setting in words (``labels``: as ``run_settings.setting_labels`` gives them,
    by default named among ``runs``), in its setting's colour."""
    labels = labels or setting_labels(runs)
    colours = style.setting_colors(labels, runs)
    records = [_ranks_of(run) for run in runs]
    vmax = max(max(r["ranks"][layer][kind] for r in recs for layer in r["ranks"] for kind in r["ranks"][layer])
               for recs in records) or 1
    layers = max(len(recs[0]["ranks"]) for recs in records)
    kinds = max(len(rank_matrix(recs[0])[1]) for recs in records)
    width = max(4.0, 0.42 * layers + 1.8)
    # constrained layout sizes the gaps from the labels: the right panel's row labels, the titles of the row below
    figure, axes = plt.subplots(len(runs), 2, figsize=(2 * width + 1.2, row_height(kinds) * len(runs) + 0.6),
                                squeeze=False, layout="constrained")
    for row, (run, recs) in enumerate(zip(runs, records)):
        first, last = recs[0], recs[-1]
        image = draw_heatmap(axes[row, 0], first, vmax, _label(first, True))
        draw_heatmap(axes[row, 1], last, vmax, _label(last, False))
        axes[row, 0].set_ylabel(row_label(labels[run.group], run.seed, kinds), color=colours[run.group])
    figure.colorbar(image, ax=axes.ravel().tolist(), label="effective rank", shrink=0.9)
    budgets = ", ".join(dict.fromkeys(f"{r[0]['budget']} -> {r[-1]['budget']}" for r in records))
    figure.suptitle(f"Rank allocation, initial step -> final step (total budget {budgets})")
    return figure


def _spans(phases) -> bool:
    """Phases as training writes them: a name to [start, end] steps."""
    return isinstance(phases, dict) and all(
        isinstance(span, list) and len(span) == 2 and all(isinstance(step, (int, float)) and not isinstance(step, bool)
                                                          for step in span) for span in phases.values())


def schedule_phases(run: Run, records: list[dict]) -> dict[str, list[int]]:
    """Named step ranges to shade, as the method logged them on its ranks.jsonl records (runs
    written before records carried them: from config.json's schedule, where there is one)."""
    for record in records:
        if record.get("phases"):
            if not _spans(record["phases"]):
                raise AnalysisError(f"{run.path}/ranks.jsonl: a record's phases are not named [start, end] steps: "
                                    "the file is damaged")
            return record["phases"]
    s = run.config.get("adapter", {}).get("schedule") or {}
    if {"tinit", "tfinal", "total_step"} <= s.keys():
        if not all(isinstance(s[k], int) and not isinstance(s[k], bool) for k in ("tinit", "tfinal", "total_step")):
            raise Damaged(run.path / "config.json", "its schedule's tinit, tfinal or total_step is not a step")
        return {"warm-up (tinit)": [0, s["tinit"]], "final (tfinal)": [s["total_step"] - s["tfinal"], s["total_step"]]}
    return {}


def over_time_figure(run: Run, panels: int = 5, label: str | None = None):
    """A strip of heatmaps at several steps, and the total and per-type rank against the step
    (``label``: the run's name in the title; by default its setting's label and seed)."""
    records = _ranks_of(run)
    picks = sorted({round(i * (len(records) - 1) / max(panels - 1, 1)) for i in range(panels)})
    chosen = [records[i] for i in picks]
    vmax = max(r["ranks"][layer][kind] for r in records for layer in r["ranks"] for kind in r["ranks"][layer]) or 1
    layers = len(records[0]["ranks"])
    width = max(3.0, 0.3 * layers + 1.5)
    strip = row_height(len(rank_matrix(records[0])[1])) + 0.4  # a two-line title over each heatmap
    half = max(1, len(chosen) // 2)
    # constrained layout keeps each axis label clear of its tick labels and of the panel beside it;
    # the strip and the curves get a grid each, so the curves' labels do not widen gaps in the strip
    figure = plt.figure(figsize=(width * len(chosen), strip + 3.2), layout="constrained")
    grid = figure.add_gridspec(2, 1, height_ratios=[strip, 3.0])
    strip_grid = grid[0].subgridspec(1, len(chosen))
    curves_grid = grid[1].subgridspec(1, 2, width_ratios=[half, len(chosen) - half])
    for column, record in enumerate(chosen):
        ax = figure.add_subplot(strip_grid[column])
        image = draw_heatmap(ax, record, vmax, f"step {record['step']} ({record['event']})\ntotal rank {record['total_rank']}")
        if column:
            ax.set_yticklabels([])
    figure.colorbar(image, ax=figure.axes, label="effective rank", shrink=0.8)

    total_ax = figure.add_subplot(curves_grid[0])
    kinds_ax = figure.add_subplot(curves_grid[1])
    steps = [r["step"] for r in records]
    color = style.method_color(run.method)
    total_ax.plot(steps, [r["total_rank"] for r in records], color=color, lw=2, label="total rank")
    total_ax.plot(steps, [r["budget"] for r in records], color="black", lw=1, ls="--", label="budget b(t)")
    for kind in rank_matrix(records[0])[1]:
        kinds_ax.plot(steps, [sum(m.get(kind, 0) for m in r["ranks"].values()) for r in records], lw=1.2,
                      label=KIND_LABELS.get(kind, kind))
    phases = schedule_phases(run, records)
    for ax in (total_ax, kinds_ax):
        for (name, (start, end)), shade in zip(phases.items(), ("0.9", "#dde8f5", "#e8f5dd")):
            ax.axvspan(start, end, color=shade, label=name)
        grown = [r["step"] for r in records if r["event"] == "grow"]
        for step in grown:
            ax.axvline(step, color=color, lw=0.8, ls=":")
        if grown:
            ax.plot([], [], color=color, lw=0.8, ls=":", label="growth event")
        ax.set_xlabel("optimizer step")
    total_ax.set_ylabel("total rank")
    kinds_ax.set_ylabel("rank summed over layers")
    # beside each panel, where the legends cover no curve (constrained layout makes room for them)
    total_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    kinds_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    figure.suptitle(f"Rank allocation over training: {label or run_labels([run])[run.path]}")
    return figure


@fail_cleanly
def main(argv: list[str] | None = None) -> list[Path]:
    parser = command_line(__doc__, runs="run directories (with ranks.jsonl)", figure="; default: in the run directory")
    parser.add_argument("--over-time", action="store_true", help="show the allocation at several steps")
    parser.add_argument("--steps", type=int, help="heatmaps in the --over-time strip (default: 5)")
    args = parser.parse_args(argv)
    if args.steps is not None and not args.over_time:
        raise AnalysisError(f"--steps {args.steps} sets the heatmaps of the --over-time strip: add --over-time, "
                            "or drop --steps")
    at_least(1, steps=args.steps)
    runs = [load_run(path) for path in args.runs]
    if args.over_time:
        written, labels = [], run_labels(runs)
        names = [run.name for run in runs]
        if args.out and len(runs) > 1 and (twice := next((n for n in names if names.count(n) > 1), None)):
            raise AnalysisError(f"two runs are both named {twice}: --out would give them one file, the second "
                                "drawn over the first; draw them one at a time, or leave --out out (each strip is "
                                "then written in its run directory)")
        for run in runs:
            if args.steps is not None and args.steps > (held := len(_ranks_of(run))):
                raise AnalysisError(f"--steps {args.steps} is more than the {held} records of {run.path}/ranks.jsonl: "
                                    f"give --steps {held} or fewer")
            out = Path(args.out) if args.out and len(runs) == 1 else None
            if args.out and len(runs) > 1:
                base = Path(args.out)
                out = base.with_name(f"{base.stem}-{run.name}{base.suffix}")
            figure = over_time_figure(run, args.steps or 5, labels[run.path])
            written.append(style.save(figure, out or run.path / "rank_over_time.png"))
    else:
        default = runs[0].path / "rank_heatmap.png" if len(runs) == 1 else Path("rank_heatmaps.png")
        written = [style.save(heatmaps_figure(runs), args.out or default)]
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
