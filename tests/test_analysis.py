"""The analysis scripts on run directories made by real (tiny) training runs."""

import csv
import html
import io
import json
import re
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest

import memory_calculation
import plot_training
import report
import run_reader
import stats
import summarize_runs
import visualize_rank
from conftest import read_jsonl
from fixtures.cli import main_fails_cleanly
from fixtures.paths import RESULTS
from run_reader import load_run
from run_settings import setting_names


def cell_values(ax) -> list[float]:
    return [float(t.get_text()) for t in ax.texts]


def test_heatmap_cells_are_the_logged_ranks_at_the_initial_and_final_step(runs_root):
    run = load_run(runs_root / "sst2-adalora-1")
    records = read_jsonl(run.path / "ranks.jsonl")
    figure = visualize_rank.heatmaps_figure([run])
    initial, final = figure.axes[0], figure.axes[1]
    for ax, record in ((initial, records[0]), (final, records[-1])):
        kinds = ("query", "key", "value", "attention.output", "intermediate", "output")  # the paper's order
        expected = [record["ranks"][layer][kind] for kind in kinds for layer in ("0", "1")]
        assert cell_values(ax) == expected
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1"]
        assert [t.get_text() for t in ax.get_yticklabels()] == ["query", "key", "value", "attn out", "ffn in", "ffn out"]
    assert "initial: step 0" in initial.get_title() and "final: step" in final.get_title()
    assert f"{records[0]['budget']} -> {records[-1]['budget']}" in figure._suptitle.get_text()
    assert sum(cell_values(final)) == records[-1]["total_rank"] == 2 * 12


def test_several_runs_share_one_colour_scale(runs_root):
    runs = [load_run(runs_root / "sst2-adalora-1"), load_run(runs_root / "sst2-adalora-2")]
    figure = visualize_rank.heatmaps_figure(runs)
    limits = {ax.images[0].get_clim() for ax in figure.axes if ax.images}
    assert limits == {(0, 3)}  # init_r 3 is the largest rank of either run


def test_over_time_plots_the_total_rank_and_marks_the_schedule(runs_root):
    run = load_run(runs_root / "sst2-adalora-1")
    records = read_jsonl(run.path / "ranks.jsonl")
    figure = visualize_rank.over_time_figure(run, panels=3)
    total_ax, kinds_ax = figure.axes[-2:]
    lines = {line.get_label(): line for line in total_ax.get_lines()}
    assert list(lines["total rank"].get_ydata()) == [r["total_rank"] for r in records]
    assert list(lines["budget b(t)"].get_ydata()) == [r["budget"] for r in records]
    queries = {line.get_label(): line for line in kinds_ax.get_lines()}["query"]
    assert list(queries.get_ydata()) == [r["ranks"]["0"]["query"] + r["ranks"]["1"]["query"] for r in records]
    legend = [t.get_text() for t in total_ax.get_legend().get_texts()]
    assert "warm-up (tinit)" in legend and "final (tfinal)" in legend
    # The shaded phases are the ones the run logged, not a copy of AdaLoRA's schedule rule.
    assert visualize_rank.schedule_phases(run, records) == records[0]["phases"]
    assert [ax.get_title().split("\n")[0] for ax in figure.axes[:3]] == [
        f"step {records[i]['step']} ({records[i]['event']})" for i in (0, round((len(records) - 1) / 2), -1)]


def test_the_command_writes_png_and_pdf(runs_root, tmp_path):
    run = str(runs_root / "sst2-adalora-1")
    assert visualize_rank.main([run])[0] == runs_root / "sst2-adalora-1" / "rank_heatmap.png"
    pdf = visualize_rank.main([run, "--over-time", "--out", str(tmp_path / "t.pdf")])[0]
    assert pdf.read_bytes().startswith(b"%PDF")


def test_a_lora_run_has_nothing_to_draw(runs_root, capsys):
    line = main_fails_cleanly(capsys, visualize_rank.main, [str(runs_root / "sst2-lora-1")])
    assert "has no ranks.jsonl: a lora run has fixed ranks, so there is nothing to draw" in line
    assert line.endswith("(rank heatmaps need a run whose ranks are allocated: AdaLoRA, SoRA, EVA, IncreLoRA or plateau)")


def test_not_a_run_directory(tmp_path, capsys):
    assert "is not a run directory" in main_fails_cleanly(capsys, visualize_rank.main, [str(tmp_path)])


def test_a_truncated_ranks_file_is_drawn_as_far_as_it_goes(runs_root, tmp_path, capsys):
    copy = tmp_path / "preempted"
    shutil.copytree(runs_root / "sst2-adalora-1", copy)
    text = (copy / "ranks.jsonl").read_text()
    (copy / "ranks.jsonl").write_text(text[: len(text) - 40])  # cut inside the last record
    complete = read_jsonl(runs_root / "sst2-adalora-1" / "ranks.jsonl")[:-1]
    figure = visualize_rank.heatmaps_figure([load_run(copy)])
    assert "cut-off line" in capsys.readouterr().out
    assert sum(cell_values(figure.axes[1])) == complete[-1]["total_rank"]
    assert "last logged" in figure.axes[1].get_title()


def test_training_curves_are_the_logged_values(runs_root):
    runs = [load_run(runs_root / "sst2-lora-1"), load_run(runs_root / "sst2-adalora-1")]
    figure = plot_training.training_figure(runs)
    loss_ax, metric_ax = figure.axes
    for line, run in zip(loss_ax.get_lines(), runs):
        history = read_jsonl(run.path / "history.jsonl")
        assert list(line.get_ydata()) == [h["loss"] for h in history if "loss" in h]
        assert line.get_color() == {"lora": "#1f77b4", "adalora": "#d62728"}[run.method]
    assert metric_ax.get_title() == "dev accuracy" and len(metric_ax.get_lines()) == 2


def test_results_table_matches_the_metrics_files(runs_root):
    tables = summarize_runs.summarize(runs_root, resamples=200)
    rows = {(r["method"], r["budget"]): r for r in tables["results"]}
    assert set(rows) == {("lora", "small"), ("adalora", "small")}
    for method in ("lora", "adalora"):
        values = [json.loads((runs_root / f"sst2-{method}-{s}" / "metrics.json").read_text()) for s in "12"]
        accuracies = [100 * v["eval_accuracy"] for v in values]
        expected = f"{statistics.mean(accuracies):.2f} +- {statistics.stdev(accuracies):.2f}"
        assert rows[(method, "small")]["accuracy"] == expected and rows[(method, "small")]["seeds"] == 2
        assert rows[(method, "small")]["trainable params"] == f"{values[0]['trainable_params']:,}"
        live = statistics.mean(v["average_live_adapter_params"] for v in values)  # AdaLoRA's mask prunes
        assert rows[(method, "small")]["avg live params"] == f"{round(live):,}"
    apart = {Path(r["run"]).name: r["why"] for r in tables["apart"]}
    assert apart == {"demo": "synthetic demo data", "stopped": "unfinished or failed (no metrics.json)"}
    (comparison,) = tables["comparisons"]
    assert comparison["comparison"] == "adalora - lora" and comparison["examples"] == 64


def test_seeds_group_by_the_planned_adapter_not_the_flags_typed(runs_root, tmp_path):
    def variant(name: str, change) -> str:
        copy = tmp_path / name
        shutil.copytree(runs_root / "sst2-lora-1", copy)
        config = json.loads((copy / "config.json").read_text())
        change(config)
        (copy / "config.json").write_text(json.dumps(config))
        return load_run(copy)

    def typed_as_rank(config):  # --lora_r 2 instead of --budget small: the same plan
        config["arguments"]["adapter"].update(budget="large", lora_r=config["adapter"]["r"])

    def other_learning_rate(config):
        config["arguments"]["training"]["learning_rate"] *= 2

    def other_rank(config):
        config["adapter"]["r"] += 1

    run = load_run(runs_root / "sst2-lora-1")
    assert run.setting == load_run(runs_root / "sst2-lora-2").setting  # seeds apart
    assert variant("typed", typed_as_rank).setting == run.setting
    faster, wider = variant("lr", other_learning_rate), variant("rank", other_rank)
    assert faster.setting != run.setting and wider.setting != run.setting
    # Tables name each setting by what sets it apart.
    names = setting_names([run, faster])
    assert (names[run.setting], names[faster.setting]) == ("learning_rate=0.005", "learning_rate=0.01")


