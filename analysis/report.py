"""One self-contained HTML report of a folder of runs: tables, rank heatmaps, training curves.

    python analysis/report.py RUNS_ROOT --out report.html [--paper]

Images are embedded, so the file can be sent to a colleague as it is. Tables and
figures name each setting alike, in words (its recipe and what else sets it apart).
"""

from __future__ import annotations

import base64
import html
import io
import sys
from collections import defaultdict
from pathlib import Path

import style
from cli import add_paper_options, command_line, enough_resamples, fail_cleanly
from plot_training import training_figure
from run_reader import AnalysisError, Run, find_runs
from run_settings import setting_labels
from summarize_runs import TITLES, split_runs, summarize
from visualize_rank import heatmaps_figure

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0 1.5em; }
.note { color: #666; font-size: 0.9em; }
"""


def table_html(rows: list[dict]) -> str:
    if not rows:
        return "<p class='note'>(none)</p>"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def image_html(figure, alt: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    style.plt.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def undrawable(run: Run) -> str | None:
    """Why the run's curves or heatmaps cannot be drawn (a damaged history.jsonl or ranks.jsonl), or None."""
    try:
        run.history()
        if (run.path / "ranks.jsonl").is_file():
            run.ranks()
    except AnalysisError as error:
        return str(error)
    return None


def figures_html(groups: dict) -> list[str]:
    """Each task's training curves and rank heatmaps; a run whose files cannot be drawn is left out of
    them, with a note here and on stderr (its numbers stay in the tables)."""
    # Every figure names a setting as the tables do (run_settings.setting_words), never by its hash.
    labels = setting_labels([run for runs in groups.values() for run in runs])
    by_task = defaultdict(list)
    for (task, *_), runs in groups.items():
        by_task[task].extend(runs)
    parts = []
    for task, runs in sorted(by_task.items()):
        parts.append(f"<h2>{html.escape(task)}</h2>")
        problems = {run.path: why for run in runs if (why := undrawable(run))}
        for path, why in problems.items():
            note = f"{path} is left out of the figures: {why}"
            print(f"note: {note}", file=sys.stderr)
            parts.append(f"<p class='note'>{html.escape(note)}</p>")
        runs = [run for run in runs if run.path not in problems]
        if runs:
            parts.append(image_html(training_figure(runs, labels), f"{task} training curves"))
        ranked = [run for run in runs if (run.path / "ranks.jsonl").is_file()]
        if ranked:
            parts.append(image_html(heatmaps_figure(ranked, labels), f"{task} rank allocation"))
    return parts


def build_report(root, paper: bool = False, resamples: int = 2000) -> str:
    tables = summarize(root, paper, resamples)
    groups, _ = split_runs(find_runs(root))
    parts = [f"<h1>Runs in {html.escape(str(root))}</h1>"]
    for name in ("results", "comparisons", "paper", "apart"):
        if name in tables:
            parts += [f"<h2>{html.escape(TITLES[name])}</h2>", table_html(tables[name])]
    parts += figures_html(groups)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>adarank report</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")


@fail_cleanly
def main(argv: list[str] | None = None) -> Path:
    parser = command_line(__doc__, root="a folder of run directories")
    parser.add_argument("--out", default="report.html", help="the HTML file to write")
    add_paper_options(parser, "add the AdaLoRA paper's numbers")
    args = parser.parse_args(argv)
    enough_resamples(args.bootstrap)
    out = Path(args.out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise AnalysisError(f"--out {out} should end in .html: the report is one HTML file")
    page = build_report(args.root, args.paper, args.bootstrap)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as error:
        raise style.unwritable(out, error) from None
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
