"""Each mistake a user can make ends in one line naming the problem and the fix, exit code 2."""

import json
import re
import subprocess
import sys

import pytest

from conftest import QUICK, run_task
from fixtures.cli import error_line, fails_cleanly
from fixtures.glue import write_glue_task
from fixtures.paths import SRC


@pytest.fixture
def tiny(tiny_model, tmp_path):
    return ("--model_name_or_path", tiny_model, "--output_dir", str(tmp_path / "run"), *QUICK)


def test_unknown_task(capsys):
    assert "unknown task 'sst5'" in fails_cleanly(capsys, "sst5", "--demo")


def test_unknown_method(capsys, tiny):
    line = fails_cleanly(capsys, "cola", "--demo", "--method", "dora", *tiny)
    assert re.search(r"unknown method 'dora': choose one of adalora, lora, .*qlora", line)


def test_unknown_budget(capsys, tiny):
    assert "unknown budget 'huge'" in fails_cleanly(capsys, "cola", "--demo", "--budget", "huge", *tiny)


def test_data_dir_missing_a_file(capsys, tiny, tmp_path):
    line = fails_cleanly(capsys, "qnli", "--data_dir", str(tmp_path), *tiny)
    assert "QNLI/train.tsv" in line and "point it at the GLUE download" in line


def test_malformed_row(capsys, tiny, tmp_path):
    root = write_glue_task(tmp_path / "glue", "sentence\tlabel\nok\t1\nbroken row without label\n")
    assert "train.tsv:3: expected 2 tab-separated fields, found 1" in fails_cleanly(capsys, "sst2", "--data_dir", root, *tiny)


def test_label_outside_the_label_set(capsys, tiny, tmp_path):
    root = write_glue_task(tmp_path / "glue", "sentence\tlabel\nok\tpositive\n")
    assert "train.tsv:2: label 'positive' is not one of 0, 1" in fails_cleanly(capsys, "sst2", "--data_dir", root, *tiny)


def test_empty_split(capsys, tiny, tmp_path):
    root = write_glue_task(tmp_path / "glue", "sentence\tlabel\n")
    assert "is empty" in fails_cleanly(capsys, "sst2", "--data_dir", root, *tiny)


def test_target_rank_above_initial_rank(capsys, tiny):
    line = fails_cleanly(capsys, "cola", "--demo", "--target_r", "8", "--init_r", "4", *tiny)
    assert "--target_r 8 is larger than --init_r 4" in line and "--init_r 12" in line


def test_impossible_schedule(capsys, tiny):
    line = fails_cleanly(capsys, "cola", "--demo", "--tinit", "40", "--tfinal", "30", "--max_steps", "50", *tiny)
    assert "impossible AdaLoRA schedule: tinit 40 + tfinal 30" in line and "try --tinit" in line


def test_a_model_that_cannot_be_loaded(capsys, tmp_path):
    line = fails_cleanly(capsys, "cola", "--demo", "--model_name_or_path", str(tmp_path / "nothing"),
                         "--output_dir", str(tmp_path / "run"))
    assert "could not load model" in line and "--model_name_or_path" in line