def test_a_4bit_runs_unset_compute_dtype_groups_with_the_one_it_ran_in(runs_root, tmp_path):
    """Runs record the compute dtype resolved; an older CPU run's unset one was float32, and made a row
    of its own beside float32's."""
    def qlora(name: str, dtype, device: str = "cpu"):
        copy = tmp_path / name
        shutil.copytree(runs_root / "sst2-lora-1", copy)
        config = json.loads((copy / "config.json").read_text())
        config["method"] = "qlora"
        config["arguments"]["model"]["bnb_4bit_compute_dtype"] = dtype
        config["environment"]["device"] = {"type": device}
        (copy / "config.json").write_text(json.dumps(config))
        return load_run(copy)

    resolved = qlora("resolved", "float32")
    assert qlora("older", None).setting == resolved.setting
    assert qlora("fp16", "float16").setting != resolved.setting
    assert qlora("gpu", None, "cuda").setting != resolved.setting  # bf16 or fp16 there, as the GPU could
    on_gpu = qlora("bf16-gpu", "bfloat16", "cuda")
    older_gpu = tmp_path / "older-gpu"
    shutil.copytree(tmp_path / "gpu", older_gpu)
    config = json.loads((older_gpu / "config.json").read_text())
    config["precision"] = {"bf16_autocast": True, "chosen_by": "default: the GPU computes in bf16"}
    (older_gpu / "config.json").write_text(json.dumps(config))
    assert load_run(older_gpu).setting_fields["model_arguments"] == on_gpu.setting_fields["model_arguments"]
    # LoRA and QLoRA compare as methods: the compute dtype is the 4-bit method's own
    lora = load_run(runs_root / "sst2-lora-1")
    assert lora.shared_fields == resolved.shared_fields and lora.setting != resolved.setting


def runs_copied(runs_root, root: Path, names: dict[str, str]) -> Path:
    """Copies of the fixture's runs: {where under root: which run}."""
    for where, name in names.items():
        shutil.copytree(runs_root / name, root / where)
    return root


def test_a_seed_run_twice_is_counted_once(runs_root, tmp_path):
    # Two benchmarks' folders holding the same seed of one setting: one draw, not two.
    root = runs_copied(runs_root, tmp_path / "results", {
        "first/sst2-lora-1": "sst2-lora-1", "first/sst2-lora-2": "sst2-lora-2", "second/sst2-lora-1": "sst2-lora-1"})
    tables = summarize_runs.summarize(root, resamples=200)
    (row,) = tables["results"]
    assert row["seeds"] == 2
    (apart,) = tables["apart"]
    assert Path(apart["run"]) == root / "second" / "sst2-lora-1"
    assert apart["why"].startswith(f"seed {load_run(root / 'first' / 'sst2-lora-1').seed} again in its setting (")
    assert str(root / "first" / "sst2-lora-1") in apart["why"]


def test_time_and_peak_are_of_runs_that_trained_from_the_start(runs_root, tmp_path):
    root = runs_copied(runs_root, tmp_path / "results", {"a": "sst2-lora-1", "b": "sst2-lora-2"})
    resumed = json.loads((root / "b" / "metrics.json").read_text())
    resumed.update(resumed_from_step=3, train_seconds=0.5, peak_memory_mb=1.0)  # the part after the resume
    (root / "b" / "metrics.json").write_text(json.dumps(resumed))
    whole = json.loads((root / "a" / "metrics.json").read_text())
    (row,) = summarize_runs.summarize(root, resamples=200)["results"]
    assert row["train s"] == f"{whole['train_seconds']:.0f} (1 of 2; 1 resumed)"
    assert row["peak MB"] == f"{whole['peak_memory_mb']:.0f} (1 of 2; 1 resumed)"
    shutil.rmtree(root / "a")
    (row,) = summarize_runs.summarize(root, resamples=200)["results"]
    assert row["train s"] == row["peak MB"] == "- (1 resumed)"


def test_one_seed_shows_its_score_without_a_spread_and_counts_round(runs_root, tmp_path):
    root = runs_copied(runs_root, tmp_path / "results", {"a": "sst2-lora-1"})
    metrics = json.loads((root / "a" / "metrics.json").read_text())
    metrics["average_adapter_params"] = metrics["adapter_params"] + 0.75  # a mean over steps
    (root / "a" / "metrics.json").write_text(json.dumps(metrics))
    (row,) = summarize_runs.summarize(root, resamples=200)["results"]
    assert row["accuracy"] == f"{100 * metrics['eval_accuracy']:.2f}"
    assert row["avg adapter params"] == f"{metrics['adapter_params'] + 1:,}"


def test_csv_and_paper_rows(runs_root, capsys):
    summarize_runs.main([str(runs_root), "--csv", "--paper", "--bootstrap", "1000"])
    out = capsys.readouterr().out
    results = out.split("# results\n")[1].split("\n# ")[0]
    parsed = list(csv.DictReader(io.StringIO(results)))
    assert {row["method"] for row in parsed} == {"lora", "adalora"}
    assert "paper: AdaLoRA" in out and "95.80" in out  # SST-2, 0.32M


def test_memory_table_of_runs_reads_their_memory_json_and_nothing_else(runs_root):
    import subprocess
    import sys

    runs = [runs_root / "sst2-lora-1", runs_root / "sst2-adalora-1"]
    rows = memory_calculation.main([str(run) for run in runs])
    for row, run in zip(rows, runs):
        memory = json.loads((run / "memory.json").read_text())
        assert (row["method"], row["adapter params (saved)"]) == (
            run.name.split("-")[1], f"{memory['adapter']['saved_adapter_params']:,}")
        assert row["base MB"] == f"{memory['base']['total_bytes'] / 2**20:.2f}"
    # Reading runs needs no training code: neither the library nor torch is imported.
    analysis = Path(memory_calculation.__file__).parent
    check = (f"import sys; sys.path.insert(0, {str(analysis)!r}); import memory_calculation; "
             f"memory_calculation.main({[str(run) for run in runs]!r}); "
             "assert not {'adarank', 'torch'} & set(sys.modules), sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def copy_runs(runs_root: Path, folder: Path, **methods: str) -> Path:
    """Copies of the real-data SST-2 runs in ``folder``; ``methods`` names further copies of a
    run (copy name -> run name) as a method of their own, "qlora"."""
    for seed in "12":
        for method in ("lora", "adalora"):
            shutil.copytree(runs_root / f"sst2-{method}-{seed}", folder / f"sst2-{method}-{seed}")
    for copy, run in methods.items():
        shutil.copytree(runs_root / run, folder / copy)
        config = json.loads((folder / copy / "config.json").read_text())
        (folder / copy / "config.json").write_text(json.dumps({**config, "method": "qlora"}))
    return folder


def test_each_predictions_file_is_read_once(runs_root, tmp_path, monkeypatch):
    root = copy_runs(runs_root, tmp_path, **{"sst2-qlora-1": "sst2-lora-1", "sst2-qlora-2": "sst2-lora-2"})
    reads, read = [], run_reader.Run.predictions
    monkeypatch.setattr(run_reader.Run, "predictions", lambda run: reads.append(run.name) or read(run))
    comparisons = summarize_runs.summarize(root, resamples=20)["comparisons"]
    assert len(comparisons) == 3  # every run is in two of them
    assert sorted(reads) == sorted(path.name for path in root.iterdir())


def test_runs_compared_must_have_the_same_dev_labels(runs_root, tmp_path, capsys):
    root = copy_runs(runs_root, tmp_path)
    for seed in "12":  # both AdaLoRA runs alike, so only the comparison with LoRA sees it
        tsv = root / f"sst2-adalora-{seed}" / "predictions.tsv"
        lines = tsv.read_text().splitlines()
        split, index, label, prediction = lines[-1].split("\t")
        tsv.write_text("\n".join([*lines[:-1], "\t".join((split, index, str(1 - int(label)), prediction))]) + "\n")
    line = main_fails_cleanly(capsys, summarize_runs.main, [str(root), "--bootstrap", "1000"])
    assert "sst2-lora-1/predictions.tsv has other labels for the same dev examples" in line


# --- the statistics ------------------------------------------------------------------------------

def predictor(rng, labels, accuracy: float):
    """Binary predictions that are right on about ``accuracy`` of the examples, at random."""
    return np.where(rng.random(len(labels)) < accuracy, labels, 1 - labels)


def small_real_difference(seed: int):
    """(labels, a, b): ``a`` is ``b`` (75% right) with 20 of its 2,000 errors put right, so
    a is better by exactly one point, and never worse."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 2000)
    b = predictor(rng, labels, 0.75)
    a = b.copy()
    fixed = rng.choice(np.flatnonzero(b != labels), 20, replace=False)
    a[fixed] = labels[fixed]
    return labels, a, b


def relabelled(seed: int, n: int = 500):
    """(labels, a, b): two predictors (80% right each) whose answers are handed to "a" and "b"
    by a coin toss per example, so a and b differ on many examples but not in quality."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    p, q = predictor(rng, labels, 0.8), predictor(rng, labels, 0.8)
    heads = rng.random(n) < 0.5
    return labels, np.where(heads, p, q), np.where(heads, q, p)


def test_bootstrap_separates_a_small_real_difference_from_zero():
    # Resampling the two methods' examples independently, not in pairs, gives about +-2.7 points here.
    labels, a, b = small_real_difference(seed=4)
    diff, low, high = stats.paired_bootstrap(stats.accuracy, labels, [a], [b], 1000)
    assert diff == pytest.approx(0.01)
    assert 0 < low < diff < high
    # The per-example differences are 0 or 1, so the interval is about diff +- 1.96 standard errors.
    standard_error = np.sqrt(diff * (1 - diff) / len(labels))
    assert high - low == pytest.approx(2 * 1.96 * standard_error, rel=0.25)
    assert high - diff == pytest.approx(diff - low, rel=0.3)


def test_bootstrap_of_randomly_relabelled_methods_covers_zero():
    labels, a, b = relabelled(seed=5)
    assert np.mean(a != b) > 0.2
    diff, low, high = stats.paired_bootstrap(stats.accuracy, labels, [a], [b], 1000)
    assert abs(diff) >= 0.01  # the observed difference is noise, not 0 by construction
    assert low < 0 < high


def test_bootstrap_intervals_cover_zero_95_times_in_100_without_a_difference():
    covered = []
    for seed in range(100):
        labels, a, b = relabelled(seed, n=300)
        _, low, high = stats.paired_bootstrap(stats.accuracy, labels, [a], [b], 400)
        covered.append(low < 0 < high)
    assert 0.9 <= np.mean(covered) <= 0.99


def test_bootstrap_of_a_large_real_difference_excludes_zero():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 400)
    good, poor = predictor(rng, labels, 0.9), predictor(rng, labels, 0.6)
    for metric in (stats.accuracy, stats.matthews, stats.f1):
        diff, low, high = stats.paired_bootstrap(metric, labels, [good], [poor], 500)
        assert 0 < low < diff < high


