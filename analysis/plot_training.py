"""Training curves from history.jsonl: training loss and the dev metric against the step.

    python analysis/plot_training.py RUN_DIR [RUN_DIR ...] [--out FILE]

One line per run, coloured by method as in every figure of the project
(the budget sets the line style).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import style
from run_reader import Run, fail_cleanly, load_run, metric_keys

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
            if name in record:
                steps.append(record["step"])
                values.append(record[name])
    return series


def training_figure(runs: list[Run]):
    metrics = sorted({key for run in runs for key in metric_keys(run)})
    figure, axes = plt.subplots(1, 1 + len(metrics), figsize=(4.6 * (1 + len(metrics)), 3.6), squeeze=False)
    axes = axes[0]
    for run in runs:
        look = {"color": style.method_color(run.method), "ls": BUDGET_STYLES.get(run.budget, ":"), "lw": 1.4}
        for ax, name in zip(axes, ["loss", *metrics]):
            steps, values = curves(run).get(name, ([], []))
            if steps:
                ax.plot(steps, values, marker="o" if name != "loss" else None, ms=3, label=run.label, **look)
    axes[0].set_title("training loss")
    for ax, name in zip(axes[1:], metrics):
        ax.set_title(f"dev {name.removeprefix('eval_')}")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return figure


@fail_cleanly
def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--out", help="output file (.png, .pdf or .svg)")
    args = parser.parse_args(argv)
    runs = [load_run(path) for path in args.runs]
    default = runs[0].path / "training_curves.png" if len(runs) == 1 else Path("training_curves.png")
    out = style.save(training_figure(runs), args.out or default)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
