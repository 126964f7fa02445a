"""script/bench/run.py, the one driver of the benchmark lists: configurations x seeds, finished runs
skipped, unfinished ones continued, the small files kept, N runs side by side. A stand-in Python
(a shell script) plays the runs, so nothing trains here."""

import importlib.util
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.cli import error_line, without_progress_bars
from fixtures.glue import write_glue_task
from fixtures.paths import ROOT

DRIVER = ROOT / "script" / "bench" / "run.py"

# Writes what a finished run writes (and an adapter and a checkpoint, which are never kept), and
# records its command line and thread count; FAIL_CONFIG names a run that fails.
FAKE_PYTHON = """#!/usr/bin/env bash
out=
for ((i = 1; i <= $#; i++)); do [ "${!i}" = --output_dir ] && { j=$((i + 1)); out=${!j}; }; done
echo "$OMP_NUM_THREADS $*" >> "$CALLS"
case $out in *"$FAIL_CONFIG"*) [ -n "$FAIL_CONFIG" ] && { echo boom; exit 1; } ;; esac
mkdir -p "$out/adapter" "$out/checkpoints/checkpoint-1"
for f in config.json history.jsonl ranks.jsonl predictions.tsv memory.json adapter/adapter_model.safetensors; do
  echo '{}' > "$out/$f"
done
echo '{"done": true}' > "$out/metrics.json"
"""


def setup(tmp_path: Path, body: str) -> tuple[Path, dict]:
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    listing = tmp_path / "bench.list"
    listing.write_text(f"runs = {tmp_path / 'runs'}\nresults = {tmp_path / 'results'}\n{body}")
    env = {**os.environ, "PYTHON": str(python), "CALLS": str(tmp_path / "calls.txt"), "FAIL_CONFIG": ""}
    return listing, env


def drive(*argv, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DRIVER), *map(str, argv)], capture_output=True, text=True, env=env,
                          timeout=120)


