"""Each mistake a user can make ends in one line naming the problem and the fix, exit code 2."""

import functools
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import TrainingArguments

from adarank.methods import BUILT_IN_METHODS
from conftest import QUICK, run_task
from fixtures.cli import error_line, fails_cleanly, without_progress_bars
from fixtures.glue import write_glue_task
from fixtures.paths import SRC


@pytest.fixture
def tiny(tiny_model, tmp_path):
    return ("--model_name_or_path", tiny_model, "--output_dir", str(tmp_path / "run"), *QUICK)


def test_unknown_task(capsys):
    assert "unknown task 'sst5'" in fails_cleanly(capsys, "sst5", "--demo")


def test_unknown_method(capsys, tiny):
    line = fails_cleanly(capsys, "cola", "--demo", "--method", "vera", *tiny)
    assert re.search(r"unknown method 'vera': choose one of adalora, .*lora, .*qlora", line)


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
    assert not (run_dir / ".replaced").exists()  # set aside while the new run trained, dropped once it finished


def test_a_run_that_cannot_be_moved_aside_is_named_and_left_whole(capsys, tiny, tmp_path):
    """--overwrite_output_dir over a run whose checkpoints/ the system will not let go (an immutable
    folder, as a read-only mount would be): one line, and every file where it was."""
    run = previous_run(tmp_path)
    before = digests(run)
    if subprocess.run(["chattr", "+i", str(run / "checkpoints")], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this file system: no folder can be made immovable here")
    try:
        code = run_task("sst2", "--demo", "--method", "lora", "--max_steps", "2", "--overwrite_output_dir", *tiny)
        line = error_line(code, without_progress_bars(capsys.readouterr().err), one_line=True)
    finally:
        subprocess.run(["chattr", "-i", str(run / "checkpoints")], check=True)
    assert f"could not move aside {run / 'checkpoints'} (Operation not permitted)" in line
    assert digests(run) == before and not (run / ".replaced").exists()


def test_the_task_script_itself_exits_with_one_line():
    done = subprocess.run([sys.executable, str(SRC / "glue-cola.py"), "--demo", "--method", "vera"],
                          capture_output=True, text=True, timeout=300)
    line = error_line(done.returncode, done.stderr, one_line=True)
    # every method the library registers, in order (the plain script registers no custom one)
    assert line == "error: unknown method 'vera': choose one of " + ", ".join(sorted(BUILT_IN_METHODS))
    assert "plateau" not in line


@pytest.mark.parametrize("flags, message", [
    (("--metric_for_best_model", "accuracy"), "--metric_for_best_model accuracy is no metric of mnli's evaluations: "
     "use one of matched_loss, matched_accuracy, mismatched_loss, mismatched_accuracy"),
    (("--load_best_model_at_end",), "--metric_for_best_model loss (the Trainer's default with "
     "--load_best_model_at_end) is no metric of mnli's evaluations: use one of matched_loss,"),
])
def test_the_best_model_metric_of_a_task_with_two_dev_splits_names_its_split(capsys, tiny_model, tmp_path, flags,
                                                                             message):
    # the Trainer failed at the first evaluation: its logs name MNLI's metrics under the split's name
    argv = ("--demo", "--method", "lora", "--model_name_or_path", tiny_model, "--output_dir", str(tmp_path / "run"),
            "--max_steps", "2", "--max_eval_samples", "8", "--eval_strategy", "steps", "--eval_steps", "1", "--save_strategy", "steps",
            "--save_steps", "1")
    line = fails_cleanly(capsys, "mnli", *argv, *flags, one_line=True)
    assert line.startswith(f"error: {message}")
    assert not (tmp_path / "run").exists()
    fixed = [flag for flag in flags if flag != "accuracy" and flag != "--metric_for_best_model"]
    assert run_task("mnli", *argv, *fixed, "--metric_for_best_model", "matched_accuracy") == 0


def test_label_smoothing_is_refused_on_a_regression_task(capsys, tiny):
    # the Trainer's label smoother gathers class indices: it failed at the first step on STS-B's scores
    line = fails_cleanly(capsys, "stsb", "--demo", *tiny, "--label_smoothing_factor", "0.1", one_line=True)
    assert line == ("error: --label_smoothing_factor smooths class labels, and stsb is a regression (its labels are "
                    "scores): leave it out")


def test_a_flag_under_its_old_name_leaves_the_refusal_one_line(tmp_path):
    # TrainingArguments warns of --gradient_checkpointing's new name as it parses, before the check refuses
    done = subprocess.run([sys.executable, str(SRC / "glue-cola.py"), "--demo", "--output_dir", str(tmp_path / "run"),
                           "--gradient_checkpointing", "--gradient_checkpointing_kwargs", "zz"],
                          capture_output=True, text=True, timeout=300)
    line = error_line(done.returncode, done.stderr, one_line=True)
    assert line.startswith("error: --gradient_checkpointing_kwargs 'zz' is not a JSON object")


def test_the_old_name_warning_is_logged_once_the_flags_pass(caplog, tmp_path):
    from adarank.arguments import parse_arguments
    from adarank.tasks import get_task

    parse_arguments(get_task("cola"), ["--demo", "--output_dir", str(tmp_path / "run"), "--gradient_checkpointing"])
    assert "`gradient_checkpointing` is deprecated and will be removed in v6. Use `activation_checkpointing` " \
           "instead." in [record.getMessage() for record in caplog.records]


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

    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-2"  # the other run has saved a checkpoint
    checkpoint.mkdir(parents=True)
    with open(tmp_path / "run" / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code = run_task("cola", "--demo", "--method", "lora", "--max_steps", "2", "--resume_from_checkpoint", "auto",
                        *tiny)
    err = capsys.readouterr().err
    assert "another process is writing to" in error_line(code, err, one_line=True)
    assert "Loading weights" not in err  # refused before the model is loaded


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
    # another method's own flag joins the parser with that --method only: it had "no flag is close"
    (("--method", "lora", "--sora_lambda", "1"),
     ("unknown flag --sora_lambda (a flag of --method sora: give that method, or drop it)",)),
])
def test_every_unknown_flag_and_stray_argument_is_named(capsys, tmp_path, flags, messages):
    line = fails_cleanly(capsys, "cola", "--demo", "--output_dir", str(tmp_path / "run"), *flags, one_line=True)
    for message in messages:
        assert message in line
    assert not (tmp_path / "run").exists()