def test_our_metrics_agree_with_scikit_learn_and_scipy():
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import f1_score, matthews_corrcoef

    rng = np.random.default_rng(3)
    y, p = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    assert stats.matthews(y, p) == pytest.approx(matthews_corrcoef(y, p))
    y2, p2 = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    assert stats.f1(y2, p2) == pytest.approx(f1_score(y2, p2))
    scores, guesses = rng.random(200) * 5, np.round(rng.random(200) * 5, 1)  # ties among the guesses
    assert stats.pearson(scores, guesses) == pytest.approx(pearsonr(scores, guesses)[0])
    assert stats.spearman(scores, guesses) == pytest.approx(spearmanr(scores, guesses)[0])


def test_report_is_one_self_contained_html_file(runs_root, tmp_path):
    out = report.main([str(runs_root), "--out", str(tmp_path / "report.html"), "--bootstrap", "1000"])
    text = out.read_text()
    assert text.count("data:image/png;base64,") == 2  # curves and heatmaps of the sst2 group
    body = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text.split("<body>")[1])  # 'http' may be in base64
    assert "adalora - lora" in body and "synthetic demo data" in body and "http" not in body


def test_methods_are_paired_only_like_with_like_and_named_by_recipe(runs_root, tmp_path):
    root = copy_runs(runs_root, tmp_path)
    for seed in "12":  # AdaLoRA "ran" under the official recipe at another learning rate
        path = root / f"sst2-adalora-{seed}" / "config.json"
        config = json.loads(path.read_text())
        config["recipe"] = "official"
        config["arguments"]["training"]["learning_rate"] = 8e-4
        path.write_text(json.dumps(config))
    tables = summarize_runs.summarize(root, resamples=20)
    assert {row["method"] for row in tables["results"]} == {"lora", "adalora [recipe=official]"}
    assert tables["comparisons"] == []  # different recipes and learning rates: not compared unless asked
    (row,) = summarize_runs.summarize(root, resamples=20, pair_all=True)["comparisons"]
    assert row["comparison"] == "adalora [recipe=official] - lora (differ: recipe, learning_rate)"


def test_runs_of_different_budgets_are_paired_only_when_asked_and_the_budget_is_named(runs_root, tmp_path):
    root = copy_runs(runs_root, tmp_path)
    for seed in "12":  # AdaLoRA labelled with another budget (a growth method's ceiling, say)
        path = root / f"sst2-adalora-{seed}" / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "budget": "r3"}))
    assert summarize_runs.summarize(root, resamples=20)["comparisons"] == []
    (row,) = summarize_runs.summarize(root, resamples=20, pair_all=True)["comparisons"]
    assert row["comparison"] == "adalora - lora (differ: budget)" and row["budget"] == "r3 / small"


def test_f1_counts_label_1_as_positive_whichever_labels_a_split_holds():
    labels, (predictions,) = stats.encode("f1", ["1", "1", "1"], [["1", "1", "1"]])
    assert stats.f1(labels, predictions[0]) == 1.0  # no "0" anywhere: still perfect, not 0
    labels, (predictions,) = stats.encode("f1", ["0", "1", "1", "0"], [["1", "1", "0", "0"]])
    assert stats.f1(labels, predictions[0]) == pytest.approx(0.5)


def test_a_seed_written_by_an_earlier_version_joins_its_setting(runs_root, tmp_path):
    """config.json grew entries over time (AdaLoRA's init, the LoRA rank a budget compares with, the
    schedule's recipe; the schedule's paper values renamed published; arguments added with None):
    an older run of the same setting still counts as one of its seeds."""
    root = copy_runs(runs_root, tmp_path)
    path = root / "sst2-adalora-2" / "config.json"
    config = json.loads(path.read_text())
    adapter = config["adapter"]
    adapter.pop("init"), adapter.pop("compared_with_lora_r")
    schedule = adapter["schedule"]
    schedule.pop("recipe")
    schedule["paper"] = schedule.pop("published")
    config["arguments"]["model"].pop("classifier_dropout")
    config.pop("format_version")  # written before documents carried a version: version 1
    path.write_text(json.dumps(config))
    rows = summarize_runs.summarize(root, resamples=20)["results"]
    assert [(r["method"], r["seeds"]) for r in rows] == [("adalora", 2), ("lora", 2)]
    adapter["init"] = "lora"  # a real difference still sets a run apart
    path.write_text(json.dumps(config))
    assert len(summarize_runs.summarize(root, resamples=20)["results"]) == 3


def test_bf16_and_fp32_runs_are_different_settings_and_older_fp32_runs_join_new_ones():
    from run_reader import find_runs
    from run_settings import setting_names

    runs = [run for run in find_runs(RESULTS / "bf16" / "sst2") if "lora-" in str(run.path)
            and "adalora" not in str(run.path)]
    assert len(runs) == 6
    by_precision = {}
    for run in runs:
        by_precision.setdefault(run.config["arguments"]["training"]["bf16"], set()).add(run.setting)
    assert len(by_precision[True]) == len(by_precision[False]) == 1 and by_precision[True] != by_precision[False]
    assert "bf16_autocast=True" in " ".join(setting_names(runs).values())
    # fp32 seeds written before the precision choice existed stay one setting with today's
    fidelity = [run for run in find_runs(RESULTS / "fidelity" / "cola") if "lora-r2-" in str(run.path)]
    assert len(fidelity) == 3 and len({run.setting for run in fidelity}) == 1
    # and so do the official-recipe seeds written by two versions: one setting per method
    official = [run for run in find_runs(RESULTS / "fidelity" / "cola") if "official-" in str(run.path)]
    assert len(official) == 6 and len({run.setting for run in official}) == 2


def test_runs_that_cannot_be_read_are_left_out_with_the_reason_and_the_report_makes_its_folder(runs_root, tmp_path,
                                                                                             capsys):
    """A damaged metrics.json or config.json, a run without metrics.json, a truncated history, an
    undefined metric: the tables go on without the run and say why; never a traceback."""
    root = copy_runs(runs_root, tmp_path / "runs")
    for name, damage in (("metrics", "metrics.json"), ("config", "config.json")):
        shutil.copytree(runs_root / "sst2-lora-1", root / f"damaged-{name}")
        path = root / f"damaged-{name}" / damage
        path.write_text(path.read_text()[:40])
    shutil.copytree(runs_root / "stopped", root / "stopped")
    history = root / "stopped" / "history.jsonl"
    history.write_text(history.read_text()[:-20])  # stopped mid-line
    undefined = root / "undefined"
    shutil.copytree(runs_root / "sst2-lora-2", undefined)
    metrics = json.loads((undefined / "metrics.json").read_text())
    (undefined / "metrics.json").write_text(json.dumps({**metrics, "eval_accuracy": None}))
    apart = {Path(r["run"]).name: r["why"] for r in summarize_runs.summarize(root, resamples=20)["apart"]}
    assert apart["damaged-metrics"].startswith("metrics.json is damaged (")
    assert apart["damaged-config"].startswith("config.json is damaged (")
    assert apart["stopped"] == "unfinished or failed (no metrics.json)"
    assert apart["undefined"].startswith("eval_accuracy undefined")
    out = report.main([str(root), "--out", str(tmp_path / "new" / "folder" / "report.html"), "--bootstrap", "1000"])
    assert "damaged-config" in out.read_text()
    assert plot_training.main([str(root / "stopped"), "--out", str(tmp_path / "curves.png")]).is_file()
    assert "cut-off line" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no run directories" in main_fails_cleanly(capsys, summarize_runs.main, [str(empty)], one_line=True)
    assert "no run directories" in main_fails_cleanly(capsys, report.main, [str(empty)], one_line=True)