def test_the_hub_unreachable(capsys, tiny, monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = fails_cleanly(capsys, "mrpc", *tiny)
    assert "Hugging Face hub" in line and "--data_dir" in line and "--demo" in line


def test_an_output_directory_with_a_finished_run_is_left_alone(capsys, tiny, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text('{"eval_accuracy": 0.91}')
    (run_dir / "history.jsonl").write_text('{"step": 1}\n')
    line = fails_cleanly(capsys, "cola", "--demo", *tiny)
    assert "already holds a finished run" in line and "--overwrite_output_dir" in line
    assert json.loads((run_dir / "metrics.json").read_text()) == {"eval_accuracy": 0.91}
    assert (run_dir / "history.jsonl").read_text() == '{"step": 1}\n'


def test_overwrite_output_dir_replaces_a_finished_run(tiny, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text('{"eval_accuracy": 0.91}')
    assert run_task("cola", "--demo", "--method", "lora", "--max_steps", "2", "--overwrite_output_dir", *tiny) == 0
    assert "eval_matthews_correlation" in json.loads((run_dir / "metrics.json").read_text())


def test_the_task_script_itself_exits_with_one_line():
    done = subprocess.run([sys.executable, str(SRC / "glue-cola.py"), "--demo", "--method", "dora"],
                          capture_output=True, text=True, timeout=300)
    line = error_line(done.returncode, done.stderr, one_line=True)
    assert line == "error: unknown method 'dora': choose one of adalora, lora, none, qadalora, qlora"


@pytest.mark.parametrize("flags, message", [
    (("--orth_reg_weight", "-1"), "--orth_reg_weight -1.0 must be >= 0"),
    (("--lora_dropout", "1.5"), "--lora_dropout 1.5 must be in [0, 1)"),
    (("--target_modules", ","), "--target_modules ',' names no module"),
    (("--max_seq_length", "1000"), "--max_seq_length 1000 is longer than this model's 128 positions"),
    (("--load_best_model_at_end", "--eval_strategy", "steps", "--save_strategy", "steps"),
     "--load_best_model_at_end cannot be used with adalora"),
    (("--resume_from_checkpoint", "nowhere/checkpoint-3"), "nowhere/checkpoint-3 does not exist"),
])
def test_more_mistakes(capsys, tiny_model, tmp_path, flags, message):
    line = fails_cleanly(capsys, "cola", "--demo", "--model_name_or_path", tiny_model, "--method", "adalora",
                         "--output_dir", str(tmp_path / "run"), *flags)
    assert message in line


def test_a_file_that_is_not_utf8(capsys, tiny, tmp_path):
    root = write_glue_task(tmp_path / "glue", "sentence\tlabel\n")
    (tmp_path / "glue" / "SST-2" / "train.tsv").write_bytes(b"sentence\tlabel\ncaf\xe9\t1\n")
    assert "train.tsv is not UTF-8 text" in fails_cleanly(capsys, "sst2", "--data_dir", root, *tiny)


def test_checkpoints_of_an_unfinished_run_are_not_deleted(capsys, tiny, tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"global_step": 4}')
    line = fails_cleanly(capsys, "cola", "--demo", *tiny)
    assert "holds checkpoints of an unfinished run" in line and "--resume_from_checkpoint" in line
    assert checkpoint.is_dir()


def test_two_processes_cannot_share_a_run_directory(capsys, tiny, tmp_path):
    import fcntl

    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = fails_cleanly(capsys, "cola", "--demo", "--method", "lora", "--max_steps", "2", *tiny)
    assert "another process is writing to" in line


def test_arguments_from_a_json_or_yaml_file(tiny_model, tmp_path, capsys):
    arguments = {"demo": True, "model_name_or_path": tiny_model, "method": "lora", "lora_r": 8, "max_steps": 2,
                 "output_dir": str(tmp_path / "from-json"), "save_strategy": "no"}
    (tmp_path / "args.json").write_text(json.dumps(arguments))
    assert run_task("rte", str(tmp_path / "args.json")) == 0
    config = json.loads((tmp_path / "from-json" / "config.json").read_text())
    assert config["method"] == "lora" and config["total_step"] == 2
    assert config["budget"] == "large"  # the label follows the rank given, r=8, not the default --budget small
    assert {"demo", "max_steps", "method"} <= set(config["explicit_arguments"])
    (tmp_path / "bad.yaml").write_text("method: [lora\n")
    assert "is not valid YAML" in fails_cleanly(capsys, "rte", str(tmp_path / "bad.yaml"))


def test_a_mistyped_flag_names_the_closest_known_ones(capsys, tmp_path):
    line = fails_cleanly(capsys, "cola", "--demo", "--learnig_rate", "1e-3", "--output_dir", str(tmp_path / "run"),
                         one_line=True)
    assert "unknown flag --learnig_rate (did you mean --learning_rate?)" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, messages", [
    (("--learnig_rate", "1e-3", "--num_epochs=2", "--zzzz"),
     ("unknown flags --learnig_rate (did you mean --learning_rate?)", "--num_epochs (did you mean --num_train_epochs?)",
      "--zzzz (no flag is close)")),
    (("--learning_rate", "1e-3", "extra"), ("unexpected argument 'extra'",)),
    (("--learnig_rate", "1e-3", "extra", "more"),
     ("--learnig_rate (did you mean --learning_rate?)", "unexpected arguments 'extra', 'more'")),
    (("--learning_rate", "fast"), ("argument --learning_rate/--learning-rate: invalid float value: 'fast'",)),
])
def test_every_unknown_flag_and_stray_argument_is_named(capsys, tmp_path, flags, messages):
    line = fails_cleanly(capsys, "cola", "--demo", "--output_dir", str(tmp_path / "run"), *flags, one_line=True)
    for message in messages:
        assert message in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, text", [
    ("args.json", json.dumps({"demo": True, "learnig_rate": 1e-3, "num_epochs": 2, "output_dir": "RUN"})),
    ("args.yaml", "demo: true\nlearnig_rate: 0.001\nnum_epochs: 2\noutput_dir: RUN\n"),
])
def test_unknown_keys_of_an_argument_file_name_the_closest_flags(capsys, tmp_path, name, text):
    (tmp_path / name).write_text(text.replace("RUN", str(tmp_path / "run")))
    line = fails_cleanly(capsys, "cola", str(tmp_path / name), one_line=True)
    assert f"{name}: unknown keys 'learnig_rate' (did you mean 'learning_rate'?), 'num_epochs' (did you mean " \
           "'num_train_epochs'?)" in line
    assert not (tmp_path / "run").exists()
