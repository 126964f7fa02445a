"""The rank figures are laid out so that no label, tick label or title runs into another axes or text.

Each figure is drawn with matplotlib's renderer and the window extents of its texts and axes are compared,
on the tiny training runs of conftest.py's ``runs_root`` (shared with test_analysis.py).
"""

import json
import shutil
from itertools import combinations
from pathlib import Path

import pytest

import report
import visualize_rank
from conftest import read_jsonl
from run_reader import load_run

SLACK = 1.0  # pixels: boxes that only touch do not overlap


def _drawn_ticklabels(axis) -> list:
    """Tick labels inside the view interval: the locator may place others that are never drawn."""
    low, high = sorted(axis.get_view_interval())
    index = 0 if axis.axis_name == "x" else 1
    span = (high - low) * 1e-6
    return [t for t in axis.get_ticklabels() if low - span <= t.get_position()[index] <= high + span]


def _texts(figure) -> list[tuple]:
    """(text, what it is, the axes it belongs to or None) for every visible, non-empty text."""
    found = [(figure._suptitle, "suptitle", None)] if figure._suptitle is not None else []
    for number, ax in enumerate(figure.axes):
        named = [(ax.title, "title"), (ax.xaxis.label, "x label"), (ax.yaxis.label, "y label")]
        named += [(t, "x tick label") for t in _drawn_ticklabels(ax.xaxis)]
        named += [(t, "y tick label") for t in _drawn_ticklabels(ax.yaxis)]
        named += [(t, "cell") for t in ax.texts]
        if ax.get_legend() is not None:
            named += [(t, "legend entry") for t in ax.get_legend().get_texts()]
        found += [(text, f"{kind} {text.get_text()!r} of axes {number}", ax)
                  for text, kind in named if text.get_visible() and text.get_text().strip()]
    return found


def _overlap(a, b) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > SLACK and min(a.y1, b.y1) - max(a.y0, b.y0) > SLACK


def assert_nothing_overlaps(figure):
    """No text runs into another axes' area, no two texts overlap, no two axes overlap."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    texts = [(name, owner, text.get_window_extent(renderer)) for text, name, owner in _texts(figure)]
    areas = [(f"axes {number}", ax, ax.get_window_extent(renderer)) for number, ax in enumerate(figure.axes)]
    found = [f"{name} runs into {area}" for name, owner, box in texts
             for area, ax, area_box in areas if ax is not owner and _overlap(box, area_box)]
    found += [f"{a} overlaps {b}" for (a, _, box_a), (b, _, box_b) in combinations(texts, 2) if _overlap(box_a, box_b)]
    found += [f"{a} overlaps {b}" for (a, _, box_a), (b, _, box_b) in combinations(areas, 2) if _overlap(box_a, box_b)]
    visualize_rank.plt.close(figure)
    assert not found, "\n".join(found)


def with_layers(run_dir: Path, copy: Path, count: int) -> Path:
    """A copy of a run whose ranks.jsonl has ``count`` layers (the logged layers repeated), as a deep model would."""
    shutil.copytree(run_dir, copy)
    records = []
    for record in read_jsonl(run_dir / "ranks.jsonl"):
        logged = sorted(record["ranks"], key=int)
        ranks = {str(layer): record["ranks"][logged[layer % len(logged)]] for layer in range(count)}
        total = sum(rank for modules in ranks.values() for rank in modules.values())
        records.append({**record, "ranks": ranks, "total_rank": total})
    (copy / "ranks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return copy


@pytest.fixture(scope="module")
def deep_runs(runs_root, tmp_path_factory) -> list[Path]:
    """The two AdaLoRA runs with 24 layers each."""
    folder = tmp_path_factory.mktemp("deep")
    return [with_layers(runs_root / f"sst2-adalora-{seed}", folder / f"adalora-{seed}", 24) for seed in "12"]


def test_one_run_initial_and_final_side_by_side(runs_root):
    figure = visualize_rank.heatmaps_figure([load_run(runs_root / "sst2-adalora-1")])
    assert_nothing_overlaps(figure)


def test_several_runs_one_row_each(runs_root):
    figure = visualize_rank.heatmaps_figure([load_run(runs_root / f"sst2-adalora-{seed}") for seed in "12"])
    assert_nothing_overlaps(figure)


def test_over_time_strip_and_curves(runs_root):
    figure = visualize_rank.over_time_figure(load_run(runs_root / "sst2-adalora-1"))
    assert_nothing_overlaps(figure)


@pytest.mark.parametrize("runs", [1, 2])
def test_24_layers_side_by_side(deep_runs, runs):
    assert len(read_jsonl(deep_runs[0] / "ranks.jsonl")[0]["ranks"]) == 24
    figure = visualize_rank.heatmaps_figure([load_run(path) for path in deep_runs[:runs]])
    assert_nothing_overlaps(figure)


def test_24_layers_over_time(deep_runs):
    figure = visualize_rank.over_time_figure(load_run(deep_runs[0]))
    assert_nothing_overlaps(figure)


def test_the_overlap_check_sees_an_overlap(runs_root):
    figure = visualize_rank.heatmaps_figure([load_run(runs_root / "sst2-adalora-1")])
    initial, final = figure.axes[:2]
    final.set_position(initial.get_position())  # the right panel drawn on top of the left one
    with pytest.raises(AssertionError, match="runs into axes 0"):
        assert_nothing_overlaps(figure)


def test_the_report_draws_its_figures_without_overlaps(runs_root, monkeypatch):
    checked = []

    def check(figure, alt: str) -> str:
        assert_nothing_overlaps(figure)
        checked.append(alt)
        return ""

    monkeypatch.setattr(report, "image_html", check)  # look at each figure instead of embedding it
    report.build_report(runs_root, resamples=50)
    assert checked == ["sst2 training curves", "sst2 rank allocation"]