def test_rank_comparison_pairs_seeds_and_counts_the_matrices_that_moved(runs_root, tmp_path, capsys):
    import compare_ranks

    first = [runs_root / "sst2-adalora-1", runs_root / "sst2-adalora-2"]
    moved = shutil.copytree(first[0], tmp_path / "moved-1")  # seed 1 again, two matrices' final ranks changed
    records = read_jsonl(moved / "ranks.jsonl")
    final = records[-1]["ranks"]
    final["0"]["query"] += 2
    final["1"]["value"] -= 1
    (moved / "ranks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    matrices = sum(len(kinds) for kinds in final.values())

    rows = compare_ranks.main([*map(str, first), "--against", str(moved)])
    same_seed = [row for row in rows if row["pair"] == "same seed"]
    assert len(same_seed) == 1 and same_seed[0]["runs"] == "sst2-adalora-1 / moved-1"  # seed 2 has no partner
    assert same_seed[0]["matrices"] == matrices
    assert same_seed[0]["same rank (%)"] == pytest.approx(100 * (matrices - 2) / matrices)
    assert same_seed[0]["mean rank difference"] == pytest.approx(3 / matrices)
    assert same_seed[0]["largest rank difference"] == 2
    between_seeds = [row for row in rows if row["pair"] == "first group, seeds"]
    one, two = (read_jsonl(path / "ranks.jsonl")[-1]["ranks"] for path in first)
    equal = sum(one[layer][kind] == two[layer][kind] for layer in one for kind in one[layer])
    assert between_seeds[0]["same rank (%)"] == pytest.approx(100 * equal / matrices)
    assert "| mean: same seed | 1 pair(s) |" in capsys.readouterr().out

    assert "one seed twice" in main_fails_cleanly(capsys, compare_ranks.main, [str(first[0]), "--against", str(moved),
                                                                               str(first[0])])
    (moved / "metrics.json").unlink()
    assert "not a finished run" in main_fails_cleanly(capsys, compare_ranks.main, [str(first[0]), "--against", str(moved)])


def test_epochs_to_reach_finds_the_first_evaluation_at_the_references_mean_final_score(runs_root, capsys):
    import epochs_to_reach

    runs = [runs_root / f"sst2-{method}-{seed}" for method in ("lora", "adalora") for seed in "12"]
    reference = runs[:2]
    target = statistics.mean(json.loads((run / "metrics.json").read_text())["eval_accuracy"] for run in reference)
    table = epochs_to_reach.main([*map(str, runs), "--reference", *map(str, reference)])
    for run, row in zip(runs, table):
        evaluations = [r for r in read_jsonl(run / "history.jsonl") if "eval_accuracy" in r]
        assert len(evaluations) >= 2  # one a training epoch
        first = next((r for r in evaluations if r["eval_accuracy"] >= target), None)
        assert row["reaches target at epoch"] == (first["epoch"] if first else "never")
        assert row["best"] == pytest.approx(100 * max(r["eval_accuracy"] for r in evaluations))
        assert row["target"] == pytest.approx(100 * target)
    assert any(row["reaches target at epoch"] != "never" for row in table[:2])  # a reference run reaches its mean
    assert "not a finished run" in main_fails_cleanly(
        capsys, epochs_to_reach.main, [str(runs_root / "stopped"), "--reference", str(runs[0])])


# --- bad numbers and damaged files: one line, exit code 2 ----------------------------------------

def fake_run(folder: Path, **files: str) -> Path:
    """A run directory of an SST-2 run holding only ``files`` (name -> text) beside its config.json."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"task": "sst2", "method": "lora"}))
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_counts_and_steps_out_of_range_are_refused(tmp_path, capsys):
    import diagnostics_table

    run = str(fake_run(tmp_path / "run"))
    line = main_fails_cleanly(capsys, visualize_rank.main, [run, "--over-time", "--steps", "0"], one_line=True)
    assert line == "error: --steps must be at least 1, not 0"
    line = main_fails_cleanly(capsys, diagnostics_table.main, [run, "--steps", "-5", "0"], one_line=True)
    assert line == "error: --steps must be 0 or more, not -5"
    for rank in ("-4", "0"):  # a rank is 1 or more: neither negative counts nor the default in its place
        line = main_fails_cleanly(capsys, memory_calculation.main, ["--plan", "--init_r", rank], one_line=True)
        assert line == f"error: --init_r must be at least 1, not {rank}"


def test_a_damaged_memory_json_is_named(tmp_path, capsys):
    for name, text, why in (("cut", '{"base": {"total_by', "is damaged ("), ("list", "[1]", "is not laid out as"),
                            ("empty", "{}", "lacks the entry 'base'")):
        run = fake_run(tmp_path / name, **{"memory.json": text})
        line = main_fails_cleanly(capsys, memory_calculation.main, [str(run)], one_line=True)
        assert line.startswith(f"error: {run / 'memory.json'} {why}") and "train the run again" in line

    # entries of the wrong type, a real run's memory.json otherwise intact (they ended in AttributeError or
    # ValueError, or printed nan as a peak)
    real = next(RESULTS.glob("*/*/memory.json"))
    for name, change in (("by-number", lambda m: m["peak"].update(peak_memory_measured_by=5)),
                         ("peak-word", lambda m: m["peak"].update(peak_memory_mb="x")),
                         ("peak-nan", lambda m: m["peak"].update(peak_memory_mb=float("nan"))),
                         ("saved-word", lambda m: m["adapter"].update(saved_adapter_params="x"))):
        memory = json.loads(real.read_text())
        change(memory)
        run = fake_run(tmp_path / name, **{"memory.json": json.dumps(memory)})
        line = main_fails_cleanly(capsys, memory_calculation.main, [str(run)], one_line=True)
        assert line.startswith(f"error: {run / 'memory.json'} is not laid out as training writes"), name


def test_row_energy_refuses_an_example_count_the_data_cannot_give(tmp_path, capsys):
    import row_energy
    from fixtures.glue import write_sst2_folder

    data = write_sst2_folder(tmp_path / "glue")  # 128 training sentences
    run = str(fake_run(tmp_path / "run", **{"adapter/adapter_model.safetensors": "", "metrics.json": "{}"}))
    line = main_fails_cleanly(capsys, row_energy.main, [run, "--data_dir", str(data), "--examples", "0"], one_line=True)
    assert line == "error: --examples must be at least 1, not 0"
    line = main_fails_cleanly(capsys, row_energy.main, [run, "--data_dir", str(data), "--examples", "100000"],
                              one_line=True)
    assert line == (f"error: --examples 100000 is more than the 128 training sentences of {data / 'SST-2'}: "
                    "give --examples 128 or fewer")


def test_layer_spread_measures_how_much_each_layer_still_depends_on_the_sentence(runs_root, tmp_path, capsys):
    """analysis/layer_spread.py on a trained LoRA run: every layer's first token varies across dev
    sentences; with the last layer's LayerNorm made constant, that layer's spread and the logits'
    fall to zero and the layers before it are unchanged; an adapter's share is its update over the
    frozen output, as recomputed from the layer's own weights."""
    import torch

    import layer_spread
    from fixtures.glue import write_sst2_folder
    from trained import trained_model

    data = str(write_sst2_folder(tmp_path / "glue"))
    config, model, batch = trained_model(runs_root / "sst2-lora-1", data, 16, split="dev")
    logits, layers = layer_spread.spreads(model, batch)
    assert logits > 0 and all(spread > 1e-4 for spread in layers[1:])

    name = config["target_modules"][-1]
    layer = model.base_model.model.get_submodule(name)
    inputs = []
    hook = layer.register_forward_hook(lambda m, i, o: inputs.append(i[0][:, 0]))
    share = layer_spread.adapter_shares(model, batch, [name])[name]
    hook.remove()
    with torch.no_grad():
        x = inputs[0]
        update = layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]
        expected = (update.norm(dim=1) / layer.base_layer(x).norm(dim=1)).mean().item()
    assert share > 0 and share == pytest.approx(expected, rel=1e-4)

    with torch.no_grad():
        model.base_model.model.bert.encoder.layer[-1].output.LayerNorm.weight.zero_()
    logits, after = layer_spread.spreads(model, batch)
    assert after[:-1] == layers[:-1] and after[-1] == 0 and logits == 0

    layer_spread.main([str(runs_root / "sst2-lora-1"), "--data_dir", data, "--examples", "16"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("sst2-lora-1: logits' spread ") and len(lines) == 3
    assert len(lines[1].split(": ")[1].split(", ")) == len(layers)  # embeddings and each layer


def test_layer_spread_reads_adalora_and_four_bit_runs_as_trained(runs_root, tiny_model, tmp_path):
    """AdaLoRA adds its update to the frozen output in place: its shares are still the update's; a
    QLoRA run's model is rebuilt on a 4-bit base, as it trained."""
    import bitsandbytes as bnb

    import layer_spread
    from conftest import QUICK, run_task
    from fixtures.glue import write_sst2_folder
    from trained import trained_model

    data = str(write_sst2_folder(tmp_path / "glue"))
    config, model, batch = trained_model(runs_root / "sst2-adalora-1", data, 8, split="dev")
    assert max(layer_spread.adapter_shares(model, batch, config["target_modules"]).values()) > 0
    assert run_task("sst2", "--data_dir", data, "--model_name_or_path", tiny_model, "--method", "qlora",
                    "--max_steps", "2", "--max_eval_samples", "8", "--output_dir", str(tmp_path / "q"), *QUICK) == 0
    _, model, _ = trained_model(tmp_path / "q", data, 8, split="dev")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def test_layer_spread_refuses_too_few_or_too_many_sentences(runs_root, tmp_path, capsys):
    import layer_spread
    from fixtures.glue import write_sst2_folder

    data = str(write_sst2_folder(tmp_path / "glue"))  # 64 dev sentences
    run = str(runs_root / "sst2-lora-1")
    line = main_fails_cleanly(capsys, layer_spread.main, [run, "--data_dir", data, "--examples", "1"], one_line=True)
    assert line == "error: --examples must be at least 2, not 1"
    line = main_fails_cleanly(capsys, layer_spread.main, [run, "--data_dir", data, "--examples", "65"], one_line=True)
    assert line == f"error: --examples 65 is more than the 64 dev sentences of {tmp_path / 'glue' / 'SST-2'}: " \
                   "give --examples 64 or fewer"
    unfinished = fake_run(tmp_path / "unfinished", **{"adapter/adapter_model.safetensors": ""})
    line = main_fails_cleanly(capsys, layer_spread.main, [str(unfinished), "--data_dir", data], one_line=True)
    assert line == f"error: {unfinished} has not finished (no metrics.json): its adapter/ may be from another run; " \
                   "finish it with --resume_from_checkpoint auto"
    summaries = fake_run(tmp_path / "sum", **{"adapter/adapter_model.safetensors": "", "metrics.json": "{}"})
    (summaries / "config.json").write_text(json.dumps({"task": "cnndailymail", "method": "lora"}))
    line = main_fails_cleanly(capsys, layer_spread.main, [str(summaries), "--data_dir", data], one_line=True)
    assert line == f"error: {summaries} is a cnndailymail run: this tool reads GLUE (classification) runs"


@pytest.mark.parametrize("damage, message", [
    (b"", " holds no predictions: the file is damaged"),
    (b"\xff\xfe\x80", " is not UTF-8 text: the file is damaged"),
    (b"split\tindex\tlabel\tprediction\nvalidation\t0\t1\n", ": line 2 (after comments) is not split, index, "
                                                          "label, prediction: the file is damaged"),
])
def test_a_damaged_predictions_file_is_named_in_one_line(runs_root, tmp_path, capsys, damage, message):
    folder = tmp_path / "runs"
    for name in ("sst2-lora-1", "sst2-adalora-1"):
        shutil.copytree(runs_root / name, folder / name)
    (folder / "sst2-adalora-1" / "predictions.tsv").write_bytes(damage)
    line = main_fails_cleanly(capsys, summarize_runs.main, [str(folder), "--pair-all"], one_line=True)
    assert line == f"error: {folder / 'sst2-adalora-1' / 'predictions.tsv'}{message}"


def test_a_history_that_is_not_utf8_is_named_in_one_line(runs_root, tmp_path, capsys):
    import epochs_to_reach

    run = tmp_path / "run"
    shutil.copytree(runs_root / "sst2-lora-1", run)
    (run / "history.jsonl").write_bytes(b"\xff\xfe\x80")
    line = main_fails_cleanly(capsys, epochs_to_reach.main, [str(run), "--reference", str(runs_root / "sst2-lora-2")],
                              one_line=True)
    assert line == f"error: {run / 'history.jsonl'} is not UTF-8 text: the file is damaged"


def refuse_to_read(monkeypatch, name: str, folder: Path) -> None:
    """Reading a file called ``name`` below ``folder`` fails as it does for a user without the permission (the
    tests run as root, whom a chmod does not stop)."""
    read_text = Path.read_text

    def guarded(path, *args, **kwargs):
        if path.name == name and folder in path.parents:
            raise PermissionError(13, "Permission denied", str(path))
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", guarded)


@pytest.mark.parametrize("name", ["predictions.tsv", "history.jsonl", "config.json"])
def test_a_run_file_that_cannot_be_read_is_named_in_one_line(runs_root, tmp_path, capsys, monkeypatch, name):
    import epochs_to_reach

    run = shutil.copytree(runs_root / "sst2-lora-1", tmp_path / "run")
    refuse_to_read(monkeypatch, name, run)
    argv = [str(run), "--reference", str(runs_root / "sst2-lora-1")]
    if name == "predictions.tsv":
        shutil.copytree(runs_root / "sst2-adalora-1", tmp_path / "other")
        main, argv = summarize_runs.main, [str(tmp_path), "--pair-all"]
    else:
        main = epochs_to_reach.main
    line = main_fails_cleanly(capsys, main, argv, one_line=True)
    assert line == f"error: {run / name} cannot be read (Permission denied): make it readable, or leave the run out"


def test_a_metrics_json_that_cannot_be_read_leaves_its_run_out_of_the_table(runs_root, tmp_path, capsys,
                                                                           monkeypatch):
    root = copy_runs(runs_root, tmp_path / "runs")
    refuse_to_read(monkeypatch, "metrics.json", root)
    summarize_runs.main([str(root)])
    out = capsys.readouterr().out
    assert "metrics.json cannot be read (Permission denied)" in out


def test_an_infinite_score_in_a_history_is_named_not_taken_as_the_best(runs_root, tmp_path, capsys):
    import epochs_to_reach

    run = tmp_path / "run"
    shutil.copytree(runs_root / "sst2-lora-1", run)
    records = read_jsonl(run / "history.jsonl")
    damaged_at = next(r for r in records if "eval_accuracy" in r)
    damaged_at["eval_accuracy"] = float("inf")
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))  # json writes Infinity
    line = main_fails_cleanly(capsys, epochs_to_reach.main, [str(run), "--reference", str(runs_root / "sst2-lora-2")],
                              one_line=True)
    assert line == (f"error: {run / 'history.jsonl'} has an infinite eval_accuracy at step {damaged_at['step']}: "
                    "the file is damaged")


