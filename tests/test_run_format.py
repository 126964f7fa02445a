"""The run directory's documents: which files a new run replaces, and how analysis reads
config.json and metrics.json files of older format versions."""

from __future__ import annotations

import json
import shutil

import pytest
import summarize_runs
from run_format import FORMAT_VERSION, migrate_config
from run_reader import AnalysisError, find_runs, load_run

from adarank.errors import UsageError
from adarank.run.directory import RunDirectory
from fixtures.paths import RESULTS



@pytest.mark.parametrize("predictions", ["predictions.tsv", "predictions.jsonl"])
def test_a_finished_run_is_kept_whatever_its_predictions_file(tmp_path, predictions):
    run = RunDirectory(tmp_path)
    for name in ("config.json", "metrics.json", predictions):
        (tmp_path / name).write_text("{}\n")
    with pytest.raises(UsageError, match="already holds a finished run"):
        run.prepare(overwrite=False)
    assert (tmp_path / predictions).is_file()


@pytest.mark.parametrize("predictions", ["predictions.tsv", "predictions.jsonl"])
def test_a_new_run_leaves_no_predictions_of_the_previous_one(tmp_path, predictions):
    """A summarization run writes predictions.jsonl, a GLUE run predictions.tsv: either one of an
    overwritten (or never finished) run must not stay beside the new run's config.json."""
    for name in ("config.json", "metrics.json", predictions):
        (tmp_path / name).write_text("{}\n")
    RunDirectory(tmp_path).prepare(overwrite=True)
    assert not (tmp_path / predictions).exists() and not (tmp_path / "config.json").exists()


def test_every_committed_run_reads_in_todays_format():
    runs = find_runs(RESULTS)
    assert len(runs) >= 20
    for run in runs:
        assert run.config["format_version"] == FORMAT_VERSION
        assert "total_steps" not in run.config


def test_version_1_adalora_configs_gain_what_version_2_writes():
    old = {"task": "cola", "total_steps": 6700, "adapter": {
        "init_r": 3, "target_r": 2, "schedule": {"tinit": 800, "paper": {"tinit": 800}}}}
    new = migrate_config(old)
    assert new["recipe"] == "paper" and new["total_step"] == 6700 and new["format_version"] == FORMAT_VERSION
    assert new["adapter"]["init"] == "paper" and new["adapter"]["compared_with_lora_r"] == 2
    assert new["adapter"]["schedule"] == {"tinit": 800, "published": {"tinit": 800}, "recipe": "paper"}
    assert old["adapter"]["schedule"] == {"tinit": 800, "paper": {"tinit": 800}}  # the input is not changed
    assert migrate_config(new) == new


def test_a_config_from_a_newer_version_is_refused_by_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"task": "cola", "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(AnalysisError, match=f"format_version {FORMAT_VERSION + 1}"):
        load_run(tmp_path)


def test_training_writes_the_version_the_reader_reads(runs_root):
    from adarank.run.directory import FORMAT_VERSION as WRITTEN

    assert WRITTEN == FORMAT_VERSION
    for name in ("config.json", "metrics.json"):
        assert json.loads((runs_root / "sst2-lora-1" / name).read_text())["format_version"] == FORMAT_VERSION
    metrics = json.loads((runs_root / "sst2-lora-1" / "metrics.json").read_text())
    # LoRA switches no direction off: its live figures are what it holds, written like every method's.
    assert metrics["average_live_adapter_params"] == metrics["average_adapter_params"] == metrics["adapter_params"]
    assert metrics["final_live_adapter_params"] == metrics["adapter_params"]


# --- metrics.json before version 3: AdaLoRA averaged what it held, SoRA what was live ---------------

def version_2_run(runs_root, path, method: str, config: dict | None = None, **metrics):
    """A copy of a tiny LoRA run as a version 2 run of ``method`` whose metrics.json holds ``metrics``
    (the figures version 3 added taken out), and whose config.json holds ``config`` besides."""
    shutil.copytree(runs_root / "sst2-lora-1", path)
    old_config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**old_config, **(config or {}), "method": method, "format_version": 2}))
    old = json.loads((path / "metrics.json").read_text())
    for key in ("average_live_adapter_params", "final_live_adapter_params"):
        old.pop(key)
    (path / "metrics.json").write_text(json.dumps({**old, **metrics, "format_version": 2}))
    return path


def sora_v2(runs_root, path):
    """Three of 36 directions off at the end: 33 x 32 A and B saved, 36 x 32 at the start, 36 gates."""
    return version_2_run(runs_root, path, "sora", {"parameters": {"adapter_params": 1152}},
                         adapter_params=1056, average_adapter_params=1120.25, final_adapter_params=1056,
                         initial_total_rank=36, final_total_rank=33)


def test_a_version_2_sora_run_reads_as_held_and_live(runs_root, tmp_path):
    metrics = load_run(sora_v2(runs_root, tmp_path / "sora")).metrics
    assert metrics["average_adapter_params"] == 1152 + 36  # A and B at r_max, and the gates: held throughout
    assert metrics["average_live_adapter_params"] == 1120.25  # what version 2 called its average
    assert metrics["final_live_adapter_params"] == 1056 + 36 and metrics["format_version"] == FORMAT_VERSION


def test_a_version_2_adalora_run_has_no_live_figure_and_other_methods_live_as_held(runs_root, tmp_path):
    adalora = load_run(version_2_run(runs_root, tmp_path / "adalora", "adalora", average_adapter_params=1300)).metrics
    assert adalora["average_adapter_params"] == 1300  # what it held, masked triplets included
    assert "average_live_adapter_params" not in adalora and "final_live_adapter_params" not in adalora
    lora = load_run(version_2_run(runs_root, tmp_path / "lora", "lora")).metrics
    assert lora["average_live_adapter_params"] == lora["average_adapter_params"] == lora["adapter_params"]
    assert lora["final_live_adapter_params"] == lora["adapter_params"]


def test_the_results_table_sets_held_beside_live_and_guesses_no_unrecorded_figure(runs_root, tmp_path):
    root = tmp_path / "runs"
    sora_v2(runs_root, root / "sora")
    version_2_run(runs_root, root / "adalora", "adalora", average_adapter_params=1300)
    shutil.copytree(runs_root / "sst2-lora-1", root / "lora")  # written today
    rows = {row["method"]: row for row in summarize_runs.summarize(root, resamples=200)["results"]}
    assert (rows["sora"]["avg adapter params"], rows["sora"]["avg live params"]) == ("1,188", "1,120")
    assert (rows["adalora"]["avg adapter params"], rows["adalora"]["avg live params"]) == ("1,300", "-")
    assert rows["lora"]["avg live params"] == rows["lora"]["avg adapter params"]
    shutil.rmtree(root / "sora")
    shutil.rmtree(root / "adalora")
    (row,) = summarize_runs.summarize(root, resamples=200)["results"]
    assert "avg live params" not in row  # no method switched a direction off: no column repeating the last
