from collections import Counter

import pytest

from adarank.errors import UsageError
from adarank.tasks.glue import GLUE_TASKS as TASKS
from adarank.tasks.glue.data import load_glue, read_glue_tsv
from adarank.tasks.glue.demo import make_demo_split
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