# --- damaged run files, unlike runs set against each other, numbers the tools would misuse -------

def damaged(runs_root: Path, folder: Path, run: str, **files: str) -> Path:
    """A copy of ``run`` in ``folder`` with ``files`` (name -> text) written over its own."""
    copy = shutil.copytree(runs_root / run, folder / f"{run}-damaged")
    for name, text in files.items():
        (copy / name).write_text(text)
    return copy


def test_a_config_json_that_is_no_object_or_names_no_method_is_named_by_every_tool(runs_root, tmp_path, capsys):
    import compare_ranks
    import diagnostics_table
    import epochs_to_reach

    run = str(damaged(runs_root, tmp_path, "sst2-adalora-1", **{"config.json": "[]"}))
    for main, argv in ((visualize_rank.main, [run]), (plot_training.main, [run, "--out", str(tmp_path / "c.png")]),
                       (compare_ranks.main, [run, "--against", run]), (epochs_to_reach.main, [run, "--reference", run]),
                       (diagnostics_table.main, [run]), (memory_calculation.main, [run])):
        assert main_fails_cleanly(capsys, main, argv, one_line=True) == (
            f"error: {run}/config.json is damaged (a JSON list, not an object): train the run again or leave it out")
    config = json.loads((runs_root / "sst2-adalora-1" / "config.json").read_text())
    for change, why in ((lambda c: c.pop("method"), "it names no method"),
                        (lambda c: c["arguments"].update(training=5), "its arguments.training is not an object")):
        damaged_config = json.loads(json.dumps(config))
        change(damaged_config)
        (Path(run) / "config.json").write_text(json.dumps(damaged_config))
        assert main_fails_cleanly(capsys, visualize_rank.main, [run], one_line=True) == (
            f"error: {run}/config.json is damaged ({why}): train the run again or leave it out")


def test_a_damaged_metrics_json_is_named_and_a_folder_leaves_its_run_out(runs_root, tmp_path, capsys):
    import epochs_to_reach

    root = copy_runs(runs_root, tmp_path / "runs")
    metrics = json.loads((runs_root / "sst2-lora-1" / "metrics.json").read_text())
    config = json.loads((runs_root / "sst2-lora-1" / "config.json").read_text())
    listed = damaged(runs_root, root, "sst2-lora-1", **{"metrics.json": "[1, 2]"})
    line = main_fails_cleanly(capsys, epochs_to_reach.main, [str(listed), "--reference", str(root / "sst2-lora-2")],
                              one_line=True)
    assert line == f"error: {listed}/metrics.json is damaged (a JSON list, not an object): train the run again or " \
                   "leave it out"
    shutil.copytree(runs_root / "sst2-lora-2", root / "no-headline")
    (root / "no-headline" / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items()
                                                                    if k != "eval_accuracy"}))
    shutil.copytree(runs_root / "sst2-lora-2", root / "no-method")
    (root / "no-method" / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "method"}))
    tables = summarize_runs.summarize(root, resamples=20)
    apart = {Path(r["run"]).name: r["why"] for r in tables["apart"]}
    assert apart == {"sst2-lora-1-damaged": "metrics.json is damaged (a JSON list, not an object)",
                     "no-headline": "metrics.json is damaged (no eval_accuracy)",
                     "no-method": "config.json is damaged (it names no method)"}
    assert [(r["method"], r["seeds"]) for r in tables["results"]] == [("adalora", 2), ("lora", 2)]


