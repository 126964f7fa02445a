"""The run directory's documents: which files a new run replaces, and how analysis reads
config.json files of older format versions."""

from __future__ import annotations

import json

import pytest
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