def test_the_method_given_last_brings_its_flags_as_the_parse_takes_it():
    """--method lora --method sora parses as sora, whose flags must be known: the first was taken."""
    from adarank.command_line import requested_method

    assert requested_method(["--method", "lora", "--method", "sora", "--sora_lambda", "1"]) == "sora"
    assert requested_method(["--method=sora", "--method", "lora"]) == "lora"
    assert requested_method(["--demo"]) is None


def test_a_method_given_twice_trains_the_last_with_its_flags(tiny_model, tmp_path):
    run = tmp_path / "run"
    assert run_task("cola", "--demo", "--model_name_or_path", tiny_model, "--max_steps", "2", "--method", "lora",
                    "--method", "sora", "--sora_lambda", "0.001", "--output_dir", str(run), *QUICK) == 0
    assert json.loads((run / "config.json").read_text())["method"] == "sora"


@pytest.mark.parametrize("method", sorted(BUILT_IN_METHODS))
def test_help_shows_every_flag_in_words(capsys, method):
    """A bare % in a help text made argparse print the option's internals in its place (--fast_dropout)."""
    assert run_task("cola", "--method", method, "--help") == 0
    out = capsys.readouterr().out
    assert "--output_dir" in out and "option_strings" not in out


def test_every_flag_of_ours_has_a_help_text():
    from dataclasses import fields, is_dataclass

    from adarank import arguments
    from adarank.methods import METHODS

    own = [kind for kind in vars(arguments).values() if isinstance(kind, type) and is_dataclass(kind)
           and kind.__module__ == arguments.__name__ and kind is not arguments.Arguments]
    own += [METHODS[name].arguments for name in BUILT_IN_METHODS if METHODS[name].arguments is not None]
    assert len(own) >= 8
    assert [f"{kind.__name__}.{flag.name}" for kind in own for flag in fields(kind) if not flag.metadata.get("help")] == []


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


# --- every bad value, one table: exit 2, one line naming it, and a previous run left as it was ---

def previous_run(root) -> Path:
    """A run directory holding a finished run (and a checkpoint damaged since it was saved), as a
    user's earlier run would be."""
    run = root / "run"
    checkpoint = run / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    files = {"metrics.json": '{"eval_accuracy": 0.91}\n', "config.json": '{"task": "sst2"}\n', ".lock": "",
             "history.jsonl": '{"step": 1, "loss": 0.7}\n', "adapter/adapter_model.safetensors": "weights",
             "checkpoints/checkpoint-4/trainer_state.json": '{"global_step": 4}',
             "checkpoints/checkpoint-4/adapter_model.safetensors": ""}  # emptied since it was saved
    for name, text in files.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)
    manifest = {"adapter_model.safetensors": {"bytes": 11624, "sha256": "0" * 64}}
    (checkpoint / "checkpoint_complete").write_text(json.dumps({"files": manifest}))
    return run