def test_a_record_of_ranks_or_history_that_is_not_what_training_writes_is_named(runs_root, tmp_path, capsys):
    import compare_ranks
    import epochs_to_reach

    lines = (runs_root / "sst2-adalora-1" / "ranks.jsonl").read_text().splitlines()
    run = damaged(runs_root, tmp_path, "sst2-adalora-1", **{"ranks.jsonl": "\n".join(
        ['{"step": "x", "ranks": 5}', *lines[1:]]) + "\n"})
    expected = (f"error: {run}/ranks.jsonl:1 is not a rank record (step, event, budget, total_rank, and ranks by "
                "layer and module): the file is damaged")
    assert main_fails_cleanly(capsys, visualize_rank.main, [str(run)], one_line=True) == expected
    twin = shutil.copytree(runs_root / "sst2-adalora-1", tmp_path / "twin")  # intact, the same seed
    assert main_fails_cleanly(capsys, compare_ranks.main, [str(run), "--against", str(twin)], one_line=True) == expected
    reference = str(runs_root / "sst2-lora-2")
    for first, why in (("[1, 2]", "is not a JSON object"), ('"str"', "is not a JSON object"),
                       ('{"step": "abc", "loss": "x"}', "is not a history record (the step, then numbers)")):
        (run / "history.jsonl").write_text(first + "\n" + (runs_root / "sst2-lora-1" / "history.jsonl").read_text())
        for main, argv in ((epochs_to_reach.main, [str(run), "--reference", reference]),
                           (plot_training.main, [str(run), "--out", str(tmp_path / "curves.png")])):
            line = main_fails_cleanly(capsys, main, argv, one_line=True)
            assert line == f"error: {run}/history.jsonl:1 {why}: the file is damaged"


def test_the_report_leaves_a_run_it_cannot_draw_out_of_its_figures_and_says_so(runs_root, tmp_path, capsys):
    root = copy_runs(runs_root, tmp_path / "runs")
    broken = damaged(runs_root, root, "sst2-adalora-2", **{"ranks.jsonl": '{"step": "x", "ranks": 5}\n'})
    shutil.rmtree(root / "sst2-adalora-2")  # the damaged copy stands in for its seed (a seed counts once)
    out = report.main([str(root), "--out", str(tmp_path / "report.html")])
    note = (f"{broken} is left out of the figures: {broken}/ranks.jsonl:1 is not a rank record (step, event, "
            "budget, total_rank, and ranks by layer and module): the file is damaged")
    assert capsys.readouterr().err.splitlines() == [f"note: {note}"]
    page = out.read_text()
    assert html.escape(note) in page and page.count("data:image/png;base64,") == 2  # the others are drawn


@pytest.mark.parametrize("main, count", [(summarize_runs.main, "-5"), (summarize_runs.main, "1"),
                                         (report.main, "0"), (report.main, "999")],
                         ids=["summarize_runs -5", "summarize_runs 1", "report 0", "report 999"])
def test_too_few_bootstrap_resamples_are_refused(runs_root, tmp_path, capsys, main, count):
    out = tmp_path / "report.html"
    argv = [str(runs_root), "--bootstrap", count] + (["--out", str(out)] if main is report.main else [])
    assert main_fails_cleanly(capsys, main, argv, one_line=True) == (
        f"error: --bootstrap must be at least 1000, not {count}: the 95% interval's ends are its 2.5% tails, which "
        "fewer resamples place by chance (default: 2000)")
    assert not out.exists()


def test_runs_of_another_task_demo_data_or_dev_set_are_not_compared(runs_root, tmp_path, capsys):
    import compare_ranks
    import epochs_to_reach

    def variant(run: str, name: str, **changes) -> str:
        config = json.loads((runs_root / run / "config.json").read_text())
        copy = damaged(runs_root, tmp_path / name, run, **{"config.json": json.dumps({**config, **changes})})
        return str(copy)

    lora, adalora = str(runs_root / "sst2-lora-1"), str(runs_root / "sst2-adalora-1")
    rte = variant("sst2-lora-2", "rte", task="rte")  # RTE scores accuracy too: only the task tells them apart
    line = main_fails_cleanly(capsys, epochs_to_reach.main, [lora, "--reference", rte], one_line=True)
    assert line == f"error: {lora} is a sst2 run and {rte} a rte run: runs of different tasks cannot be compared; " \
                   "give runs of one task"
    demo = str(runs_root / "demo")
    line = main_fails_cleanly(capsys, epochs_to_reach.main, [lora, "--reference", demo], one_line=True)
    assert line == f"error: {demo} trained on synthetic demo data (--demo), {lora} on real data: their numbers " \
                   "cannot be compared; give real-data runs only (or demo runs only)"
    fewer = variant("sst2-lora-2", "fewer", dev_examples={"validation": 32})
    line = main_fails_cleanly(capsys, epochs_to_reach.main, [lora, "--reference", fewer], one_line=True)
    assert line == f"error: {lora} was scored on dev examples {{'validation': 64}} and {fewer} on " \
                   "{'validation': 32}: a score on other examples is no target; give runs evaluated on the same dev set"
    cola = variant("sst2-adalora-1", "cola", task="cola")
    line = main_fails_cleanly(capsys, compare_ranks.main, [adalora, "--against", cola], one_line=True)
    assert line == f"error: {adalora} is a sst2 run and {cola} a cola run: runs of different tasks cannot be " \
                   "compared; give runs of one task"
    synthetic = variant("sst2-adalora-1", "synthetic", synthetic_data=True)
    assert "trained on synthetic demo data (--demo)" in main_fails_cleanly(
        capsys, compare_ranks.main, [adalora, "--against", synthetic], one_line=True)


def test_the_memory_plan_names_a_config_file_that_is_not_an_object(tmp_path, capsys):
    listed = tmp_path / "l.json"
    listed.write_text("[1, 2]")
    line = main_fails_cleanly(capsys, memory_calculation.main, ["--plan", "--model_name_or_path", str(listed)], True)
    assert line == f"error: cannot read a model config from '{listed}' (a JSON list or value, not a config's object): " \
                   "give a model folder, a config.json, or a hub name reachable from here"


def test_the_memory_plan_refuses_an_initial_rank_training_would_refuse(capsys):
    line = main_fails_cleanly(capsys, memory_calculation.main, ["--plan", "--init_r", "2"], one_line=True)
    assert line == ("error: AdaLoRA: --target_r 2 equals --init_r 2: AdaLoRA needs target_r below init_r (it prunes "
                    "from one to the other), so use --init_r 3 or a smaller --target_r; a fixed rank is --method lora "
                    "(here the target rank is --budget small's, 2: change --init_r or --budget)")
    line = main_fails_cleanly(capsys, memory_calculation.main, ["--plan", "--init_r", "100000"], one_line=True)
    assert line == ("error: --init_r 100000 is more than any adapted matrix of this model can hold (rank 384, its "
                    "narrowest width): use --init_r 384 or less")
    default = {row["method"]: row for row in memory_calculation.main(["--plan", "--csv"])}
    capsys.readouterr()
    rows = {row["method"]: row for row in memory_calculation.main(["--plan", "--init_r", "10", "--csv"])}
    assert capsys.readouterr().err == (
        "note: increlora is left out of the plan (training would refuse it: --init_r 10 leaves no rank to grow under "
        "--budget small (LoRA r=2 on average): use --init_r 1 or less)\n")
    assert set(rows) == set(default) - {"increlora"}
    assert rows["sora"] == default["sora"]  # SoRA's largest rank is its own flag, not --init_r
    def count(row, key):
        return int(row[key].replace(",", ""))

    # AdaLoRA trains P, Q and E at its initial rank (default 3 at the small budget), and saves its budget's
    training = "adapter params (training)"
    assert count(rows["adalora"], training) == count(default["adalora"], training) * 10 // 3
    assert rows["adalora"]["adapter params (saved)"] == default["adalora"]["adapter params (saved)"]


def test_steps_without_over_time_and_an_out_path_under_a_file_are_refused(runs_root, tmp_path, capsys):
    run = str(runs_root / "sst2-adalora-1")
    line = main_fails_cleanly(capsys, visualize_rank.main, [run, "--steps", "3"], one_line=True)
    assert line == "error: --steps 3 sets the heatmaps of the --over-time strip: add --over-time, or drop --steps"
    (tmp_path / "file").write_text("kept")
    for main, out in ((visualize_rank.main, tmp_path / "file" / "ranks.png"),
                      (report.main, tmp_path / "file" / "report.html")):
        line = main_fails_cleanly(capsys, main, [run if main is visualize_rank.main else str(runs_root),
                                                 "--out", str(out)], one_line=True)
        assert line == f"error: cannot write {out}: {tmp_path / 'file'} is a file, not a folder; give --out a path " \
                       "in a folder you can write to"
    assert (tmp_path / "file").read_text() == "kept"


