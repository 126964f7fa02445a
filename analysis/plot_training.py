"""Training curves from history.jsonl: training loss and the dev metric against the step.

    python analysis/plot_training.py RUN_DIR [RUN_DIR ...] [--out FILE]
    python analysis/plot_training.py RUN_DIR [RUN_DIR ...] --diagnostics   # runs trained with --diagnostics

One line per run, one colour per setting (the seeds of a setting share it; a
method's plainest setting keeps the method's colour, as in every figure of the
project), the budget sets the line style; the legend, below the panels, names
each setting in words as the results tables do. ``--diagnostics`` draws
diagnostics.jsonl instead: the size of the adapters' update, the orthogonal
regulariser's share of the training loss, AdaLoRA's mean |E|, and the update by
module kind.
"""

from __future__ import annotations

from pathlib import Path

import style
from cli import command_line, fail_cleanly
from run_files import update_size
from run_reader import AnalysisError, Run, load_run, metric_keys, one_task
from run_settings import run_labels, setting_labels

plt = style.plt
BUDGET_STYLES = {"small": "-", "large": "--"}


def curves(run: Run) -> dict[str, tuple[list, list]]:
    """{series name: (steps, values)}: 'loss' and each headline dev metric."""
    history = run.history()
    if history.truncated:
        print(f"note: {run.path / 'history.jsonl'} ends in a cut-off line; plotting its complete records")
    series = {"loss": ([], [])}
    for key in metric_keys(run):
        series[key] = ([], [])
    for record in history.records:
        for name, (steps, values) in series.items():
            if record.get(name) is not None:
                steps.append(record["step"])
                values.append(record[name])
    return series


def setting_legend(figure, runs: list[Run], labels: dict, colours: dict):
    """One legend entry per setting shown (its seeds share the entry's colour), below the panels."""
    shown = {}
    for run in runs:
        shown.setdefault(run.group, []).append(run.seed)
    handles, names = [], []
    for key, seeds in sorted(shown.items(), key=lambda item: labels[item[0]]):
        handles.append(plt.Line2D([], [], color=colours[key], ls=BUDGET_STYLES.get(key[2], ":"), lw=1.4))
        names.append(f"{labels[key]} ({len(seeds)} seeds)" if len(seeds) > 1 else f"{labels[key]} (seed {seeds[0]})")
    return style.legend_below(figure, handles, names)


def training_figure(runs: list[Run], labels: dict | None = None):
    """Loss and dev metric per run, one colour per setting (``labels``: setting -> its name in
    words, as ``run_settings.setting_labels`` gives it; by default named among ``runs``)."""
    labels = labels or setting_labels(runs)
    colours = style.setting_colors(labels, runs)
    metrics = sorted({key for run in runs for key in metric_keys(run)})
    figure, axes = plt.subplots(1, 1 + len(metrics), figsize=(4.6 * (1 + len(metrics)), 3.6), squeeze=False,
                                layout="constrained")
    axes = axes[0]
    names = run_labels(runs, labels)
    for run in runs:
        look = {"color": colours[run.group], "ls": BUDGET_STYLES.get(run.budget, ":"), "lw": 1.4}
        series = curves(run)
        for ax, name in zip(axes, ["loss", *metrics]):
            steps, values = series.get(name, ([], []))
            if steps:
                ax.plot(steps, values, marker="o" if name != "loss" else None, ms=3, label=names[run.path], **look)
    axes[0].set_title("training loss")
    for ax, name in zip(axes[1:], metrics):
        ax.set_title(f"dev {name.removeprefix('eval_')}")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    setting_legend(figure, runs, labels, colours)
    return figure


def diagnostics_figure(runs: list[Run]):
    """Update size, regulariser share, |E| and per-kind update of runs trained with --diagnostics."""
    figure, axes = plt.subplots(1, 4, figsize=(19, 3.8), layout="constrained")
    total_ax, share_ax, e_ax, kind_ax = axes
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = run_labels(runs)
    for number, run in enumerate(runs):
        colour = colours[number % len(colours)]
        records = [r for r in run.diagnostics().records if "update_norm" in r]
        steps = [r["step"] for r in records]
        total = [update_size(r) for r in records]
        total_ax.plot(steps, total, color=colour, lw=1.4, label=names[run.path])
        losses = {h["step"]: h["loss"] for h in run.history().records if "loss" in h}
        shared = [(r["step"], r["orth_reg_weighted"] / losses[r["step"]]) for r in records
                  if "orth_reg_weighted" in r and losses.get(r["step"])]
        if shared:
            share_ax.plot(*zip(*shared), color=colour, lw=1.4)
        if records and "lora_E_abs_mean" in records[-1]:
            e_ax.plot(steps, [sum(r["lora_E_abs_mean"].values()) / len(r["lora_E_abs_mean"]) for r in records],
                      color=colour, lw=1.4)
        final = records[-1]["update_norm"] if records else {}
        kind_ax.plot(range(len(final)), list(final.values()), color=colour, marker="o", lw=1)
        kind_ax.set_xticks(range(len(final)), list(final))
    total_ax.set_yscale("symlog", linthresh=1e-3)
    total_ax.set_title("adapter update ||dW||_F, all matrices")
    share_ax.set_title("gamma R / training loss")
    e_ax.set_title("AdaLoRA: mean |E|")
    kind_ax.set_title("update by module kind, end of training")
    kind_ax.tick_params(axis="x", labelrotation=30)
    for ax in axes[:3]:
        ax.set_xlabel("optimizer step")
    for ax in axes:
        ax.grid(alpha=0.3)
    style.legend_below(figure, *total_ax.get_legend_handles_labels())
    return figure


@fail_cleanly
def main(argv: list[str] | None = None) -> Path:
    parser = command_line(__doc__, runs="run directories", figure="")
    parser.add_argument("--diagnostics", action="store_true",
                        help="draw diagnostics.jsonl (runs trained with --diagnostics) instead of the curves")
    args = parser.parse_args(argv)
    runs = [load_run(path) for path in args.runs]
    one_task(runs)  # one task's curves on one real or synthetic data set: the panels are that task's metrics
    if not args.diagnostics and (bare := next((run for run in runs if not run.history().records), None)):
        raise AnalysisError(f"{bare.path} has no training history (history.jsonl is missing or holds no record): "
                            "nothing to plot; give a run that trained at least one logging step")
    name = "diagnostics.png" if args.diagnostics else "training_curves.png"
    default = runs[0].path / name if len(runs) == 1 else Path(name)
    figure = diagnostics_figure(runs) if args.diagnostics else training_figure(runs)
    out = style.save(figure, args.out or default)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
