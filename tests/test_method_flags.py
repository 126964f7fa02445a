"""Flags --method none passes over, said in its log (adarank/methods/flags.py), and a method the library's
scripts do not run, named with the scripts that do (adarank/methods/base.py)."""

import json
import os
import subprocess
import sys

import pytest

from adarank.tasks.summarization.data import demo_split
from conftest import read_jsonl
from fixtures.cli import run_task
from fixtures.paths import SRC

# What a --method none run still reads: the records scored and how the summaries are generated.
EVALUATION = ("--max_eval_samples", "2", "--per_device_eval_batch_size", "2", "--validation_split_percentage", "40",
              "--max_seq_length", "32", "--max_target_length", "8", "--num_beams", "1", "--seed", "7")


@pytest.fixture
def records(tmp_path):
    path = tmp_path / "five.jsonl"
    path.write_text("".join(json.dumps({"article": r["text"], "highlights": r["summary"]}) + "\n"
                            for r in demo_split(5, seed=3)))
    return str(path)


def test_method_none_reads_the_evaluation_flags_and_says_which_training_ones_it_does_not(tiny_llama, records,
                                                                                      tmp_path, caplog):
    """--method none trains nothing: a training flag given to it was passed over without a word. It is said,
    not refused: a benchmark list gives its untrained baseline the trained methods' flags, and the job
    scripts give every method --budget and --resume_from_checkpoint auto."""
    base = ("--method", "none", "--data_file", records, "--model_name_or_path", tiny_llama, *EVALUATION)
    assert run_task("cnndailymail", *base, "--budget", "small", "--resume_from_checkpoint", "auto",
                    "--output_dir", str(tmp_path / "scored")) == 0
    assert len(read_jsonl(tmp_path / "scored" / "predictions.jsonl")) == 2  # the last 40% of five records
    assert "read by training only" not in caplog.text
    assert run_task("cnndailymail", *base, "--learning_rate", "1e-3", "--num_train_epochs", "2",
                    "--output_dir", str(tmp_path / "flags")) == 0
    assert "--learning_rate and --num_train_epochs are read by training only, and --method none trains nothing " \
           "(it scores the base model as it is): they are not used" in caplog.text


def test_plateau_is_named_with_the_scripts_that_run_it():
    """The summarization script's --help names plateau, which only src/custom's GLUE scripts register: the
    script said "unknown method 'plateau'"."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(SRC / "nlu-cnndailymail.py"), "--demo", "--method", "plateau"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: --method plateau runs through its own scripts only (src/custom/'s, one "
                                  "for each GLUE task, e.g. src/custom/glue-rte.py): run one of those, or choose "
                                  "one of adalora, ")
