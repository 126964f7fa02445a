"""The report names every run by its setting in words, alike in tables and figures, and keeps its legends
off the data: on committed CoLA runs of AdaLoRA under the paper's and the official recipe (one method,
one budget, two settings whose heatmaps end at total rank 72 and 36)."""

import json
import re
import shutil
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

import plot_training
import report
import visualize_rank
from fixtures.paths import RESULTS
from run_reader import find_runs, load_run

COLA = RESULTS / "fidelity" / "cola"
NAMES = [f"adalora-{recipe}-seed{seed}" for recipe in ("small", "official") for seed in (42, 43, 44)]
SLACK = 1.0  # pixels: boxes that only touch do not overlap


def expected_label(run_dir: Path) -> str:
    """The setting's label, worked out from config.json alone: the runs share task, method and budget and
    differ in recipe; the paper's (a config.json written before recipes existed has none) goes unmarked."""
    config = json.loads((run_dir / "config.json").read_text())
    name = f"{config['task']} {config['method']}-{config['budget']}"
    recipe = config.get("recipe", "paper")
    return name if recipe == "paper" else f"{name} [recipe={recipe}]"


@pytest.fixture(scope="module")
def cola_report(tmp_path_factory):
    """(runs root, report HTML, {alt text: figure}) for the six AdaLoRA runs copied into a fresh folder."""
    root = tmp_path_factory.mktemp("cola") / "cola"
    for name in NAMES:
        shutil.copytree(COLA / name, root / name)
    figures, embed = {}, report.image_html

    def keep(figure, alt: str) -> str:
        figures[alt] = figure
        return embed(figure, alt)

    patch = pytest.MonkeyPatch()
    patch.setattr(report, "image_html", keep)
    try:
        out = report.main([str(root), "--out", str(root.parent / "report.html"), "--bootstrap", "1000"])
    finally:
        patch.undo()
    return root, out.read_text(), figures


def figure_texts(figure) -> list[str]:
    return [t.get_text() for t in figure.findobj(Text) if t.get_text().strip()]


def test_two_settings_of_one_method_have_different_labels_everywhere(cola_report):
    root, page, figures = cola_report
    labels = {name: expected_label(root / name) for name in NAMES}
    paper, official = labels["adalora-small-seed42"], labels["adalora-official-seed42"]
    assert paper == "cola adalora-small" and official == "cola adalora-small [recipe=official]"

    # Training curves: one legend entry per setting, its seeds drawn in its one colour.
    curves = figures["cola training curves"]
    (legend,) = curves.legends
    assert sorted(t.get_text() for t in legend.get_texts()) == [f"{paper} (3 seeds)", f"{official} (3 seeds)"]
    colours = {}
    for line in curves.axes[0].get_lines():
        setting, _ = line.get_label().rsplit(", seed ", 1)
        colours.setdefault(setting, set()).add(line.get_color())
    assert set(colours) == {paper, official} and all(len(c) == 1 for c in colours.values())
    assert colours[paper] != colours[official]

    # Heatmaps: each row is named by its setting and seed, and the right panel's total rank is that run's own.
    heatmaps = [ax for ax in figures["cola rank allocation"].axes if ax.images]
    rows = {f"{labels[name]} seed {name.rsplit('seed', 1)[1]}": name for name in NAMES}
    ends = {}
    for initial, final in zip(heatmaps[::2], heatmaps[1::2]):  # each row: initial step, final step
        label = " ".join(initial.get_ylabel().split())  # wrapped to the row's height
        name = rows[label]
        last = json.loads((root / name / "ranks.jsonl").read_text().splitlines()[-1])
        assert f"total rank {last['total_rank']}" in final.get_title()
        assert {initial.yaxis.label.get_color()} == colours[labels[name]]  # the setting's colour in the curves
        ends[name] = final.get_title()
    assert sorted(ends) == sorted(NAMES)  # six rows, six different labels
    assert "total rank 72" in ends["adalora-small-seed42"] and "total rank 36" in ends["adalora-official-seed42"]

    # Results table: the method column tells the two apart; no column of hashes.
    cells = re.findall(r"<tr><td>cola</td><td>([^<]*)</td><td>small</td>", page)
    assert sorted(cells) == ["adalora", "adalora [recipe=official]"]
    assert "<th>setting</th>" not in page

    # No setting hash anywhere a setting is named: the page's text and every text of every figure.
    body = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    shown = [body, *(text for figure in figures.values() for text in figure_texts(figure))]
    for run in find_runs(root):
        assert not [text for text in shown if run.setting in text], run.setting


def legend_overlaps(figure) -> list[str]:
    """Each legend (the figure's and the axes') that covers part of an axes' data area."""
    canvas = FigureCanvasAgg(figure)  # the report has closed its figures, which leaves them without one
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = [*figure.legends, *(ax.get_legend() for ax in figure.axes if ax.get_legend())]
    found = []
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for number, ax in enumerate(figure.axes):
            area = ax.get_window_extent(renderer)
            across, up = min(box.x1, area.x1) - max(box.x0, area.x0), min(box.y1, area.y1) - max(box.y0, area.y0)
            if across > SLACK and up > SLACK:
                found.append(f"a legend covers axes {number}")
    return found


def test_legends_cover_no_data_area(cola_report):
    root, _, figures = cola_report
    assert figures["cola training curves"].legends  # the curves have a legend, and it is below them
    for alt, figure in figures.items():
        assert not legend_overlaps(figure), alt
    run = load_run(root / "adalora-official-seed42")
    assert not legend_overlaps(visualize_rank.over_time_figure(run, panels=3))
    diagnosed = [load_run(RESULTS / "diagnosis" / "cola" / name) for name in ("adalora-small-seed42",
                                                                              "adalora-official-seed42")]
    figure = plot_training.diagnostics_figure(diagnosed)
    assert [t.get_text() for t in figure.legends[0].get_texts()] == [
        "cola adalora-small, seed 42", "cola adalora-small [recipe=official], seed 42"]
    assert not legend_overlaps(figure)


def test_the_legend_check_sees_a_legend_on_the_data(cola_report):
    root, _, _ = cola_report
    figure = plot_training.training_figure([load_run(root / name) for name in (NAMES[0], NAMES[3])])
    figure.legends.clear()
    figure.axes[0].legend(loc="center")  # where the legend used to be: inside the loss panel
    assert legend_overlaps(figure) == ["a legend covers axes 0"]
