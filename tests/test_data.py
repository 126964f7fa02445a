import json
from collections import Counter

import numpy as np
import pytest

from adarank.errors import UsageError
from adarank.tasks.glue import GLUE_TASKS as TASKS
from adarank.tasks.glue.data import load_glue, read_glue_tsv
from adarank.tasks.glue.demo import make_demo_split
from adarank.tasks.glue.metrics import glue_metrics
from conftest import run_task
from fixtures.glue import write_glue_task


def test_reads_the_real_glue_files(glue_dir):
    cola = load_glue(TASKS["cola"], str(glue_dir))
    assert len(cola.train) == 8551 and len(cola.dev["validation"]) == 1043
    assert Counter(cola.dev["validation"]["label"]) == {1: 721, 0: 322}
    sst2 = load_glue(TASKS["sst2"], str(glue_dir))
    assert len(sst2.train) == 67349 and Counter(sst2.dev["validation"]["label"]) == {0: 428, 1: 444}
    rte = load_glue(TASKS["rte"], str(glue_dir / "RTE"))  # the task folder itself works too
    assert len(rte.train) == 2490 and set(rte.train.column_names) == {"text_a", "text_b", "label", "idx"}
    assert Counter(rte.dev["validation"]["label"]) == {0: 146, 1: 131}  # entailment first