def calls(tmp_path: Path) -> list[list[str]]:
    path = tmp_path / "calls.txt"
    return [shlex.split(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_runs_seed_by_seed_keep_small_files_and_skip_what_finished(tmp_path):
    listing, env = setup(tmp_path, "seeds = 1 2\nepochs = 3\nprecision = --no_bf16\n"
                                   "flags = --num_train_epochs {epochs} {precision}\n"
                                   "a   src/glue-cola.py --method lora   # a comment\n"
                                   "b   src/glue-cola.py --method adalora \\\n  --budget small\n")
    done = drive(listing, "jobs=1", "threads=1", "--", "--diagnostics", env=env)
    assert done.returncode == 0, done.stderr
    assert "0 finished, 0 to collect, 4 run(s) to do, 1 at a time, 1 thread(s) each" in done.stdout
    made = calls(tmp_path)
    assert [call[0] for call in made] == ["1"] * 4  # OMP_NUM_THREADS
    assert [call[call.index("--output_dir") + 1] for call in made] == [
        str(tmp_path / "runs" / name) for name in ("a-seed1", "b-seed1", "a-seed2", "b-seed2")]
    assert made[1][1:] == ["src/glue-cola.py", "--method", "adalora", "--budget", "small", "--num_train_epochs", "3",
                           "--no_bf16", "--diagnostics", "--seed", "1", "--output_dir",
                           str(tmp_path / "runs" / "b-seed1"), "--resume_from_checkpoint", "auto"]
    kept = sorted(p.name for p in (tmp_path / "results" / "a-seed1").iterdir())
    assert kept == ["config.json", "history.jsonl", "metrics.json", "predictions.tsv", "ranks.jsonl"]

    again = drive(listing, "jobs=1", env=env)
    assert again.returncode == 0 and "4 finished, 0 to collect, 0 run(s) to do" in again.stdout
    assert len(calls(tmp_path)) == 4  # nothing ran again


def test_a_finished_run_directory_is_collected_and_an_unfinished_one_continues(tmp_path):
    listing, env = setup(tmp_path, "a src/glue-cola.py\nb src/glue-cola.py\n")
    finished = tmp_path / "runs" / "a-seed42"
    finished.mkdir(parents=True)
    (finished / "metrics.json").write_text("{}")
    (tmp_path / "runs" / "b-seed42" / "checkpoints").mkdir(parents=True)  # stopped: it continues
    dry = drive(listing, "--dry-run", env=env)
    assert dry.returncode == 0 and "0 finished, 1 to collect, 1 run(s) to do" in dry.stdout
    assert dry.stdout.splitlines()[1].startswith("b-seed42 src/glue-cola.py --seed 42")
    done = drive(listing, env=env)
    assert done.returncode == 0, done.stderr
    assert [call[call.index("--output_dir") + 1] for call in calls(tmp_path)] == [str(tmp_path / "runs" / "b-seed42")]
    assert (tmp_path / "results" / "a-seed42" / "metrics.json").is_file()
    assert (tmp_path / "results" / "b-seed42" / "metrics.json").is_file()


def test_settings_from_the_command_line_and_a_failed_run(tmp_path):
    listing, env = setup(tmp_path, "configs = a\nkeep = config.json metrics.json memory.json\n"
                                   "a src/glue-cola.py\nb src/glue-cola.py\nc src/glue-cola.py\n")
    done = drive(listing, "configs=b c", "seeds=7", "jobs=2", "threads=3", env={**env, "FAIL_CONFIG": "c-seed7"})
    assert done.returncode == 1
    assert "failed: c-seed7" in done.stderr and "finished: b-seed7" in done.stdout
    assert sorted(p.name for p in (tmp_path / "results" / "b-seed7").iterdir()) == ["config.json", "memory.json", "metrics.json"]
    assert not (tmp_path / "results" / "c-seed7").exists()
    assert "boom" in (tmp_path / "runs" / "c-seed7.log").read_text()
    assert {call[0] for call in calls(tmp_path)} == {"3"}


def test_bad_input_ends_in_one_line(tmp_path):
    listing, env = setup(tmp_path, "configs = a\na src/glue-cola.py\nb src/glue-cola.py --x {nothing}\n")
    (tmp_path / "quote.list").write_text(listing.read_text() + "c src/glue-cola.py --x 'open\n")
    (tmp_path / "latin1.list").write_bytes(listing.read_bytes() + "# café\n".encode("latin-1"))
    (tmp_path / "file").write_text("")
    for argv, message in (((listing, "configs=z"), "unknown configuration 'z': choose from a b"),
                          ((tmp_path / "quote.list",), "quote.list:6: no closing quotation in 'c src/glue-cola.py"),
                          ((listing, "flags=--lr '3"), "flags: no closing quotation in '--lr '3': close the quote"),
                          ((tmp_path / "latin1.list",), "latin1.list is not UTF-8 text (byte "),
                          ((listing, f"runs={tmp_path / 'file'}"), f"runs: {tmp_path / 'file'} is a file, not a"),
                          ((listing, f"results={tmp_path / 'file' / 'sub'}"), f"{tmp_path / 'file'} is a file, not a"),
                          ((tmp_path,), "is a directory: pass a benchmark list file"),
                          ((listing, "seed"), "'seed' is not KEY=VALUE: give each setting once, as key=value"),
                          ((listing, "jobs=two"), "jobs must be a whole number"),
                          ((listing, "configs=b"), "{nothing} is used but the list sets no 'nothing'"),
                          ((listing, "data=/no/such/folder"), "data: /no/such/folder does not exist"),
                          # without metrics.json kept, the driver would never know a run finished
                          ((listing, "keep=config.json"), "keep must name metrics.json: a run is finished when"),
                          ((listing, "keep="), "keep must name config.json and metrics.json"),
                          ((tmp_path / "none.list",), "does not exist"),
                          ((), "usage:")):
        done = drive(*argv, "--dry-run", env=env)
        assert message in error_line(done.returncode, done.stderr, one_line=True), argv
    done = drive(listing, f"runs={tmp_path / 'file'}", env=env)  # refused before anything is made, not only dry
    assert "is a file, not a folder" in error_line(done.returncode, done.stderr, one_line=True)
    assert (tmp_path / "file").read_text() == "" and not (tmp_path / "results").exists()


def test_bad_counts_unknown_or_repeated_settings_and_repeated_seeds_end_in_one_line(tmp_path):
    """Refused before anything starts: counts int() cannot read or that are not positive, a misspelled key
    (in the list or on the command line), a setting given twice, a seed or configuration chosen twice, a
    list without configurations."""
    listing, env = setup(tmp_path, "epochs = 3\nflags = --num_train_epochs {epochs}\n"
                                   "a src/glue-cola.py\nb src/glue-cola.py\n")
    body = listing.read_text()
    for name, extra in (("seed", "seed = 7\n"), ("confgs", "confgs = a\n"), ("twice", "seeds = 1\nseeds = 2\n")):
        (tmp_path / f"{name}.list").write_text(body.replace("epochs = 3\n", f"epochs = 3\n{extra}"))
    (tmp_path / "empty.list").write_text(body.split("a src/")[0])
    (tmp_path / "nope.list").write_text(body.replace("b src/glue-cola.py", "b src/glue-nope.py"))
    (tmp_path / "escape.list").write_text(body.replace("b src/glue-cola.py", "../../escape src/glue-cola.py"))
    for argv, message in (
                          ((tmp_path / "nope.list",), "nope.list:6: src/glue-nope.py does not exist (scripts are "
                                                      "relative to"),
                          ((tmp_path / "escape.list",), "escape.list:6: a configuration is NAME SCRIPT.py [FLAGS ...], "
                                                        "NAME of letters, digits"),
                          ((listing, f"results={tmp_path / 'runs'}"), "runs and results are one folder"),((listing, "jobs=--5"), "jobs must be a whole number, 1 or more, not '--5'"),
                          ((listing, "jobs=\u00b2"), "jobs must be a whole number, 1 or more, not '\u00b2'"),
                          ((listing, "jobs=0"), "jobs must be a whole number, 1 or more, not '0'"),
                          ((listing, "threads=-1"), "threads must be a whole number, 1 or more, not '-1'"),
                          ((listing, "threads=0"), "threads must be a whole number, 1 or more"),
                          ((listing, "nice=-30"), "nice must be a whole number, -20 or more, not '-30'"),
                          ((tmp_path / "seed.list",), "seed.list:4: unknown setting 'seed' (did you mean 'seeds'?): "
                                                      "use one of configs data epochs flags jobs"),
                          ((tmp_path / "confgs.list",), "unknown setting 'confgs' (did you mean 'configs'?)"),
                          ((listing, "seed=7"), "unknown setting 'seed' (did you mean 'seeds'?)"),
                          ((tmp_path / "twice.list",), "twice.list:5: 'seeds' is set twice (lines 4 and 5): keep one"),
                          ((listing, "seeds=1", "seeds=2"), "'seeds=2' sets 'seeds' again: give each setting once"),
                          ((listing, "seeds=42 42"), "seeds='42 42' names 42 twice: name each once"),
                          ((listing, "seeds=1 01"), "seeds='1 01' names 1 twice"),
                          ((listing, "seeds=1 \u00b2"), "seeds must be whole numbers from 0 to 2^32 - 1, not '1 "),
                          ((listing, f"seeds={2**32}"), "seeds must be whole numbers from 0 to 2^32 - 1"),
                          ((listing, "configs=a b a"), "configs='a b a' names a twice"),
                          ((tmp_path / "empty.list",), "empty.list has no configuration: add a line NAME SCRIPT.py")):
        done = drive(*argv, "--dry-run", env=env)
        assert message in error_line(done.returncode, done.stderr, one_line=True), argv
    done = drive(listing, "seeds=42 42", env=env)  # not only dry: nothing starts, nothing is made
    error_line(done.returncode, done.stderr, one_line=True)
    assert calls(tmp_path) == [] and not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
    fine = drive(listing, "epochs=5", "threads=2", "jobs=1", "--dry-run", env=env)  # a {key} in use is a setting
    assert fine.returncode == 0 and "--num_train_epochs 5" in fine.stdout and "2 thread(s) each" in fine.stdout


def test_a_dry_run_read_in_part_ends_quietly(tmp_path):
    """`run.py LIST --dry-run | head -1`: the reader closes the pipe early; no traceback follows."""
    configs = "".join(f"c{i} src/glue-cola.py --method lora\n" for i in range(3000))
    listing, env = setup(tmp_path, f"seeds = 1 2 3\n{configs}")
    done = subprocess.run(f"{shlex.quote(sys.executable)} {shlex.quote(str(DRIVER))} {shlex.quote(str(listing))} "
                          "--dry-run | head -1", shell=True, capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.startswith("0 finished, 0 to collect, 9000 run(s) to do")
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists()



def test_help_prints_the_usage_and_exits_0(tmp_path):
    """--help or -h anywhere before `--` prints the module's docstring, not an error; after `--` it is a
    flag for every run."""
    listing, env = setup(tmp_path, "a src/glue-cola.py\n")
    for argv in (("--help",), ("-h",), (listing, "--dry-run", "--help")):
        done = drive(*argv, env=env)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert done.stdout.startswith("Run the configurations x seeds of one benchmark list") and "jobs" in done.stdout
    passed = drive(listing, "--dry-run", "--", "--help", env=env)
    assert passed.returncode == 0 and "--help --seed 42" in passed.stdout


def test_folders_that_cannot_be_made_are_refused_before_any_run_starts(tmp_path):
    """mkdir fails under /proc, even for root: one line, no run started, and the runs folder made just
    before the results folder failed is removed again."""
    listing, env = setup(tmp_path, "a src/glue-cola.py\n")
    for argv, message in ((("runs=/proc/adarank-bench/runs",),
                           "runs: cannot make or write to /proc/adarank-bench/runs: No such file or directory "
                           "(/proc/adarank-bench): give a folder you can write to"),
                          (("results=/proc/adarank-bench/results",), "results: cannot make or write to /proc/")):
        done = drive(listing, *argv, env=env)
        assert message in error_line(done.returncode, done.stderr, one_line=True), argv
        assert done.stdout == "" and calls(tmp_path) == [] and not (tmp_path / "runs").exists()
    assert not (tmp_path / "results").exists()
    dry = drive(listing, "runs=/proc/adarank-bench/runs", "--dry-run", env=env)  # a dry run makes nothing
    assert dry.returncode == 0 and "1 run(s) to do" in dry.stdout


def test_a_list_that_is_no_file_or_cannot_be_read_ends_in_one_line(tmp_path, monkeypatch, capsys):
    """A named pipe is named as one (reading it would wait for a writer); a list that cannot be read (a
    PermissionError, which root never meets: simulated) is one line too."""
    listing, env = setup(tmp_path, "a src/glue-cola.py\n")
    os.mkfifo(tmp_path / "pipe.list")
    done = drive(tmp_path / "pipe.list", "--dry-run", env=env)
    assert f"{tmp_path / 'pipe.list'} is a named pipe (FIFO), not a file: pass a benchmark list file" in \
        error_line(done.returncode, done.stderr, one_line=True)

    spec = importlib.util.spec_from_file_location("bench_run", DRIVER)
    driver = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_run", driver)  # its dataclasses look their module up
    spec.loader.exec_module(driver)
    read_text = Path.read_text

    def unreadable(path, *args, **kwargs):
        if path.name == "bench.list":
            raise PermissionError(13, "Permission denied", str(path))
        return read_text(path, *args, **kwargs)

    monkeypatch.chdir(tmp_path)  # main() moves to the repository's root: back here after the test
    monkeypatch.setattr(Path, "read_text", unreadable)
    code = driver.main([str(listing), "--dry-run"])
    assert error_line(code, capsys.readouterr().err, one_line=True) == (
        f"error: {listing} cannot be read (Permission denied): make it readable (chmod u+r) or pass another list")


def test_counts_beyond_their_bounds_are_refused(tmp_path):
    """nice above 19 (the lowest priority; nice(1) would clamp it silently), jobs above 64 and threads
    above 1024 (a count that would overflow included), before anything starts."""
    listing, env = setup(tmp_path, "a src/glue-cola.py\n")
    for argv, message in ((("nice=99",), "nice must be 19 or less, not '99' (the lowest priority there is): give "
                                         "nice=19 or less"),
                          (("jobs=99999999999999999999999",), "jobs must be 64 or less, not '99999999999999999999999'"),
                          (("jobs=65",), "jobs must be 64 or less, not '65' (runs side by side"),
                          (("threads=1025",), "threads must be 1024 or less, not '1025'")):
        done = drive(listing, *argv, env=env)
        assert message in error_line(done.returncode, done.stderr, one_line=True), argv
        assert calls(tmp_path) == [] and not (tmp_path / "runs").exists()
    fine = drive(listing, "nice=19", "jobs=64", "threads=1024", "--dry-run", env=env)
    assert fine.returncode == 0 and "64 at a time, 1024 thread(s) each" in fine.stdout

def listed(name: str, *argv: str) -> list[list[str]]:
    """The runs a list in script/bench would start, as --dry-run prints them, with empty results."""
    env = {**os.environ, "PYTHON": "python"}
    done = drive(ROOT / "script" / "bench" / name, "--dry-run", "results=/nonexistent/results",
                 "runs=/nonexistent/runs", "data=.", *argv, env=env)
    assert done.returncode == 0, done.stderr
    return [shlex.split(line) for line in done.stdout.splitlines()[1:]]


def test_the_paper_length_lists(tmp_path):
    new = {
        "adalora-init-lora": "src/glue-cola.py --method adalora --budget small --adalora_init lora",
        "lora-r8": "src/glue-cola.py --method lora --budget large",
        "plateau": "src/custom/glue-cola.py --budget large --r0 2 --delta_r 2 --r_max 8 --eval_every 40 "
                   "--plateau_patience 2 --plateau_min_delta 0",
        "plateau-whitened": "src/custom/glue-cola.py --budget large --r0 2 --delta_r 2 --r_max 8 --eval_every 40 "
                            "--plateau_patience 2 --plateau_min_delta 0 --growth_init whitened",
    }
    runs = listed("cola-fidelity.list", f"configs={' '.join(new)}", "seeds=42")
    for (name, command), run in zip(new.items(), runs, strict=True):
        assert run[0] == f"{name}-seed42"
        assert run[1:] == [*command.split(), "--data_dir", ".", "--num_train_epochs", "25", "--no_bf16",
                           "--seed", "42", "--output_dir", f"/nonexistent/runs/{name}-seed42",
                           "--resume_from_checkpoint", "auto"]
    default = listed("cola-fidelity.list")
    assert [run[0] for run in default[:4]] == ["lora-r2-seed42", "adalora-small-seed42", "adalora-official-seed42",
                                               "lora-official-seed42"] and len(default) == 12
    rte = listed("rte-fidelity.list")
    assert [run[0] for run in rte] == [f"{c}-seed{s}" for s in (42, 43, 44)
                                       for c in ("lora-r2", "adalora-small", "adalora-init-lora")]
    assert all(r[1] == "src/glue-rte.py" and r[r.index("--num_train_epochs") + 1] == "50" and "--bf16" in r
               and "--no_bf16" not in r for r in rte)  # pinned, whatever the CPU's default
    assert "--no_bf16" in listed("rte-fidelity.list", "precision=--no_bf16")[0]
    # The defaults point where the results already are.
    text = (ROOT / "script" / "bench" / "cola-fidelity.list").read_text()
    assert "results = results/fidelity/cola" in text
    assert "results = results/fidelity/rte" in (ROOT / "script" / "bench" / "rte-fidelity.list").read_text()


def test_every_list_names_entry_scripts_that_exist():
    for listing in sorted((ROOT / "script" / "bench").glob("*.list")):
        runs = listed(listing.name)
        for run in runs:
            assert (ROOT / run[1]).is_file(), (listing.name, run[:2])
        if listing.name == "cnndm.list":  # the untrained model trains nothing: no epochs
            by_name = {run[0]: run for run in listed(listing.name, "configs=none lora")}
            assert "--num_train_epochs" not in by_name["none-seed42"] and "--num_train_epochs" in by_name["lora-seed42"]


BENCH = ROOT / "script" / "bench"


@pytest.fixture
def bench(monkeypatch, capsys):
    """Run a bench script's main() in this process, as its command line would: (exit code, stdout, stderr).
    Every case here is refused before anything is measured; a process per case spent seconds importing torch."""
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import bench_cli beside them
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def run(script: str, *argv) -> tuple[int, str, str]:
        spec = importlib.util.spec_from_file_location(f"bench_{Path(script).stem}", BENCH / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        try:
            module.main([str(arg) for arg in argv])
            code = 0
        except SystemExit as stop:
            code = stop.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


PROFILE = [sys.executable, str(BENCH / "profile_step.py")]


# the GLUE folder, or the task's own folder as training takes it; ours with or without --fast_dropout
@pytest.mark.parametrize("folder, flags", [("", ()), ("RTE", ("--fast_dropout", "--copies", "3"))])
def test_the_step_profile_runs_on_real_examples(glue_dir, folder, flags):
    """script/bench/profile_step.py: both models timed and profiled, kinds that add up, the closing lines."""
    done = subprocess.run([*PROFILE, "--data_dir", str(glue_dir / folder), "--task", "rte", "--batch", "4",
                           "--steps", "1", "--profiled", "1", *flags], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert out.startswith("rte: 4 x ") and "fp32" in out.splitlines()[0]
    assert out.splitlines()[0].endswith("ours with --fast_dropout") == bool(flags)
    copies = out.split("ours' copies and casts by input shape")[1:]
    assert len(copies) == bool(flags)
    if flags:  # three groups, each an operation, its ms and calls a step, and the shapes of its inputs
        rows = copies[0].strip().splitlines()[1:]
        assert len(rows) == 3 and all(row.split()[0] in ("aten::copy_", "aten::_to_copy") and "[" in row
                                      for row in rows)
    for label in ("reference", "ours"):
        assert f"{label}: median step " in out
    kinds = ("matrix products", "attention kernels", "copies and casts", "dropout masks", "the rest")
    shares = [float(line.split()[-1].rstrip("%")) for line in out.splitlines() if line.strip().startswith(kinds)]
    assert len(shares) == 10 and abs(sum(shares[:5]) - 100) < 0.5 and abs(sum(shares[5:]) - 100) < 0.5
    assert "speed-up, reference step / ours" in out and "left in ours: " in out


def test_the_step_profile_refuses_a_batch_or_rank_the_task_and_model_cannot_give(glue_dir, bench):
    for flags, message in ((("--batch", "5000"), "error: --batch 5000 is more than the task's 2490 training "
                                                 "examples: give --batch 2490 or fewer"),
                           (("--rank", "1000"), "error: --rank 1000 is more than the 384 singular directions")):
        code, _, err = bench("profile_step.py", "--data_dir", glue_dir, "--task", "rte", *flags)
        assert error_line(code, without_progress_bars(err)).startswith(message), flags


def test_the_step_profile_refuses_bad_input_in_one_line(tmp_path, bench):
    code, _, err = bench("profile_step.py", "--data_dir", tmp_path, "--task", "rte")
    assert "train.tsv" in error_line(code, err, one_line=True)
    code, _, err = bench("profile_step.py", "--data_dir", tmp_path, "--steps", "0")
    assert error_line(code, err, one_line=True) == "error: --steps 0 must be at least 1: give --steps 1 or more"
    code, _, err = bench("profile_step.py", "--data_dir", tmp_path, "--copies", "-1")
    assert "--copies -1 must be at least 0" in error_line(code, err, one_line=True)
    for flag in ("--batch", "--rank", "--profiled"):  # exit 2, as any bad input of the bench scripts
        code, _, err = bench("profile_step.py", "--data_dir", tmp_path, flag, "0")
        assert f"{flag} 0 must be at least 1" in error_line(code, err, one_line=True)


def test_the_step_profile_names_a_damaged_data_folder_in_one_line(tmp_path, bench):
    """A train.tsv without a column, a folder without dev.tsv: the loader's one line, exit 2 as for any
    bad input of the bench scripts."""
    header = "index\tsentence1\tlabel\n0\tA dog runs.\tentailment\n"
    write_glue_task(tmp_path / "columns", header, header, folder="RTE")
    write_glue_task(tmp_path / "dev", header.replace("label", "sentence2\tlabel").replace("runs.", "runs.\tIt runs."),
                    folder="RTE")
    (tmp_path / "dev" / "RTE" / "dev.tsv").unlink()
    for data_dir, message in ((tmp_path / "columns", "RTE/train.tsv:1: header lacks column(s) sentence2"),
                              (tmp_path / "columns" / "RTE", "RTE/train.tsv:1: header lacks column(s) sentence2"),
                              (tmp_path / "dev", f"lacks {tmp_path / 'dev' / 'RTE' / 'dev.tsv'}: point it at")):
        code, _, err = bench("profile_step.py", "--data_dir", data_dir)
        assert message in error_line(code, err, one_line=True), data_dir


def test_the_speed_table_refuses_bad_input_before_it_measures(tmp_path, bench):
    """benchmark_speed.py: --repeat below 1 (no round: no median), an --only name that no configuration
    starts with (an empty table after a matmul measurement), the reference loops without LoRA, and the
    refusals it had (exit 1 then): one line, exit 2, nothing written."""
    work = tmp_path / "speed"
    (tmp_path / "file").write_text("")
    for argv, message in ((("--repeat", "0"), "--repeat 0 must be at least 1: give --repeat 1 or more"),
                          (("--repeat", "-1"), "--repeat -1 must be at least 1"),
                          (("--only", "bogus"), "--only bogus: 'bogus' names no configuration: choose from "
                                                "LoRA,AdaLoRA,QLoRA,QLoRA+AdaLoRA,plateau,reference"),
                          (("--only", "LoRA,Lora"), "'Lora' names no configuration"),
                          (("--only", "reference"), "the reference loops copy the LoRA run's settings: add LoRA"),
                          (("--threads", "0"), "--threads 0: every count must be at least 1"),
                          (("--threads", "1,x"), "--threads 1,x is not a whole number or a list of them"),
                          (("--rank", "0"), "--rank 0 must be at least 1"),
                          (("--repeat", "two"), "argument --repeat: invalid int value: 'two'"),
                          (("--data_dir", "/nonexistent"), "/nonexistent/SST-2/train.tsv does not exist: pass the "
                                                           "GLUE folder"),
                          (("--work_dir", tmp_path / "file" / "speed"),
                           f"{tmp_path / 'file'} is a file, not a folder")):
        code, out, err = bench("benchmark_speed.py", "--quick", "--work_dir", work, *argv)
        assert message in error_line(code, err, one_line=True), argv
        assert out == "" and not work.exists(), argv


def test_the_matmul_rate_refuses_bad_counts_in_one_line(bench):
    """matmul_rate.py: no thread (torch's RuntimeError), no timing (no median), a count torch overflows on."""
    for argv, message in ((("--threads", "0"), "--threads 0 must be at least 1: give --threads 1 or more"),
                          (("--threads", "-1"), "--threads -1 must be at least 1"),
                          (("--threads", "99999999999999999999"), "--threads 99999999999999999999 is more than 1024"),
                          (("--repeats", "0"), "--repeats 0 must be at least 1: give --repeats 1 or more"),
                          (("--repeats", "x"), "argument --repeats: invalid int value: 'x': --help lists every flag")):
        code, out, err = bench("matmul_rate.py", *argv)
        assert message in error_line(code, err, one_line=True), argv
        assert out == "", argv


def test_the_token_cache_benchmark_refuses_bad_input_in_one_line(tmp_path, bench):
    """benchmark_token_cache.py: a task that is not GLUE's (a KeyError before), a data folder without the
    task's files (adarank's UsageError, a traceback before), both before anything is printed."""
    for argv, message in ((("--tasks", "sst2", "bogus"), "invalid choice: 'bogus' (choose from 'cola', 'sst2', "),
                          (("--tasks", "cnndailymail"), "invalid choice: 'cnndailymail'"),
                          (("--data_dir", tmp_path, "--tasks", "rte"), f"--data_dir {tmp_path} lacks "
                                                                       f"{tmp_path / 'RTE' / 'train.tsv'}"),
                          (("--max_seq_length", "0"), "--max_seq_length 0 must be at least 1")):
        code, out, err = bench("benchmark_token_cache.py", *argv)
        assert message in error_line(code, err, one_line=True), argv
        assert out == "", argv


def test_the_reference_loop_refuses_a_run_it_cannot_copy(tmp_path, bench):
    """speed_reference.py: --like without a config.json (a FileNotFoundError before) or with a damaged
    one, --out under a file: one line, nothing written."""
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "config.json").write_text("{")
    (tmp_path / "file").write_text("")
    out = tmp_path / "out"
    for like, where, message in (
            (tmp_path / "none", out, f"--like {tmp_path / 'none'} holds no config.json: give the directory of a "
                                     "finished LoRA run"),
            (tmp_path / "damaged", out, f"{tmp_path / 'damaged' / 'config.json'} cannot be read as JSON"),
            (tmp_path / "damaged", tmp_path / "file", f"--out {tmp_path / 'file'}: {tmp_path / 'file'} is a file")):
        code, _, err = bench("speed_reference.py", "--reference", "padded", "--like", like, "--out", where)
        assert message in error_line(code, err, one_line=True), like
        assert not out.exists() and (tmp_path / "file").read_text() == ""