def test_pair_all_marks_a_pair_of_other_dev_examples_and_pairs_the_rest(runs_root, tmp_path):
    root = copy_runs(runs_root, tmp_path)
    for seed in "12":  # AdaLoRA "ran" on another dev set: the same indices, other labels
        run = root / f"sst2-adalora-{seed}"
        lines = (run / "predictions.tsv").read_text().splitlines()
        flipped = [line if line.startswith(("#", "split\t")) else
                   "\t".join([*line.split("\t")[:2], "1" if line.split("\t")[2] == "0" else "0", line.split("\t")[3]])
                   for line in lines]
        (run / "predictions.tsv").write_text("\n".join(flipped) + "\n")
    with pytest.raises(run_reader.AnalysisError, match="not evaluated on the same data"):  # same settings: damage
        summarize_runs.summarize(root, resamples=20)
    for seed in "12":
        path = root / f"sst2-adalora-{seed}" / "config.json"
        config = json.loads(path.read_text())
        config["arguments"]["training"]["learning_rate"] = 8e-4
        path.write_text(json.dumps(config))
    shutil.copytree(root / "sst2-lora-1", root / "sst2-lora-slow-1")  # a pairable third setting
    config = json.loads((root / "sst2-lora-slow-1" / "config.json").read_text())
    config["arguments"]["training"]["learning_rate"] = 1e-2
    (root / "sst2-lora-slow-1" / "config.json").write_text(json.dumps(config))
    rows = summarize_runs.summarize(root, resamples=20, pair_all=True)["comparisons"]
    unpaired = [row for row in rows if row["excludes 0"] == "not paired: other dev examples"]
    assert len(unpaired) == 2 and all(row["difference"] == "-" and "adalora" in row["comparison"] for row in unpaired)
    (paired,) = [row for row in rows if row not in unpaired]
    assert paired["examples"] > 0 and paired["difference"] != "-"