def test_unbalanced_quotes_are_read_verbatim(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text('sentence\tlabel\na "quoted start\t1\nplain\t0\n')
    rows = read_glue_tsv(path, TASKS["sst2"])
    assert rows["text_a"] == ['a "quoted start', "plain"] and rows["label"] == [1, 0]


def test_glue_dir_environment_variable_is_the_second_source(glue_dir, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    assert load_glue(TASKS["rte"]).source.endswith("RTE")


def test_max_train_samples_takes_the_same_subset_every_time(glue_dir):
    a = load_glue(TASKS["sst2"], str(glue_dir), max_train_samples=50, max_eval_samples=10)
    b = load_glue(TASKS["sst2"], str(glue_dir), max_train_samples=50)
    assert a.train["idx"] == b.train["idx"] and len(a.train) == 50
    assert a.train["idx"] != list(range(50))  # a random subset, not the head of the file
    assert a.dev["validation"]["idx"] == list(range(10))


def test_a_row_with_the_wrong_number_of_fields_names_file_and_line(tmp_path):
    root = write_glue_task(tmp_path, "sentence\tlabel\ngood\t1\nbad\t0\textra\n")
    with pytest.raises(UsageError, match=r"SST-2/train.tsv:3: expected 2 tab-separated fields, found 3"):
        load_glue(TASKS["sst2"], root)


def test_a_label_outside_the_label_set_names_file_and_line(tmp_path):
    root = write_glue_task(tmp_path, "sentence\tlabel\ngood\t1\nbad\t7\n")
    with pytest.raises(UsageError, match=r"train.tsv:3: label '7' is not one of 0, 1"):
        load_glue(TASKS["sst2"], root)


def test_old_mac_line_endings_are_named_not_read_as_one_header(tmp_path):
    """CR-only line endings made one line: the refusal quoted the whole file as the header's columns."""
    root = write_glue_task(tmp_path, "sentence\tlabel\rgood\t1\rbad\t0\r")
    with pytest.raises(UsageError, match=r"train.tsv:1: a carriage return \(CR\) inside a line: .*convert its line "
                                         r"endings$"):
        load_glue(TASKS["sst2"], root)


def test_a_header_column_named_twice_is_refused(tmp_path):
    root = write_glue_task(tmp_path, "sentence\tlabel\tlabel\ngood\t1\t0\n")  # the first label was taken
    with pytest.raises(UsageError, match=r"train.tsv:1: the header names column\(s\) label twice"):
        load_glue(TASKS["sst2"], root)


def test_a_long_header_is_quoted_short(tmp_path):
    root = write_glue_task(tmp_path, "sentence\tlabl\t" + "x" * 5000 + "\ngood\t1\t2\n")
    with pytest.raises(UsageError) as refused:
        load_glue(TASKS["sst2"], root)
    assert "header lacks column(s) label (found sentence, labl, xxx" in str(refused.value)
    assert len(str(refused.value)) < 500


def test_a_folder_named_as_a_file_is_said_to_be_a_folder(tmp_path):
    root = write_glue_task(tmp_path, "sentence\tlabel\ngood\t1\n")
    (tmp_path / "SST-2" / "train.tsv").unlink()
    (tmp_path / "SST-2" / "train.tsv").mkdir()
    with pytest.raises(UsageError, match=r"--data_dir: .*SST-2/train.tsv is a folder, not a file"):
        load_glue(TASKS["sst2"], root)


def test_empty_sentences_and_a_single_class_are_said(tmp_path, caplog):
    root = write_glue_task(tmp_path, "sentence\tlabel\ngood\t1\n  \t1\nfine\t1\n\t1\n")
    with caplog.at_level("WARNING", logger="adarank"):
        data = load_glue(TASKS["sst2"], root)
    assert len(data.train) == 4
    assert "train.tsv: 2 example(s) with an empty sentence, the first at line 3" in caplog.text
    assert "all 4 training examples are of class 1: the model can learn no other" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="adarank"):
        load_glue(TASKS["sst2"], write_glue_task(tmp_path / "both", "sentence\tlabel\ngood\t1\nbad\t0\n"))
    assert caplog.text == ""


def test_an_empty_split_is_refused(tmp_path):
    root = write_glue_task(tmp_path, "sentence\tlabel\n")
    with pytest.raises(UsageError, match="train split .* is empty"):
        load_glue(TASKS["sst2"], root)


def test_a_missing_file_names_the_path_and_the_layout(tmp_path):
    with pytest.raises(UsageError, match=r"lacks .*MNLI/dev_matched.tsv"):
        load_glue(TASKS["mnli"], str(tmp_path))


def test_cola_has_no_header_and_four_columns(tmp_path):
    root = write_glue_task(tmp_path, "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n",
                           "gj04\t0\t*\tThe weights made the rope stretch over the pulley\n", folder="CoLA")
    data = load_glue(TASKS["cola"], root)
    assert data.train["text_a"] == ["The sailors rode the breeze clear of the rocks."]
    assert data.dev["validation"]["label"] == [0]


def test_the_hub_unreachable_suggests_the_local_sources(monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="could not load GLUE rte from the Hugging Face hub.*--data_dir.*--demo"):
        load_glue(TASKS["rte"])


@pytest.mark.parametrize("name", TASKS)
def test_demo_data_has_each_tasks_shape_and_is_deterministic(name):
    task = TASKS[name]
    first, again = make_demo_split(task, "train"), make_demo_split(task, "train")
    assert first["text_a"] == again["text_a"] and first["label"] == again["label"]
    assert ("text_b" in first.column_names) == task.is_pair
    if task.is_regression:
        assert 0.0 <= min(first["label"]) < max(first["label"]) <= 5.0
    else:
        assert set(first["label"]) == set(range(task.num_labels))
    assert make_demo_split(task, "train")["text_a"] != make_demo_split(task, next(iter(task.dev_splits)))["text_a"]


def test_a_byte_order_mark_is_read_as_part_of_the_encoding(tmp_path):
    """GLUE's own MRPC files begin with one: the header is read without it."""
    path = tmp_path / "dev.tsv"
    path.write_text("sentence\tlabel\nfine\t1\n", encoding="utf-8-sig")
    rows = read_glue_tsv(path, TASKS["sst2"])
    assert rows["text_a"] == ["fine"] and rows["label"] == [1]


def test_a_metric_the_dev_labels_leave_undefined_is_recorded_as_undefined(tiny_model, tmp_path, caplog, capsys):
    """One class in the dev set: no Matthews correlation (and no F1 without a positive example) is
    defined, whatever the predictions; it is stored as null and said, not stored as a score of 0."""
    assert glue_metrics(TASKS["mrpc"], np.array([0, 1, 0]), np.array([0, 0, 0]))["f1"] is None
    assert glue_metrics(TASKS["cola"], np.array([1, 1]), np.array([0, 1]))["matthews_correlation"] == 0.0  # defined
    root = tmp_path / "glue" / "CoLA"
    root.mkdir(parents=True)
    (root / "train.tsv").write_text("".join(f"s\t{i % 2}\t\tsentence {i}\n" for i in range(16)))
    (root / "dev.tsv").write_text("".join(f"s\t1\t\tdev sentence {i}\n" for i in range(4)))
    assert run_task("cola", "--data_dir", str(tmp_path / "glue"), "--model_name_or_path", tiny_model, "--method",
                    "lora", "--max_steps", "2", "--per_device_train_batch_size", "8", "--save_strategy", "no",
                    "--output_dir", str(tmp_path / "run")) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["eval_matthews_correlation"] is None and metrics["undefined_metrics"] == ["eval_matthews_correlation"]
    assert isinstance(metrics["eval_accuracy"], float)
    assert "eval_matthews_correlation undefined" in capsys.readouterr().out
    assert any("matthews_correlation is undefined on this dev set (the dev labels hold a single value)" in r.getMessage()
               for r in caplog.records)