def digests(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# Appended to a LoRA run on demo data into the previous run's directory, with --overwrite_output_dir:
# no bad value may cost the previous run a byte, even where the user asked to replace it.
BAD_FLAGS = [
    (("--learning_rate", "-0.001"), "--learning_rate -0.001 must be > 0"),
    (("--learning_rate=-1e-3",), "--learning_rate -0.001 must be > 0"),
    (("--learning_rate", "-1e-3"), "--learning_rate -0.001 must be > 0"),
    (("--learning_rate", "0"), "--learning_rate 0 must be > 0"),
    (("--learning_rate", "fast"), "invalid float value: 'fast'"),
    (("--per_device_train_batch_size", "0"), "--per_device_train_batch_size 0 must be at least 1"),
    (("--per_device_eval_batch_size", "0"), "--per_device_eval_batch_size 0 must be at least 1"),
    (("--gradient_accumulation_steps", "0"), "--gradient_accumulation_steps 0 must be at least 1"),
    (("--max_steps", "-1", "--num_train_epochs", "0"), "--num_train_epochs 0 trains nothing"),
    (("--max_steps", "-5"), "--max_steps -5 must be a positive number of steps"),
    (("--warmup_steps", "-1"), "warmup_steps = -1.0, Expected value warmup_steps >= 0"),
    (("--warmup_steps", "2.5"), "--warmup_steps 2.5 must be a fraction of the run in [0, 1) or a whole number"),
    (("--weight_decay", "-0.1"), "--weight_decay -0.1 must be >= 0"),
    (("--max_grad_norm", "-1"), "--max_grad_norm -1 must be >= 0"),
    (("--seed", "-1"), "--seed -1 must be a whole number from 0"),
    (("--seed", "1.5"), "invalid int value: '1.5'"),
    (("--logging_steps", "0"), "non-zero --logging_steps"),
    (("--save_strategy", "steps", "--save_steps", "-1"), "--save_steps -1 must be > 0"),
    # TrainingArguments turns 0 into --logging_steps before the range check: caught as given
    (("--eval_strategy", "steps", "--eval_steps", "0"), "--eval_steps 0 must be > 0"),
    (("--save_total_limit", "0"), "--save_total_limit 0 must be at least 1"),
    (("--max_seq_length", "0"), "--max_seq_length 0 must be at least 1"),
    (("--max_seq_length", "1000"), "--max_seq_length 1000 is longer than this model's 128 positions"),
    (("--max_seq_length", "2"), "--max_seq_length 2 leaves no room for the text: this tokenizer adds 2 special tokens "
                                "to a sentence; use at least 3"),
    (("--classifier_dropout", "1.5"), "--classifier_dropout 1.5 must be in [0, 1)"),
    (("--lora_dropout", "1.5"), "--lora_dropout 1.5 must be in [0, 1)"),
    (("--lora_r", "0"), "--lora_r 0 must be at least 1"),
    (("--lora_alpha", "-3"), "--lora_alpha -3.0 must be positive"),
    (("--max_train_samples", "0"), "--max_train_samples 0 must be at least 1"),
    (("--max_eval_samples", "0"), "--max_eval_samples 0 must be at least 1"),
    (("--target_modules", ","), "--target_modules ',' names no module"),
    (("--method", "vera"), "unknown method 'vera'"),
    (("--prediction_loss_only",), "--prediction_loss_only cannot be used here: the dev metrics need every example's"),
    (("--label_names", "foo"), "--label_names cannot be used here: each task names its own labels"),
    (("--no_eval_do_concat_batches",), "--no_eval_do_concat_batches cannot be used here"),
    (("--dataloader_drop_last",), "--dataloader_drop_last cannot be used here: it drops the last dev batch too"),
    (("--batch_eval_metrics",), "--batch_eval_metrics cannot be used here"),
    (("--debug", "underflow_overflow"), "--debug cannot be used here"),
    (("--optim", "galore_adamw"), "--optim galore_adamw needs the package galore_torch, which is not installed"),
    # Optimizers whose packages this machine lacks, each a traceback at the Trainer's start before.
    *[(("--optim", optim), f"--optim {optim} needs the package {package}, which is not installed")
      for optim, package in (("adamw_torch_xla", "torch_xla"), ("adamw_torch_npu_fused", "torch_npu"),
                             ("adamw_anyprecision", "torchdistx"), ("adamw_torch_4bit", "torchao"),
                             ("adamw_torch_8bit", "torchao"), ("stable_adamw", "optimi (pip install torch-optimi)"))],
    (("--use_liger_kernel",), "--use_liger_kernel needs the package liger_kernel, which is not installed"),
    (("--fsdp", "full_shard"), "--fsdp shards the model over processes, and this run has one"),
    (("--metric_for_best_model", "foo"), "--metric_for_best_model foo is no metric of sst2's evaluations: use one of "
     "loss, accuracy"),
    (("--metric_for_best_model", "foo_accuracy"), "--metric_for_best_model foo_accuracy is no metric of sst2's"),
    (("--save_strategy", "best"), "--save_strategy best keeps the checkpoint with the best --metric_for_best_model, "
     "and none is given: add one"),
    (("--budget", "huge"), "unknown budget 'huge'"),
    (("--learnig_rate", "1e-3"), "unknown flag --learnig_rate (did you mean --learning_rate?)"),
    (("--bf16", "--no_bf16"), "--bf16 and --no_bf16 contradict each other"),
    (("--method", "adalora", "--target_r", "8", "--init_r", "4"), "--target_r 8 is larger than --init_r 4"),
    (("--method", "adalora", "--beta1", "2"), "--beta1 2.0 must lie strictly between 0 and 1"),
    (("--method", "adalora", "--orth_reg_weight", "-1"), "--orth_reg_weight -1.0 must be >= 0"),
    (("--method", "adalora", "--max_steps", "50", "--tinit", "40", "--tfinal", "30"),
     "impossible AdaLoRA schedule: tinit 40 + tfinal 30"),
    # No multiple of delta_t in the pruning window: the budget fell in one step at its end, silently.
    (("--method", "adalora", "--max_steps", "10", "--tinit", "1", "--tfinal", "1", "--delta_t", "100"),
     "AdaLoRA re-allocates at the multiples of delta_t 100 after tinit 1 and before total_step - tfinal = 9, and "
     "none lies there, so its budget falls to the target in one step, at step 9: use --delta_t 7 or less"),
    (("--model_name_or_path", "{tmp}/nothing"), "could not load model '{tmp}/nothing'"),
    (("--resume_from_checkpoint", "{tmp}/nowhere/checkpoint-3"), "{tmp}/nowhere/checkpoint-3 does not exist"),
    (("--resume_from_checkpoint", "{tmp}/a-file"), "{tmp}/a-file is a file, not a checkpoint folder"),
    (("--resume_from_checkpoint", "{run}"), "{run} is a run directory, not one of its checkpoints"),
    (("--resume_from_checkpoint", "{tmp}"), "{tmp} is not a checkpoint folder"),
    (("--resume_from_checkpoint", "{run}/checkpoints/checkpoint-4"),
     "checkpoint-4 has adapter_model.safetensors of 0 bytes, 11624 when saved"),
    (("--output_dir", "{tmp}/a-file"), "--output_dir {tmp}/a-file is a file, not a directory"),
    (("--output_dir", "{tmp}/a-file/run"), "--output_dir {tmp}/a-file/run lies under {tmp}/a-file, a file"),
    (("--output_dir", "/proc/adarank-run"), "--output_dir /proc/adarank-run is not writable"),
    (("--method", "adalora", "--init_r", "4", "--target_r", "4"),
     "--target_r 4 equals --init_r 4: AdaLoRA needs target_r below init_r"),
    (("--method", "qadalora", "--init_r", "2", "--target_r", "2"), "a fixed rank is --method lora"),
    # A rank above min(in, out) of the smallest adapted matrix (the tiny BERT's are 16 x 16), for every method.
    (("--lora_r", "17"), "--lora_r 17 is more than the 16 singular directions of the smallest adapted matrix"),
    (("--method", "adalora", "--init_r", "20", "--target_r", "2"), "--init_r 20 is more than the 16 singular"),
    (("--method", "dora", "--lora_r", "100000"), "--lora_r 100000 is more than the 16 singular directions"),
    # Another method's flags are refused, not ignored (only those given).
    (("--method", "adalora", "--lora_r", "4"),
     "--lora_r is not AdaLoRA's (its ranks: --init_r and --target_r, or --budget): drop it, or choose a method "
     "that reads it (--method dora, eva, lora, pissa, qdora, qlora, qrslora, rslora, sora)"),
    (("--init_r", "4", "--target_r", "2", "--tinit", "1"),
     "--init_r, --target_r and --tinit are not LoRA's (its rank: --lora_r, or --budget): drop them, or choose a "
     "method that reads them (--method adalora, qadalora)"),
    (("--bnb_4bit_compute_dtype", "float16"), "--bnb_4bit_compute_dtype is not LoRA's: drop it, or choose a method "
     "that reads it (--method qadalora, qdora, qlora, qrslora)"),
    # Values the Trainer or the optimizer would fail on only after the run directory is taken.
    (("--report_to", "banana"), "--report_to 'banana' is no integration the Trainer has"),
    (("--report_to", "tensorboard,none"), "--report_to 'tensorboard,none' is no integration the Trainer has"),
    (("--report_to", "mlflow"), "--report_to mlflow: its package is not installed here"),
    (("--adam_beta1", "2"), "--adam_beta1 2 must be in [0, 1)"),
    (("--adam_beta2", "1"), "--adam_beta2 1 must be in [0, 1)"),
    (("--adam_epsilon", "-1"), "--adam_epsilon -1 must be >= 0"),
    (("--label_smoothing_factor", "5"), "--label_smoothing_factor 5 must be in [0, 1)"),
    # TrainingArguments' message holds the strategies on lines of their own, which the line had cut off
    (("--eval_strategy", "no", "--load_best_model_at_end"), "requires the save and eval strategy to match, except "
     "when --save_strategy=\"best\", but found - Evaluation strategy: IntervalStrategy.NO - Save strategy: "
     "SaveStrategy.EPOCH: --help describes every flag"),
    # read only beside another option, and dropped without a word otherwise
    (("--fsdp_config", "{tmp}/a-file"), "--fsdp_config is read only with --fsdp, which this run does not use"),
    (("--optim_target_modules", "attention"), "--optim_target_modules is read only with a GaLore or APOLLO --optim"),
    # with --fsdp, TrainingArguments reads the file as it parses: a FileNotFoundError, a JSON error
    (("--fsdp", "full_shard", "--fsdp_config", "{tmp}/none.json"), "--fsdp_config {tmp}/none.json: no such file"),
    (("--fsdp", "full_shard", "--fsdp_config", "{tmp}/a-file"), "--fsdp_config {tmp}/a-file: the file holds no JSON"),
    # TrainingArguments imports deepspeed as it parses the flag: a traceback of three chained errors
    (("--deepspeed", "ds.json"), "--deepspeed needs the package deepspeed, which is not installed: install it or "
     "leave the flag out"),
    # Not a number: refused wherever the flag lives (the adapter's, a method's, the Trainer's).
    (("--lora_alpha", "nan"), "--lora_alpha nan must be a finite number"),
    (("--lora_alpha", "inf"), "--lora_alpha inf must be a finite number"),
    (("--method", "adalora", "--orth_reg_weight", "nan"), "--orth_reg_weight nan must be a finite number"),
    (("--num_train_epochs", "inf"), "--num_train_epochs inf must be a finite number"),
    # Trainer values that ended in a traceback as the Trainer started, at the first step, or after the training.
    (("--neftune_noise_alpha", "-1"), "--neftune_noise_alpha -1 must be >= 0"),
    (("--eval_accumulation_steps", "0"), "--eval_accumulation_steps 0 must be at least 1"),
    (("--eval_delay", "-5"), "--eval_delay -5 must be >= 0"),
    (("--lr_scheduler_kwargs", '{"foo": 1}'), "--lr_scheduler_type linear takes no 'foo' (it takes none)"),
    (("--lr_scheduler_kwargs", '{"num_cycles": 2}'), "--lr_scheduler_type linear takes no 'num_cycles'"),
    (("--lr_scheduler_type", "cosine", "--lr_scheduler_kwargs", '{"foo": 1}'),
     "--lr_scheduler_type cosine takes no 'foo' (it takes: num_cycles)"),
    (("--lr_scheduler_type", "reduce_lr_on_plateau", "--eval_strategy", "steps", "--eval_steps", "1",
      "--lr_scheduler_kwargs", '{"foo": 1}'), "reduce_lr_on_plateau takes no 'foo' (it takes: mode, factor, patience"),
    (("--lr_scheduler_kwargs", '{"num_warmup_steps": 3}'), "num_warmup_steps is the Trainer's to set (--warmup_steps)"),
    (("--lr_scheduler_type", "cosine_with_min_lr"),
     "--lr_scheduler_type cosine_with_min_lr: One of min_lr or min_lr_rate should be set"),
    (("--lr_scheduler_type", "warmup_stable_decay"),
     "--lr_scheduler_type warmup_stable_decay needs num_decay_steps in --lr_scheduler_kwargs"),
    (("--lr_scheduler_type", "cosine", "--lr_scheduler_kwargs", '{"num_cycles": "x"}'),
     "could not convert string to float: 'x' (it takes: num_cycles)"),
    (("--lr_scheduler_kwargs", "zz"), "--lr_scheduler_kwargs 'zz' is not a JSON object"),
    (("--optim_args", "zzz"), "--optim_args 'zzz': 'zzz' is not key=value"),
    (("--optim", "sgd", "--optim_args", "momentum=fast"),
     "--optim sgd --optim_args 'momentum=fast': could not convert string to float: 'fast'"),
    (("--optim", "sgd", "--optim_args", "momentum=-1"), "--optim sgd --optim_args 'momentum=-1': Invalid momentum value"),
    (("--optim", "adamw_torch", "--optim_args", "betas=0.8"), "--optim_args: --optim adamw_torch does not read "
     "'betas', and the Trainer would drop it without a word: leave it out (AdamW's betas and eps are --adam_beta1"),
    (("--optim", "sgd", "--optim_args", "momentum=0.5,nesterov_=1"), "--optim sgd does not read 'nesterov_'"),
    (("--gradient_checkpointing", "--gradient_checkpointing_kwargs", "zz"),
     "--gradient_checkpointing_kwargs 'zz' is not a JSON object"),
    (("--gradient_checkpointing", "--gradient_checkpointing_kwargs", '{"foo": 1}'),
     "--gradient_checkpointing_kwargs: unknown key 'foo' (it takes: use_reentrant,"),
    (("--activation_checkpointing", "--activation_checkpointing_kwargs", '{"debug": true}'),
     '--activation_checkpointing_kwargs: debug needs "use_reentrant": false'),
    (("--torch_compile", "--torch_compile_backend", "nope"),
     "--torch_compile_backend nope is no backend accelerate knows: use one of no, eager, aot_eager, inductor"),
    (("--torch_compile", "--torch_compile_mode", "nope"), "--torch_compile_mode nope is no mode of the inductor"),
    # Backends accelerate names that this torch has not (onnxrt), or has without their package (tvm)
    (("--torch_compile", "--torch_compile_backend", "onnxrt"), "--torch_compile_backend onnxrt cannot compile here "
     "(torch has no such backend, or its package is not installed): use one of no, eager, aot_eager, inductor"),
    (("--torch_compile", "--torch_compile_backend", "tvm"), "--torch_compile_backend tvm cannot compile here"),
    # The runs here are --demo runs: real data named beside them would be ignored.
    (("--data_dir", "{tmp}"), "--demo trains on built-in synthetic data, so --data_dir would be ignored: drop --demo "
                              "to use that data, or drop --data_dir"),
    (("--accelerator_config", "zz"), "--accelerator_config zz: no such file"),
    (("--accelerator_config", '{"foo": 1}'), "--accelerator_config: unknown key 'foo' (it takes: split_batches,"),
]
# Argument files: the file and the key are named.
BAD_FILES = [
    ("args.yaml", "learning_rate: fast\n", "args.yaml: learning_rate 'fast' is not a number"),
    ("args.yaml", "learning_rate: -1.0e-3\n", "args.yaml: learning_rate -0.001 must be > 0"),
    ("args.yaml", "eval_strategy: steps\neval_steps: 0\n", "args.yaml: eval_steps 0 must be > 0"),
    ("args.yaml", "per_device_train_batch_size: 0\n", "args.yaml: per_device_train_batch_size 0 must be at least 1"),
    ("args.yaml", "num_train_epochs: 0\nmax_steps: -1\n", "args.yaml: num_train_epochs 0 trains nothing"),
    ("args.json", '{"seed": "x"}', "args.json: seed 'x' is not a whole number"),
    ("args.json", '{"demo": "maybe"}', "args.json: demo 'maybe' is not true or false"),
    ("args.yaml", "learnig_rate: 0.001\n", "args.yaml: unknown key 'learnig_rate' (did you mean 'learning_rate'?)"),
    ("args.yaml", "method: adalora\nlora_r: 4\n", "--lora_r is not AdaLoRA's"),
    ("args.json", '{"lora_alpha": NaN}', "args.json: lora_alpha nan must be a finite number"),
    ("args.yaml", "accelerator_config:\n  foo: 1\n", "args.yaml: accelerator_config: unknown key 'foo'"),
    ("args.yaml", "deepspeed: ds.json\n", "args.yaml: deepspeed needs the package deepspeed, which is not installed"),
    ("args.yaml", "lr_scheduler_kwargs: [1]\n", "--lr_scheduler_kwargs [1] is not a JSON object"),
    ("args.yaml", "data_dir: glue\n", "args.yaml: demo trains on built-in synthetic data, so data_dir would be "
                                     "ignored: drop demo to use that data, or drop data_dir"),
    # A YAML key left empty is null: it failed in the optimizer once the run directory was taken
    # (learning_rate). Null is the default only where that is none (test below).
    ("args.yaml", "learning_rate:\n", "args.yaml: learning_rate has no value: give it one, or leave the key out for "
                                      "its default"),
    ("args.json", '{"demo": null}', "args.json: demo has no value"),
    # A list for a flag of one value was joined with commas: [sora] was read as sora, after the 4-bit
    # scripts had looked for a method name and found none (a full-precision SoRA run ran there).
    ("args.yaml", "method: [sora]\n", "args.yaml: method ['sora'] is not one value (the flag takes one, not a list)"),
    ("args.json", '{"seed": [1, 2]}', "args.json: seed [1, 2] is not one value"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_each_bad_value_is_refused_in_one_line_and_the_previous_run_is_untouched(capsys, tiny_model, tmp_path, flags,
                                                                                message):
    run = previous_run(tmp_path)
    (tmp_path / "a-file").write_text("not a directory\n")
    before = digests(run)
    fill = {"{tmp}": str(tmp_path), "{run}": str(run)}
    flags = [functools.reduce(lambda text, key: text.replace(key, fill[key]), fill, flag) for flag in flags]
    code = run_task("sst2", "--demo", "--method", "lora", "--model_name_or_path", tiny_model, "--max_steps", "2",
                    "--output_dir", str(run), "--overwrite_output_dir", *flags)
    # A value found wrong once the model is loaded (--target_modules) follows the loading's progress bar.
    line = error_line(code, without_progress_bars(capsys.readouterr().err), one_line=True)
    assert functools.reduce(lambda text, key: text.replace(key, fill[key]), fill, message) in line
    assert digests(run) == before


@pytest.mark.parametrize("name, text, message", BAD_FILES, ids=[t.strip() for _, t, _ in BAD_FILES])
def test_each_bad_value_of_an_argument_file_is_refused_naming_the_file_and_key(capsys, tiny_model, tmp_path, name,
                                                                               text, message):
    run = previous_run(tmp_path)
    before = digests(run)
    base = {"demo": True, "method": "lora", "model_name_or_path": tiny_model, "max_steps": 2,
            "output_dir": str(run), "overwrite_output_dir": True}
    given = yaml.safe_load(text) if name.endswith(".yaml") else json.loads(text)
    document = {**base, **given}
    (tmp_path / name).write_text(yaml.safe_dump(document) if name.endswith(".yaml") else json.dumps(document))
    assert message in fails_cleanly(capsys, "sst2", str(tmp_path / name), one_line=True)
    assert digests(run) == before


def test_a_yaml_key_read_as_a_truth_value_is_explained(capsys, tmp_path):
    (tmp_path / "args.yaml").write_text("demo: true\nyes: 1\n")  # it said "unknown key 'True'"
    line = fails_cleanly(capsys, "sst2", str(tmp_path / "args.yaml"), one_line=True)
    assert "unknown key True (YAML reads an unquoted yes, no, on or off as a truth value: quote the key)" in line


def test_no_value_in_an_argument_file_is_the_default_where_that_is_none(tmp_path):
    """output_dir: null sent the run to ./trainer_output (TrainingArguments' own default), not the run's name."""
    from adarank.arguments import parse_arguments
    from adarank.tasks import TASKS

    (tmp_path / "args.yaml").write_text("demo: true\nmethod: adalora\ntarget_r:\noutput_dir: null\n"
                                        "max_train_samples:\n")
    args = parse_arguments(TASKS["sst2"], [str(tmp_path / "args.yaml")])
    assert args.run_dir is None and args.adapter.target_r is None and args.data.max_train_samples is None
    assert not {"output_dir", "target_r", "max_train_samples"} & set(args.explicit)


def test_a_comma_separated_flag_takes_a_list_in_an_argument_file(tmp_path):
    from adarank.arguments import parse_arguments
    from adarank.tasks import TASKS

    (tmp_path / "args.yaml").write_text("demo: true\ntarget_modules: [query, value]\n")
    assert parse_arguments(TASKS["sst2"], [str(tmp_path / "args.yaml")]).model.target_modules == "query,value"


def test_an_argument_file_with_an_upper_case_suffix_is_read(capsys, tmp_path):
    """It was taken for a stray argument: "unexpected argument 'ARGS.YAML'"."""
    (tmp_path / "ARGS.YAML").write_text("method: sora\nlearning_rate: fast\n")
    assert "ARGS.YAML: learning_rate 'fast' is not a number" in fails_cleanly(capsys, "sst2", str(tmp_path / "ARGS.YAML"))
    (tmp_path / "Args.Json").write_text('{"method": "sora"}')
    from adarank.command_line import requested_method

    assert requested_method([str(tmp_path / "ARGS.YAML")]) == "sora"
    assert requested_method([str(tmp_path / "Args.Json")]) == "sora"


@pytest.mark.parametrize("name, text", [("args.yaml", "method: lora\nlearning_rate: 1.0e-3\nlearning_rate: 2.0e-3\n"),
                                        ("args.json", '{"method": "lora", "learning_rate": 1e-3, "learning_rate": 2e-3}')])
def test_an_argument_file_that_sets_a_flag_twice_is_refused(capsys, tmp_path, name, text):
    """YAML and JSON parsers keep the last of two equal keys without a word: which value was meant?"""
    (tmp_path / name).write_text(text)
    line = fails_cleanly(capsys, "sst2", str(tmp_path / name), one_line=True)
    assert line == f"error: argument file {tmp_path / name} sets learning_rate twice: keep one"


def test_the_table_holds_thirty_bad_inputs_at_least():
    assert len(BAD_FLAGS) + len(BAD_FILES) >= 30


# --- a folder that holds no run, damaged run documents, unreadable argument files ---

def test_a_folder_that_holds_no_run_is_not_written_into(capsys, tiny_model, tmp_path):
    import shutil

    folder = tmp_path / "a-model"
    shutil.copytree(tiny_model, folder)  # a model's folder: its own config.json, weights and tokenizer
    before = digests(folder)
    line = fails_cleanly(capsys, "cola", "--demo", "--method", "lora", "--model_name_or_path", tiny_model,
                         "--max_steps", "2", "--output_dir", str(folder), *QUICK, one_line=True)
    assert f"--output_dir {folder} is not empty and holds no run of this project" in line
    assert "--overwrite_output_dir" in line
    assert digests(folder) == before and not (folder / ".lock").exists()


def test_an_empty_folder_and_an_unfinished_run_are_still_written_into(tiny_model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ("cola", "--demo", "--method", "lora", "--model_name_or_path", tiny_model, "--max_steps", "2", *QUICK)
    assert run_task(*argv, "--output_dir", str(empty)) == 0
    (empty / "metrics.json").unlink()  # as if stopped before its end: a run of this project, unfinished
    (empty / "notes.txt").write_text("mine\n")
    assert run_task(*argv, "--output_dir", str(empty)) == 0
    assert json.loads((empty / "metrics.json").read_text())["total_step"] == 2


def test_auto_resume_names_a_damaged_metrics_file(capsys, tiny_model, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"eval_accuracy": 0.9')  # cut short
    line = fails_cleanly(capsys, "cola", "--demo", "--method", "lora", "--model_name_or_path", tiny_model,
                         "--output_dir", str(run), "--resume_from_checkpoint", "auto", one_line=True)
    assert f"{run / 'metrics.json'} is damaged" in line and "--overwrite_output_dir" in line
    assert (run / "metrics.json").read_text() == '{"eval_accuracy": 0.9'


@pytest.mark.parametrize("marker", ['{"files": []}', '{"files": {"adapter_model.safetensors": 3}}', "[1]", '"x"'])
def test_a_checkpoint_marker_of_the_wrong_shape_is_named(capsys, tiny_model, tmp_path, marker):
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"global_step": 4}')
    (checkpoint / "checkpoint_complete").write_text(marker)
    line = fails_cleanly(capsys, "cola", "--demo", "--method", "lora", "--model_name_or_path", tiny_model,
                         "--output_dir", str(tmp_path / "run"), "--resume_from_checkpoint", str(checkpoint),
                         one_line=True)
    assert f"--resume_from_checkpoint {checkpoint} has a damaged checkpoint_complete" in line
    assert "give an intact checkpoint-N folder" in line


@pytest.mark.parametrize("name, make, message", [
    ("args.json", lambda path: path.mkdir(), "is a directory: give the path of a JSON or YAML file"),
    ("args.yaml", lambda path: path.write_bytes(b"method: lora\nnote: caf\xe9\n"), "is not UTF-8 text"),
])
def test_an_argument_file_that_cannot_be_read_is_named(capsys, tmp_path, name, make, message):
    make(tmp_path / name)
    line = fails_cleanly(capsys, "cola", str(tmp_path / name), one_line=True)
    assert f"argument file {tmp_path / name} {message}" in line


def test_a_checkpoint_of_another_task_or_method_is_refused_before_anything_is_written(capsys, tiny_model, tmp_path):
    """Resuming from a LoRA checkpoint under --method adalora ended in a traceback deep in the
    optimizer (leaving a half-made run folder); under another task, or as QLoRA's base, it trained on
    silently. The checkpoint's run says what it was."""
    source = tmp_path / "lora"
    argv = ("--demo", "--model_name_or_path", tiny_model, "--max_steps", "2", "--max_eval_samples", "8",
            "--per_device_train_batch_size", "8", "--logging_steps", "1", "--save_steps", "2")
    assert run_task("cola", *argv, "--method", "lora", "--output_dir", str(source)) == 0
    capsys.readouterr()  # the training run's own output
    checkpoint = source / "checkpoints" / "checkpoint-2"
    for task, method in (("cola", "adalora"), ("sst2", "lora"), ("cola", "qlora")):
        target = tmp_path / f"{task}-{method}"
        line = fails_cleanly(capsys, task, *argv, "--method", method, "--output_dir", str(target),
                             "--resume_from_checkpoint", str(checkpoint), one_line=True)
        assert line == (f"error: --resume_from_checkpoint {checkpoint} is of a cola run with --method lora, not of "
                        f"this {task} run with --method {method}: resume a checkpoint of the same task and method, "
                        "or start afresh without it")
        assert not target.exists()


def test_auto_resume_into_a_run_of_another_method_is_refused(capsys, tiny_model, tmp_path):
    """A finished (or stopped) LoRA run given as --output_dir to an AdaLoRA command with
    --resume_from_checkpoint auto: refused, not reported as done; the run is left as it was."""
    run = tmp_path / "run"
    argv = ("--demo", "--model_name_or_path", tiny_model, "--max_steps", "2", "--max_eval_samples", "8", *QUICK)
    assert run_task("cola", *argv, "--method", "lora", "--output_dir", str(run)) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()  # the training run's own output
    line = fails_cleanly(capsys, "cola", *argv, "--method", "adalora", "--output_dir", str(run),
                         "--resume_from_checkpoint", "auto", one_line=True)
    assert line == (f"error: --output_dir {run} is of a cola run with --method lora, not of this cola run with "
                    "--method adalora: choose another --output_dir, or pass --overwrite_output_dir to replace it")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


DEFAULT_OPTIM = TrainingArguments("unused", report_to=[]).optim.value  # adamw_torch_fused from torch 2.8


def test_a_checkpoint_started_with_other_adapter_flags_is_refused_and_its_run_left_alone(capsys, tiny_model, tmp_path):
    """Resuming a rank-2 LoRA checkpoint with --budget large ended in 72 size-mismatch lines from the
    state dict; under --resume_from_checkpoint auto it first rewrote the stopped run's config.json to
    the new rank. Other adapted modules failed in the optimizer's state; a SoRA checkpoint with another
    --sora_max_rank failed in SoRA's own state. Other data (real after demo) or another seed, learning
    rate or batch went through silently, making a run of two halves."""
    argv = ("--demo", "--model_name_or_path", tiny_model, "--max_steps", "2", "--max_eval_samples", "8",
            "--per_device_train_batch_size", "8", "--logging_steps", "1", "--save_steps", "2")
    cases = (("lora", (), ("--budget", "large"), "--budget small, this command gives large"),
             ("lora", (), ("--lora_r", "4"), "--lora_r unset, this command gives 4"),
             ("lora", (), ("--target_modules", "query,value"), "--target_modules unset, this command gives query,value"),
             ("sora", ("--sora_max_rank", "3"), ("--sora_max_rank", "5"), "--sora_max_rank 3, this command gives 5"),
             # other data or another optimizer run: the resumed run would be neither
             ("lora", (), ("--max_train_samples", "16"), "--max_train_samples unset, this command gives 16"),
             ("lora", (), ("--seed", "5"), "--seed 42, this command gives 5"),
             # another optimizer cannot read the checkpoint's state (a KeyError at the first step, after the
             # stopped run's config.json was rewritten); another schedule makes a run of two halves
             ("lora", (), ("--optim", "sgd"), f"--optim {DEFAULT_OPTIM}, this command gives sgd"),
             ("lora", (), ("--lr_scheduler_type", "cosine"), "--lr_scheduler_type linear, this command gives cosine"),
             # the 4-bit layers computing in another dtype from the step resumed at (unset: float32 on the CPU)
             ("qlora", (), ("--bnb_4bit_compute_dtype", "float16"),
              "--bnb_4bit_compute_dtype float32, this command gives float16"))
    for number, (method, flags, changed, message) in enumerate(cases):
        run = tmp_path / f"{method}-{number}"
        assert run_task("cola", *argv, "--method", method, *flags, "--output_dir", str(run)) == 0
        capsys.readouterr()  # the training run's own output
        (run / "metrics.json").unlink()  # as a run stopped after its last checkpoint
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
        checkpoint = run / "checkpoints" / "checkpoint-2"
        target = tmp_path / f"{method}-{number}-resumed"
        line = fails_cleanly(capsys, "cola", *argv, "--method", method, *changed, "--output_dir", str(target),
                             "--resume_from_checkpoint", str(checkpoint), one_line=True)
        assert line == (f"error: --resume_from_checkpoint {checkpoint}: its run was started with {message}: give the "
                        "flags it was started with (its run's config.json, arguments), or start afresh (without "
                        "--resume_from_checkpoint) in another --output_dir")
        assert not target.exists()
        line = fails_cleanly(capsys, "cola", *argv, "--method", method, *changed, "--output_dir", str(run),
                             "--resume_from_checkpoint", "auto", one_line=True)
        assert line.startswith(f"error: --resume_from_checkpoint {checkpoint}: its run was started with {message}")
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
        assert run_task("cola", *argv, "--method", method, *flags, "--output_dir", str(run),
                        "--resume_from_checkpoint", "auto") == 0  # the flags it was started with: it finishes


def test_other_flags_are_fine_where_no_checkpoint_is_resumed_or_the_rank_flag_decides(tiny_model, tmp_path):
    """A run stopped before its first checkpoint starts afresh under auto with the flags now given; a
    --budget beside an unchanged --lora_r (which sets the rank) does not count as a change, nor do
    --num_train_epochs where --max_steps decides the schedule, nor torch's AdamW under its other name."""
    argv = ("--demo", "--model_name_or_path", tiny_model, "--max_steps", "2", "--max_eval_samples", "8",
            "--per_device_train_batch_size", "8", "--logging_steps", "1", "--save_steps", "2")
    early = tmp_path / "early"
    assert run_task("cola", *argv, "--method", "lora", "--lora_r", "4", "--output_dir", str(early)) == 0
    (early / "metrics.json").unlink()
    shutil.rmtree(early / "checkpoints", ignore_errors=True)  # stopped before its first save
    assert run_task("cola", *argv, "--method", "lora", "--lora_r", "2", "--output_dir", str(early),
                    "--resume_from_checkpoint", "auto") == 0
    assert json.loads((early / "config.json").read_text())["adapter"]["r"] == 2
    ranked = tmp_path / "ranked"
    assert run_task("cola", *argv, "--method", "lora", "--lora_r", "4", "--output_dir", str(ranked)) == 0
    (ranked / "metrics.json").unlink()
    assert run_task("cola", *argv, "--method", "lora", "--lora_r", "4", "--budget", "large", "--num_train_epochs", "7",
                    "--output_dir", str(ranked), "--resume_from_checkpoint", "auto") == 0
    assert json.loads((ranked / "metrics.json").read_text())["resumed_from_step"] == 2
    # torch's AdamW with and without its fused kernel keep the same state: a run started under the
    # other name (as before a torch upgrade changed the default) resumes under the default
    other = "adamw_torch" if DEFAULT_OPTIM == "adamw_torch_fused" else "adamw_torch_fused"
    renamed = tmp_path / "renamed"
    assert run_task("cola", *argv, "--method", "lora", "--optim", other, "--output_dir", str(renamed)) == 0
    (renamed / "metrics.json").unlink()
    assert run_task("cola", *argv, "--method", "lora", "--output_dir", str(renamed),
                    "--resume_from_checkpoint", "auto") == 0
    assert json.loads((renamed / "metrics.json").read_text())["resumed_from_step"] == 2
    # a 4-bit run from before config.json recorded its compute dtype resolved (unset: it says nothing)
    older = tmp_path / "older"
    assert run_task("cola", *argv, "--method", "qlora", "--output_dir", str(older)) == 0
    (older / "metrics.json").unlink()
    config = json.loads((older / "config.json").read_text())
    assert config["arguments"]["model"]["bnb_4bit_compute_dtype"] == "float32"  # as resolved on the CPU
    config["arguments"]["model"]["bnb_4bit_compute_dtype"] = None
    (older / "config.json").write_text(json.dumps(config))
    assert run_task("cola", *argv, "--method", "qlora", "--output_dir", str(older),
                    "--resume_from_checkpoint", "auto") == 0
    assert json.loads((older / "metrics.json").read_text())["resumed_from_step"] == 2


# Values found wrong only after the previous run was set aside for the new one (run/replaced.py): a method's
# plan on the loaded model; and a failure once the Trainer starts (none of the flags is known to give one
# now: the optimizer's construction fails as an unforeseen one would).
LATE_FAILURES = [
    ("--method", "eva", "--eva_rho", "1000"),
    ("--method", "lora", "--save_strategy", "no", "[the optimizer fails]"),
]


def _optimizer_fails(*args, **kwargs):
    raise RuntimeError("the optimizer could not be built")


@pytest.mark.parametrize("flags", LATE_FAILURES, ids=" ".join)
def test_a_run_failing_after_it_set_the_previous_run_aside_puts_it_back(caplog, tiny_model, tmp_path, flags,
                                                                        monkeypatch):
    injected = flags[-1] == "[the optimizer fails]"
    if injected:
        import transformers

        monkeypatch.setattr(transformers.Trainer, "create_optimizer", _optimizer_fails)
        flags = flags[:-1]
    run = previous_run(tmp_path)
    before = digests(run)
    try:
        code = run_task("sst2", "--demo", "--model_name_or_path", tiny_model, "--max_steps", "2",
                        "--output_dir", str(run), "--overwrite_output_dir", *flags)
    except Exception as error:  # a failure the harness does not yet name in one line
        code = repr(error)
    assert code != 0 and (not injected or "the optimizer could not be built" in str(code))
    assert digests(run) == before and not (run / ".replaced").exists()
    assert f"the run it was to replace is back in {run}" in caplog.text


def test_a_run_set_aside_by_a_replacement_killed_before_its_first_checkpoint_comes_back(capsys, caplog, tiny,
                                                                                       tmp_path):
    """A replacement killed while its model loaded (no handler runs) left the finished run in .replaced/;
    the next run, without --overwrite_output_dir, took the directory and deleted it once it finished."""
    from adarank.run.directory import RUN_FILES, RUN_FOLDERS
    from adarank.run.replaced import set_aside

    run = previous_run(tmp_path)
    before = digests(run)
    set_aside(run, RUN_FILES + RUN_FOLDERS)  # what the killed replacement had done: .lock and .replaced/ are left
    line = fails_cleanly(capsys, "sst2", "--demo", "--method", "lora", "--max_steps", "2", *tiny, one_line=True)
    assert f"{run} already holds a finished run" in line
    assert digests(run) == before and not (run / ".replaced").exists()
    assert f"A run that was to replace the one in {run} stopped before its first checkpoint" in caplog.text
    # a replacement killed once finished, before it dropped the run it replaced: it stays, the old one goes
    from adarank.run.directory import RunDirectory

    set_aside(run, RUN_FILES + RUN_FOLDERS)
    (run / "metrics.json").write_text('{"eval_accuracy": 0.5}\n')
    RunDirectory(run).lock_if_present()
    assert (run / "metrics.json").read_text() == '{"eval_accuracy": 0.5}\n' and not (run / ".replaced").exists()


def test_a_diverged_run_says_so_and_stores_no_nan(capsys, tiny_model, tmp_path):
    run = tmp_path / "blown"
    assert run_task("sst2", "--demo", "--method", "lora", "--model_name_or_path", tiny_model, "--max_steps", "3",
                    "--learning_rate", "1e30", "--output_dir", str(run)) == 0
    text = (run / "metrics.json").read_text()

    def refuse(constant):
        raise AssertionError(f"metrics.json holds {constant}, which JSON does not have")

    metrics = json.loads(text, parse_constant=refuse)
    assert "eval_loss" in metrics["non_finite"] and metrics["eval_loss"] is None
    assert "DIVERGED: " in capsys.readouterr().out
    import summarize_runs  # the analysis leaves it out of the numbers, saying why

    (apart,) = summarize_runs.summarize(tmp_path, resamples=1000)["apart"]
    assert apart["why"].startswith("diverged (") and "eval_loss" in apart["why"]


def test_push_to_hub_is_refused_where_the_hub_client_is_offline(capsys, tiny_model, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    line = fails_cleanly(capsys, "sst2", "--demo", "--method", "lora", "--model_name_or_path", tiny_model,
                         "--push_to_hub", "--output_dir", str(tmp_path / "p"), one_line=True)
    assert line.startswith("error: --push_to_hub with HF_HUB_OFFLINE set: the hub is out of reach")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("optim, items", [("sgd", "momentum=0.5"), ("rmsprop", "alpha=0.9,eps=1e-6"),
                                          ("ademamix", "alpha=5.0")])  # ademamix: 5.0 is its default value
def test_optimizer_arguments_the_optimizer_reads_are_accepted(tmp_path, optim, items):
    from transformers import TrainingArguments

    from adarank.tasks import get_task
    from adarank.trainer_options import check_trainer_options

    training = TrainingArguments(str(tmp_path), optim=optim, optim_args=items, report_to=[])
    check_trainer_options(training, get_task("sst2"))


@pytest.mark.parametrize("variables, message", [
    ({"WORLD_SIZE": "abc"}, "error: WORLD_SIZE='abc' is not a whole number: the launcher (torchrun) sets it; unset it, "
                            "or start the run with torchrun"),
    ({"LOCAL_RANK": "x1"}, "error: LOCAL_RANK='x1' is not a whole number"),
    ({"WORLD_SIZE": "2"}, "error: WORLD_SIZE=2 asks for several processes, but no launcher set MASTER_ADDR: unset "
                          "WORLD_SIZE, or start the run with torchrun"),
    ({"WORLD_SIZE": "0"}, "error: WORLD_SIZE=0 is no number of processes"),
])
def test_launcher_variables_set_by_hand_are_named(capsys, monkeypatch, tmp_path, variables, message):
    """They failed inside TrainingArguments with "...: --help describes every flag", blaming the flags."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    line = fails_cleanly(capsys, "cola", "--demo", "--output_dir", str(tmp_path / "run"), one_line=True)
    assert line.startswith(message)
    assert not (tmp_path / "run").exists()