def _edit_json(path: Path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def assert_left_out_by_name(runs_root: Path, tmp_path: Path, file: str, change, message: str) -> None:
    """The table over a copy of the runs, one run's ``file`` changed by ``change``, lists that run apart with
    ``message`` in its reason and counts the rest."""
    root = copy_runs(runs_root, tmp_path)
    _edit_json(root / "sst2-adalora-1" / file, change)
    tables = summarize_runs.summarize(root, resamples=1000)
    assert [row["seeds"] for row in tables["results"] if row["method"] == "adalora"] == [1]
    (left,) = [row for row in tables["apart"] if "sst2-adalora-1" in row["run"]]
    assert message in left["why"]


@pytest.mark.parametrize("file, change, message", [
    ("config.json", lambda c: c.update(format_version=0), "config.json is damaged (its format_version 0 is no version"),
    ("config.json", lambda c: c.update(budget=2), "config.json is damaged (its budget is not a name)"),
    ("config.json", lambda c: c.update(task_metrics="accuracy"), "(its task_metrics is not a list of names)"),
    ("metrics.json", lambda m: m.update(adapter_mb="x"), "metrics.json is damaged (its adapter_mb is not a finite number)"),
    ("metrics.json", lambda m: m.update(eval_accuracy=float("nan")), "(its eval_accuracy is not a finite number)"),
    ("metrics.json", lambda m: m.update(non_finite=1), "metrics.json is damaged (its non_finite is not a list of names)"),
], ids=["format-0", "budget-number", "task-metrics-text", "mb-word", "accuracy-nan", "non-finite-number"])
def test_a_run_file_entry_of_the_wrong_type_leaves_the_run_out_by_name(runs_root, tmp_path, file, change, message):
    """Entries the tables sort, average or print, of a type training never writes: the run is listed apart
    as damaged (these ended in a KeyError or TypeError, or printed nan as a score)."""
    assert_left_out_by_name(runs_root, tmp_path, file, change, message)


@pytest.mark.parametrize("damage, message", [
    (lambda run: (run / "predictions.tsv").unlink(), "has no predictions.tsv (nor predictions.jsonl): copy it"),
    (lambda run: (run / "predictions.tsv").write_text((run / "predictions.tsv").read_text()
                                                      + (run / "predictions.tsv").read_text().splitlines()[-1] + "\n"),
     "repeats validation example"),
], ids=["missing", "repeated-example"])
def test_predictions_missing_or_repeating_an_example_are_named(runs_root, tmp_path, capsys, damage, message):
    root = copy_runs(runs_root, tmp_path)
    damage(root / "sst2-adalora-1")
    line = main_fails_cleanly(capsys, summarize_runs.main, [str(root)], one_line=True)
    assert str(root / "sst2-adalora-1") in line and message in line


def test_rank_tools_refuse_what_they_cannot_draw_or_compare(runs_root, tmp_path, capsys):
    import compare_ranks
    root = copy_runs(runs_root, tmp_path)
    run = root / "sst2-adalora-1"
    line = main_fails_cleanly(capsys, compare_ranks.main, [str(run), "--against", str(run)], one_line=True)
    assert line == f"error: {run.resolve()} is in both groups: a run compared with itself says nothing; give two " \
                   "different groups of runs"
    held = len([line for line in (run / "ranks.jsonl").read_text().splitlines() if line.strip()])
    line = main_fails_cleanly(capsys, visualize_rank.main, [str(run), "--over-time", "--steps", str(held + 1)], True)
    assert line == f"error: --steps {held + 1} is more than the {held} records of {run}/ranks.jsonl: give --steps " \
                   f"{held} or fewer"
    twin = tmp_path / "other" / run.name
    shutil.copytree(run, twin)
    out = tmp_path / "strip.png"
    line = main_fails_cleanly(capsys, visualize_rank.main, [str(run), str(twin), "--over-time", "--out", str(out)], True)
    assert "two runs are both named sst2-adalora-1: --out would give them one file" in line and not list(tmp_path.glob("strip*"))
    (run / "ranks.jsonl").write_text('{"step": 0, "event": "initial", "budget": 1, "total_rank": 1, "ranks": {}}\n')
    line = main_fails_cleanly(capsys, visualize_rank.main, [str(run)], one_line=True)
    assert f"{run}/ranks.jsonl:1 is not a rank record" in line


def test_counts_with_no_use_that_large_are_refused(runs_root, capsys):
    line = main_fails_cleanly(capsys, summarize_runs.main, [str(runs_root), "--bootstrap", "100000000000"], True)
    assert line.startswith("error: --bootstrap must be at most 100000, not 100000000000")
    line = main_fails_cleanly(capsys, memory_calculation.main, ["--plan", "--num_labels", "1000000000"], True)
    assert line.startswith("error: --num_labels 1000000000 is more than 1,000,000")


def test_plot_and_diagnostics_tools_refuse_nothing_to_draw(runs_root, tmp_path, capsys):
    import diagnostics_table
    root = copy_runs(runs_root, tmp_path)
    run = root / "sst2-lora-1"
    (run / "history.jsonl").write_text("")
    line = main_fails_cleanly(capsys, plot_training.main, [str(run), "--out", str(tmp_path / "c.png")], one_line=True)
    assert line.startswith(f"error: {run} has no training history (history.jsonl is missing or holds no record)")
    line = main_fails_cleanly(capsys, plot_training.main, [str(runs_root / "demo"), str(root / "sst2-lora-2"), "--out",
                                                           str(tmp_path / "c.png")], one_line=True)
    assert "trained on synthetic demo data (--demo)" in line and not (tmp_path / "c.png").exists()
    for text, why in (('{"step": 0, "update_norm": [1, 2]}\n', ":1 is not a diagnostics record"),
                      ('{"update_norm": {"query": 1.0}}\n', ":1 is not a diagnostics record"),
                      ('{"step": 0, "orth_reg_weighted": "x"}\n', ":1 is not a diagnostics record"),
                      ("", " holds no update-norm record")):
        (run / "diagnostics.jsonl").write_text(text)
        for main, argv in ((diagnostics_table.main, [str(run)]),
                           (plot_training.main, [str(run), "--diagnostics", "--out", str(tmp_path / "d.png")])):
            assert main_fails_cleanly(capsys, main, argv, one_line=True).startswith(f"error: {run}/diagnostics.jsonl{why}")
    adalora = root / "sst2-adalora-1"
    (adalora / "ranks.jsonl").unlink()
    line = main_fails_cleanly(capsys, visualize_rank.main, [str(adalora)], one_line=True)
    assert line == f"error: {adalora} has no ranks.jsonl, which adalora runs write as they allocate their ranks: " \
                   "copy it with the run's other files (the run may have been copied without it)"


@pytest.mark.parametrize("where, change, message", [
    ("ranks", lambda r: r.update(phases={"warm": [1]}), "ranks.jsonl: a record's phases are not named [start, end] steps"),
    ("ranks", lambda r: r.update(phases=[[0, 1]]), "ranks.jsonl: a record's phases are not named [start, end] steps"),
    ("config", lambda c: c["adapter"]["schedule"].update(tinit="x"),
     "config.json is damaged (its schedule's tinit, tfinal or total_step is not a step)"),
], ids=["phase-one-step", "phases-a-list", "tinit-a-word"])
def test_the_rank_strip_names_phases_of_the_wrong_shape(runs_root, tmp_path, capsys, where, change, message):
    root = copy_runs(runs_root, tmp_path)
    run = root / "sst2-adalora-1"
    records = [json.loads(line) for line in (run / "ranks.jsonl").read_text().splitlines() if line.strip()]
    if where == "ranks":
        change(records[0])
    else:  # records written before they carried their phases: the strip reads the config's schedule
        records = [{k: v for k, v in record.items() if k != "phases"} for record in records]
        _edit_json(run / "config.json", change)
    (run / "ranks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    line = main_fails_cleanly(capsys, visualize_rank.main, [str(run), "--over-time"], one_line=True)
    assert message in line


# --- entries of the wrong shape or out of range, and what a tool cannot score or draw: named, never a traceback ---

def _version_1(change):
    """A config.json change that also makes the file version 1 (no format_version), as runs written before
    format versions read: migrated when read."""
    def both(config):
        config.pop("format_version")
        change(config)
    return both


@pytest.mark.parametrize("file, change, message", [
    ("config.json", _version_1(lambda c: c["adapter"].update(schedule=[1, 2])),
     "config.json is damaged (its adapter.schedule is not an object)"),
    ("config.json", _version_1(lambda c: c["adapter"].update(schedule="abc")),
     "config.json is damaged (its adapter.schedule is not an object)"),
    ("config.json", lambda c: c["arguments"]["training"].update(seed=[1]),
     "config.json is damaged (its arguments.training.seed is not a whole number)"),
    ("config.json", lambda c: c["arguments"]["training"].update(seed={"a": 1}),
     "config.json is damaged (its arguments.training.seed is not a whole number)"),
    ("metrics.json", lambda m: m.update(eval_accuracy=7.5),
     "metrics.json is damaged (its eval_accuracy is 7.5: an accuracy or F1 lies in [0, 1])"),
    ("metrics.json", lambda m: m.update(train_seconds=-5),
     "metrics.json is damaged (its train_seconds is -5: a count, time or size is 0 or more, and below 2**53)"),
    ("metrics.json", lambda m: m.update(train_seconds=1e308), "(its train_seconds is 1e+308: a count, time or size"),
    ("metrics.json", lambda m: m.update(trainable_params=10**400), "(its trainable_params is not a finite number)"),
], ids=["v1-schedule-list", "v1-schedule-word", "seed-list", "seed-object", "accuracy-7.5", "seconds-negative",
        "seconds-1e308", "params-past-a-float"])
def test_an_entry_of_the_wrong_shape_or_out_of_range_leaves_the_run_out_by_name(runs_root, tmp_path, file, change,
                                                                                 message):
    """These ended in a TypeError or OverflowError that took every table down, or were taken as results (a
    seed that is a list, an accuracy of 750%, a negative time)."""
    assert_left_out_by_name(runs_root, tmp_path, file, change, message)


def test_a_schedule_or_seed_of_the_wrong_shape_is_named_by_the_rank_tools(runs_root, tmp_path, capsys):
    import compare_ranks

    root = copy_runs(runs_root, tmp_path)
    run = root / "sst2-adalora-1"
    _edit_json(run / "config.json", lambda c: c["arguments"]["training"].update(seed=[1]))
    line = main_fails_cleanly(capsys, compare_ranks.main, [str(run), str(root / "sst2-adalora-2"), "--against",
                                                           str(root / "sst2-lora-1")], one_line=True)
    assert line == f"error: {run}/config.json is damaged (its arguments.training.seed is not a whole number): " \
                   "train the run again or leave it out"
    shutil.rmtree(run)
    shutil.copytree(runs_root / "sst2-adalora-1", run)
    records = [{k: v for k, v in record.items() if k != "phases"} for record in read_jsonl(run / "ranks.jsonl")]
    (run / "ranks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))  # the strip reads the config's
    for schedule in ([1, 2], "abc"):
        _edit_json(run / "config.json", lambda c: c["adapter"].update(schedule=schedule))
        line = main_fails_cleanly(capsys, visualize_rank.main, [str(run), "--over-time", "--out",
                                                                str(tmp_path / "s.png")], one_line=True)
        assert line == f"error: {run}/config.json is damaged (its adapter.schedule is not an object): " \
                       "train the run again or leave it out"


def test_a_seed_scored_on_other_metrics_than_its_setting_is_left_out_by_name(runs_root, tmp_path):
    root = copy_runs(runs_root, tmp_path)
    other = root / "sst2-lora-2"
    _edit_json(other / "config.json", lambda c: c.update(task_metrics=["pearson"]))
    _edit_json(other / "metrics.json", lambda m: m.update(eval_pearson=0.5))
    tables = summarize_runs.summarize(root, resamples=1000)
    assert [row["seeds"] for row in tables["results"] if row["method"] == "lora"] == [1]
    (left,) = [row for row in tables["apart"] if row["run"] == str(other)]
    assert left["why"] == (f"scored on eval_pearson, unlike {root / 'sst2-lora-1'} of its setting (eval_accuracy), "
                           "which the table counts: its config.json's task_metrics differ; summarize it apart")


@pytest.mark.parametrize("metric, damage, message", [
    ("pearson", "predictions.tsv", "sst2-lora-1/predictions.tsv is damaged ('abc' is no number, and pearson "
                                   "correlates numbers)"),
    ("foo", None, "config.json is damaged (its task_metrics names foo, a metric these tools cannot score)"),
    ("rouge1", None, "config.json is damaged (the run is scored on rouge1, but it wrote predictions.tsv)"),
], ids=["word-for-a-correlation", "unknown-metric", "rouge-on-a-tsv"])
def test_predictions_the_metric_cannot_score_are_named_in_one_line(runs_root, tmp_path, capsys, metric, damage,
                                                                     message):
    """Every seed of both methods scored on ``metric``: the paired bootstrap ended in a ValueError, KeyError or
    TypeError."""
    root = copy_runs(runs_root, tmp_path)
    for run in root.iterdir():
        _edit_json(run / "config.json", lambda c: c.update(task_metrics=[metric]))
        _edit_json(run / "metrics.json", lambda m: m.update({f"eval_{metric}": 0.5}))
    if damage:
        lines = (root / "sst2-lora-1" / damage).read_text().splitlines()
        lines[-1] = "\t".join([*lines[-1].split("\t")[:3], "abc"])
        (root / "sst2-lora-1" / damage).write_text("\n".join(lines) + "\n")
    line = main_fails_cleanly(capsys, summarize_runs.main, [str(root)], one_line=True)
    assert line.startswith("error: ") and message in line and line.endswith(": train the run again or leave it out")


def test_huge_figures_in_diagnostics_and_history_are_drawn_or_named(runs_root, tmp_path, capsys):
    import diagnostics_table

    root = copy_runs(runs_root, tmp_path / "runs")
    run = root / "sst2-lora-1"
    (run / "diagnostics.jsonl").write_text('{"step": 0, "update_norm": {"query": 1e200, "key": 1e200}}\n')
    (row,) = diagnostics_table.main([str(run), "--steps", "0"])  # its square overflowed a float
    assert row["norm dW @0"] == "1.41e+200"
    assert plot_training.main([str(run), "--diagnostics", "--out", str(tmp_path / "d.png")]).is_file()
    (run / "diagnostics.jsonl").write_text('{"step": 0, "update_norm": {"query": 1.0}, "lora_E_abs_mean": {}}\n')
    line = main_fails_cleanly(capsys, plot_training.main, [str(run), "--diagnostics", "--out", str(tmp_path / "e.png")],
                              one_line=True)  # the mean over no kind divided by zero
    assert line == f"error: {run}/diagnostics.jsonl:1 is not a diagnostics record (the step, then figures by module " \
                   "kind): the file is damaged"
    history = (run / "history.jsonl").read_text()
    (run / "history.jsonl").write_text(f'{{"step": {10**400}, "loss": 0.5}}\n' + history)
    why = f"{run}/history.jsonl:1 is not a history record (the step, then numbers): the file is damaged"
    line = main_fails_cleanly(capsys, plot_training.main, [str(run), "--out", str(tmp_path / "c.png")], one_line=True)
    assert line == f"error: {why}"
    report.main([str(root), "--out", str(tmp_path / "report.html")])
    assert capsys.readouterr().err.splitlines() == [f"note: {run} is left out of the figures: {why}"]


def test_a_run_measured_against_itself_or_written_to_a_device_is_refused(runs_root, tmp_path, capsys):
    import epochs_to_reach

    run = str(runs_root / "sst2-lora-1")
    line = main_fails_cleanly(capsys, epochs_to_reach.main, [run, "--reference", run], one_line=True)
    assert line == ("error: every run is one of the references: a run measured against its own final score says "
                    "nothing; give runs besides the references (LoRA at the same budget as --reference, say)")
    if not Path("/dev/full").is_char_device():
        pytest.skip("no /dev/full here")
    line = main_fails_cleanly(capsys, plot_training.main, [run, "--out", "/dev/full/x.png"], one_line=True)
    assert line == "error: cannot write /dev/full/x.png: /dev/full is a device, not a folder; give --out a path in " \
                   "a folder you can write to"


@pytest.mark.parametrize("config, why", [
    ({"model_type": "bert", "hidden_size": "abc"}, "cannot read a model config from '{}' (Validation error for field "
     "'hidden_size': TypeError: Field 'hidden_size' expected int, got str (value: 'abc')): give a model folder"),
    ({"model_type": "bert", "hidden_size": 10, "num_attention_heads": 3}, "the model config '{}' builds no model "
     "(The hidden size (10) is not a multiple of the number of attention heads (3)): give a config whose sizes"),
    ({"model_type": "bert", "hidden_size": -8}, "the model config '{}' builds no model (Trying to create tensor with "
     "negative dimension -8"),
], ids=["width-a-word", "heads-do-not-divide", "negative-width"])
def test_the_memory_plan_names_a_config_that_builds_no_model(tmp_path, capsys, config, why):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    line = main_fails_cleanly(capsys, memory_calculation.main, ["--model_name_or_path", str(path)], one_line=True)
    assert line.startswith(f"error: {why.format(path)}")
