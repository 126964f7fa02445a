"""script/slurm/run_matrix.sh (script/run_matrix.sh links to it): the whole comparison as one job
array. --dry-run lists exactly the runs still to do; a matrix whose runs all finished submits nothing
(no sbatch is even needed)."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from fixtures.cli import error_line
from fixtures.paths import ROOT


def matrix(*argv, runs: Path, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RUNS": str(runs), **({"PATH": path} if path is not None else {})}
    return subprocess.run(["bash", str(ROOT / "script" / "slurm" / "run_matrix.sh"), *argv], capture_output=True,
                          text=True, env=env, timeout=60)


def test_the_default_matrix_is_the_original_projects_table(tmp_path):
    done = matrix("--dry-run", runs=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].endswith("0 finished, 48 to run (array size 48)")
    expected = [f"script/slurm/run_glue.sh {task} {method} {budget} {seed}" for task in ("mnli", "sst2", "cola", "qnli")
                for method in ("lora", "adalora") for budget in ("small", "large") for seed in (42, 43, 44)]
    assert lines[1:] == expected


def test_finished_runs_are_left_out_and_flags_reach_every_run(tmp_path):
    config = tmp_path / "matrix.conf"
    config.write_text("# a small matrix\ntasks=cola\nmethods=lora qadalora plateau\nbudgets=small\n"
                      "seeds=1 2\nflags=--demo --max_steps 3\n")
    (tmp_path / "cola" / "lora-small-seed2").mkdir(parents=True)
    (tmp_path / "cola" / "lora-small-seed2" / "metrics.json").write_text("{}")
    (tmp_path / "cola" / "qadalora-small-seed1").mkdir(parents=True)  # unfinished: it runs again, and resumes
    done = matrix("--dry-run", "--config", str(config), runs=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "matrix: cola x lora qadalora plateau x small x seeds 1 2; 1 finished, 5 to run (array size 5)",
        "script/slurm/run_glue.sh cola lora small 1 --demo --max_steps 3",
        "script/slurm/run_qlora.sh cola qadalora small 1 --demo --max_steps 3",
        "script/slurm/run_qlora.sh cola qadalora small 2 --demo --max_steps 3",
        "script/slurm/run_plateau.sh cola small 1 --demo --max_steps 3",
        "script/slurm/run_plateau.sh cola small 2 --demo --max_steps 3",
    ]
    summaries = matrix("--dry-run", "--tasks", "cnndailymail", "--methods", "none adalora", "--budgets", "small",
                       "--seeds", "7", "--", "--data_file", "a.jsonl", runs=tmp_path)
    assert summaries.stdout.splitlines()[1:] == ["script/slurm/run_cnndm.sh none small 7 --data_file a.jsonl",
                                                 "script/slurm/run_cnndm.sh adalora small 7 --data_file a.jsonl"]


def test_the_rivals_preset_routes_every_method_to_its_job_script(tmp_path):
    done = matrix("--dry-run", "--preset", "rivals", "--tasks", "cola", "--seeds", "42", runs=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("matrix: cola x lora adalora plateau increlora sora dora pissa rslora eva x small")
    assert lines[1:] == [*(f"script/slurm/run_glue.sh cola {m} small 42" for m in ("lora", "adalora")),
                         "script/slurm/run_plateau.sh cola small 42",
                         *(f"script/slurm/run_glue.sh cola {m} small 42"
                           for m in ("increlora", "sora", "dora", "pissa", "rslora", "eva"))]
    four_bit = matrix("--dry-run", "--tasks", "rte", "--methods", "qdora qrslora", "--budgets", "small",
                      "--seeds", "1", runs=tmp_path)
    assert four_bit.stdout.splitlines()[1:] == ["script/slurm/run_qlora.sh rte qdora small 1",
                                                "script/slurm/run_qlora.sh rte qrslora small 1"]


def test_a_finished_matrix_submits_nothing(tmp_path):
    for seed in (1, 2):
        run = tmp_path / "sst2" / f"adalora-large-seed{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text("{}")
    done = matrix("--tasks", "sst2", "--methods", "adalora", "--budgets", "large", "--seeds", "1 2", runs=tmp_path,
                  path="/usr/bin:/bin")  # no sbatch here: it is not needed
    assert done.returncode == 0, done.stderr
    assert "2 finished, 0 to run" in done.stdout and "nothing to submit" in done.stdout


def test_bad_matrix_arguments_end_in_one_line(tmp_path):
    for argv, message in ((("--methods", "vera"), "unknown method 'vera'"),
                          (("--preset", "everything"), "unknown preset 'everything': choose one of rivals"),
                          (("--budgets", "medium"), "unknown budget 'medium'"),
                          (("--tasks", "cnndailymail", "--methods", "plateau"), "cnndailymail takes lora"),
                          (("--config", str(tmp_path / "none.conf")), "--config needs an existing file"),
                          (("--seed", "1"), "unknown argument '--seed'")):
        done = matrix("--dry-run", *argv, runs=tmp_path)
        error_line(done.returncode, done.stderr)
        assert message in done.stderr


def test_bad_choices_are_refused_before_anything_is_listed(tmp_path):
    """An unknown task, a seed that is not a whole number or given twice (1 and 01 are one seed), a
    method with no script for a task, an empty choice, an unclosed quote in flags=: one line, exit 2."""
    (tmp_path / "open.conf").write_text('tasks=cola\nflags=--prompt_template "a b\n')
    small = ("--methods", "lora", "--budgets", "small", "--seeds", "1")
    for argv, message in ((("--tasks", "badtask", *small), "unknown task 'badtask': choose one of cola sst2 mnli"),
                          (("--tasks", "cola", "--seeds", "abc 1"), "seed 'abc' is not a whole number"),
                          (("--tasks", "cola", "--seeds", "4294967296"), "'4294967296' is not a whole number from 0"),
                          (("--tasks", "cola", "--seeds", "1 1"), "--seeds '1 1' names 1 twice: name each once"),
                          (("--tasks", "cola", "--seeds", "1 01"), "--seeds '1 01' names 1 twice"),
                          (("--tasks", "cola cola"), "--tasks 'cola cola' names cola twice"),
                          (("--methods", "lora lora"), "--methods 'lora lora' names lora twice"),
                          (("--tasks", "cnndailymail cola", "--methods", "plateau"), "cnndailymail takes lora"),
                          (("--tasks", ""), "no tasks given: give one or more with --tasks"),
                          (("--methods", " "), "no methods given"),
                          (("--budgets", ""), "no budgets given"),
                          (("--seeds", ""), "no seeds given"),
                          (("--config", str(tmp_path / "open.conf")), "a quote is not closed")):
        done = matrix("--dry-run", *argv, runs=tmp_path)
        error_line(done.returncode, done.stderr, one_line=True)
        assert message in done.stderr and done.stdout == "", argv


def test_flags_keep_their_quoting_through_to_the_job(tmp_path):
    """Flags with spaces (from flags= or after --) reach the job script, and the run, as the same words:
    the array's list holds them shell-quoted, and each array task reads its line back as a shell does."""
    config = tmp_path / "matrix.conf"
    config.write_text("tasks=cola\nmethods=lora\nbudgets=small\nseeds=1\nflags=--a \"x y\" --b 'it''s'\n")
    expected = ["--a", "x y", "--b", "its", "--prompt_template", "Q: {q} A:", "--c", "it's"]
    dry = matrix("--dry-run", "--config", str(config), "--", "--prompt_template", "Q: {q} A:", "--c", "it's",
                 runs=tmp_path / "runs")
    assert dry.returncode == 0, dry.stderr
    assert shlex.split(dry.stdout.splitlines()[1]) == ["script/slurm/run_glue.sh", "cola", "lora", "small", "1",
                                                       *expected]
    here = subprocess.run(["bash", str(ROOT / "script" / "slurm" / "run_matrix.sh"), "--dry-run", "--config",
                           config.name], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                          env={**os.environ, "RUNS": str(tmp_path / "runs")})  # a path from where it was started
    assert here.returncode == 0, here.stderr
    assert shlex.split(here.stdout.splitlines()[1])[5:] == expected[:4]
    # Submitted: a stand-in sbatch keeps each job's --wrap; the array's task 0 then runs with a stand-in Python.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", 'for a in "$@"; do case $a in --wrap=*) printf "%s\\0" "${a#--wrap=}" >> "$WRAPS";; '
                                  'esac; done; echo 7'),
                       ("python", 'printf "%s\\n" "$@" > "$ARGS"')):
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "NPROC"))}
    env.update(PYTHON=str(bin_dir / "python"), WRAPS=str(tmp_path / "wraps"), ARGS=str(tmp_path / "args"),
               PATH=f"{bin_dir}:{os.environ['PATH']}", RUNS=str(tmp_path / "runs"))
    submit = subprocess.run(["bash", str(ROOT / "script" / "slurm" / "run_matrix.sh"), "--config", str(config), "--",
                             "--prompt_template", "Q: {q} A:", "--c", "it's", "--d", "a\tb"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert submit.returncode == 0, submit.stderr
    array_wrap = (tmp_path / "wraps").read_text().split("\0")[0]
    task = subprocess.run(["sh", "-c", array_wrap], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**env, "SLURM_ARRAY_TASK_ID": "0"})  # sbatch --wrap: an sh script
    assert task.returncode == 0, task.stderr
    argv = (tmp_path / "args").read_text().splitlines()
    assert argv[0] == "src/glue-cola.py" and argv[-len(expected) - 2:] == [*expected, "--d", "a\tb"], argv


def test_plateau_runs_every_glue_task(tmp_path):
    """The rivals preset crosses plateau with all of GLUE: src/custom has an entry script of each
    task, and run_plateau.sh trains through it (MNLI, with its two dev splits, for real on demo data)."""
    tasks = "cola sst2 mnli qnli rte mrpc stsb qqp"
    listed = matrix("--dry-run", "--tasks", tasks, "--methods", "plateau", "--budgets", "small", "--seeds", "1",
                    runs=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1:] == [f"script/slurm/run_plateau.sh {task} small 1" for task in tasks.split()]
    for task in tasks.split():
        entry = ROOT / "src" / "custom" / ("glue_sst2.py" if task == "sst2" else f"glue-{task}.py")
        assert f'main("{task}", method="plateau")' in entry.read_text(), entry
    env = {**os.environ, "RUNS": str(tmp_path), "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["bash", "script/run_plateau.sh", "mnli", "small", "1", "--demo", "--max_steps", "2",
                           "--max_eval_samples", "8"], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((tmp_path / "mnli" / "plateau-small-seed1" / "config.json").read_text())
    assert (config["task"], config["method"], config["dev_splits"]) == ("mnli", "plateau", ["matched", "mismatched"])


def test_the_commands_users_know_still_run_through_links(tmp_path):
    """script/run_*.sh are links to script/slurm/: sbatch reads the #SBATCH lines through them, and
    each script finds its job.sh and the repository from where it really lies."""
    for name in ("run_glue.sh", "run_qlora.sh", "run_plateau.sh", "run_cnndm.sh", "run_matrix.sh"):
        link = ROOT / "script" / name
        assert link.is_symlink() and link.resolve() == ROOT / "script" / "slurm" / name, name
    env = {**os.environ, "RUNS": str(tmp_path)}
    via_link = subprocess.run(["bash", "script/run_matrix.sh", "--dry-run", "--tasks", "rte", "--methods", "lora",
                               "--budgets", "small", "--seeds", "5"], capture_output=True, text=True, env=env,
                              timeout=60, cwd=ROOT)
    assert via_link.returncode == 0, via_link.stderr
    assert via_link.stdout.splitlines()[1:] == ["script/slurm/run_glue.sh rte lora small 5"]
    usage = subprocess.run(["bash", str(ROOT / "script" / "run_plateau.sh"), "cola"], capture_output=True, text=True,
                           env=env, timeout=60, cwd=tmp_path)
    assert usage.returncode == 2 and "usage:" in usage.stderr  # job.sh found through the link


def test_flags_a_job_sets_itself_are_refused_among_the_extra_flags(tmp_path):
    # Given again after the job's own --seed 42, a --seed 43 would win silently in a directory named seed42.
    for extra in (["--seed", "43"], ["--output_dir=/tmp/elsewhere"], ["--budget", "large"], ["--method", "sora"]):
        flag = extra[0].split("=")[0]
        done = matrix("--dry-run", "--tasks", "cola", "--methods", "lora", "--budgets", "small", "--", *extra,
                      runs=tmp_path)
        assert error_line(done.returncode, done.stderr, one_line=True).startswith(f"error: {flag} among the extra flags")
        job = subprocess.run(["bash", str(ROOT / "script" / "run_glue.sh"), "cola", "lora", "small", "42", *extra],
                             capture_output=True, text=True, env={**os.environ, "RUNS": str(tmp_path)}, timeout=60)
        assert error_line(job.returncode, job.stderr, one_line=True).startswith(f"error: {flag} among the extra flags")
    assert not any(tmp_path.iterdir())  # no job started


def test_a_process_count_that_is_no_number_is_refused_before_the_run(tmp_path):
    """NPROC=abc (or 0) ran one process, the shell's "integer expression expected" aside."""
    stand_in = tmp_path / "python"  # would record a start
    stand_in.write_text(f"#!/usr/bin/env bash\ntouch {tmp_path / 'started'}\n")
    stand_in.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    for value in ("abc", "0", "2.5", "-1"):
        job = subprocess.run(["bash", str(ROOT / "script" / "run_glue.sh"), "cola", "lora", "small", "42"],
                             capture_output=True, text=True, timeout=60,
                             env={**env, "NPROC": value, "PYTHON": str(stand_in), "RUNS": str(tmp_path / "runs")})
        line = error_line(job.returncode, job.stderr, one_line=True)
        assert line == f"error: NPROC={value} is not a number of processes: set NPROC to 1 or more, or unset it"
    assert not (tmp_path / "started").exists()
