"""Training speed of every method side by side: same model, data and number of steps, one run after
another in one invocation, against two reference loops written the way the usual examples are
(PEFT LoRA and the plain Trainer: every sentence padded to 128, or dynamic padding with length
grouping; speed_reference.py), and against the machine's own matmul rate (matmul.py).

    python script/bench/benchmark_speed.py [--quick] [--data_dir ../shared/data/glue_data] [--threads N]
        [--train_examples 2000] [--epochs 2] [--rank 3] [--repeat 1] [--work_dir runs/speed]

Every run is its own process (so that its peak memory is its own), on SST-2 with the embedded
MiniLM, without evaluation or checkpoints while training; the dev set is scored once at the end
for the evaluation rate. Without GLUE files (no --data_dir) the runs use the synthetic demo data.
After the table come four lines for scripts:
    ratio adalora_over_lora X.XX              AdaLoRA's median step time / LoRA's, same init rank
    ratio ours_over_reference X.XX            LoRA training examples/s / the padded reference loop's
    ratio ours_over_dynamic_reference X.XX    ... / the dynamic-padding reference loop's
    fraction_of_matmul_peak X.XX              LoRA's achieved GFLOP/s / the machine's matmul rate (fp32)

A run's FLOPs: for every token the model computed on (padding included), each linear layer of the
encoder costs 2 x in x out forward and as much again for the gradient of its input (the frozen weight
needs none), attention 4 x length x width per layer forward and twice that backward, and the adapters
2 x r x (in + out) forward and twice that backward. The machine's rate is measured at the same
matrix shapes (one optimizer step's tokens x each layer's in and out), forward and backward shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_cli import (at_least, command_line, exits_cleanly_on_usage_errors, folder_to_write, threads_at_most,
                       UsageError)
from matmul import model_shapes, step_matmul_rate
from speed_table import markdown_table, median_run, ratios_of, rows_of

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))

QUICK = {"train_examples": 640, "epochs": 1, "eval_examples": 256}
FULL = {"train_examples": 2000, "epochs": 2, "eval_examples": 872}


# The entry scripts of each task: (LoRA and AdaLoRA, the 4-bit methods, the plateau method). SST-2's
# sentences are 13 tokens on average, RTE's pairs about 70: the sequence-length axis of the table.
SCRIPTS = {
    "sst2": ("src/glue_sst2.py", "src/src_qlora/glue_sst2.py", "src/custom/glue_sst2.py"),
    "rte": ("src/glue-rte.py", "src/glue-rte.py", "src/custom/glue-rte.py"),
}
FOLDERS = {"sst2": "SST-2", "rte": "RTE"}


def configurations(rank: int, extra_precision: str | None, quick: bool,
                   task: str = "sst2") -> list[tuple[str, str, list[str]]]:
    """(label, kind, the run's own flags); kind: ours or reference. ``extra_precision``: a second LoRA
    row in the precision that is not the default (fp32 where bf16 is the default; bf16 on a CPU with
    bf16 units where fp32 is). Not in --quick: LoRA with PEFT's own layer forward, which shows what
    the fused forward saves, and LoRA with --fast_dropout's masks."""
    plain, four_bit, plateau = SCRIPTS[task]
    runs = [
        (f"LoRA r={rank}", "ours", [plain, "--method", "lora", "--lora_r", str(rank)]),
        *([] if quick else [(f"LoRA r={rank}, PEFT forward", "ours",
                             [plain, "--method", "lora", "--lora_r", str(rank), "--peft_forward"]),
                            (f"LoRA r={rank}, fast dropout", "ours",
                             [plain, "--method", "lora", "--lora_r", str(rank), "--fast_dropout"])]),
        (f"AdaLoRA {rank}->2", "ours", [plain, "--method", "adalora", "--init_r", str(rank), "--target_r", "2"]),
        (f"QLoRA r={rank}", "ours", [four_bit, "--method", "qlora", "--lora_r", str(rank)]),
        (f"QLoRA+AdaLoRA {rank}->2", "ours", [four_bit, "--method", "qadalora", "--init_r", str(rank),
                                              "--target_r", "2"]),
        ("plateau (from r=2)", "ours", [plateau, "--method", "plateau"]),
    ]
    if extra_precision:
        runs.append((f"LoRA r={rank} {extra_precision}", "ours",
                     [plain, "--method", "lora", "--lora_r", str(rank),
                      "--bf16" if extra_precision == "bf16" else "--no_bf16"]))
    runs += [
        ("reference, padded to 128", "reference", ["--reference", "padded"]),
        ("reference, dynamic padding", "reference", ["--reference", "dynamic"]),
    ]
    return runs


def precisions() -> tuple[str, str | None]:
    """The runs' default precision here, and the other one worth a row (None: not worth it)."""
    import torch

    from adarank.precision import bf16_by_default, cpu_has_bf16_units
    from adarank.tasks import TASKS

    default = "bf16" if bf16_by_default(TASKS["sst2"]) else "fp32"
    if default == "bf16":
        return default, "fp32"
    return default, "bf16" if not torch.cuda.is_available() and cpu_has_bf16_units() else None


# ---------------------------------------------------------------- the runs


def run_ours(flags: list[str], out: Path, sizes: dict, data: list[str], threads: int) -> dict:
    argv = [sys.executable, *flags, *data, "--max_train_samples", str(sizes["train_examples"]),
            "--max_eval_samples", str(sizes["eval_examples"]), "--num_train_epochs", str(sizes["epochs"]),
            "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "1000", "--seed", "42",
            "--output_dir", str(out)]
    _run(argv, out, threads)
    return json.loads((out / "metrics.json").read_text()) | {"config": json.loads((out / "config.json").read_text())}


def run_reference(flags: list[str], out: Path, lora: dict, sizes: dict, data: list[str], threads: int) -> dict:
    bf16 = lora["config"]["precision"]["bf16_autocast"]  # the LoRA run's precision
    argv = [sys.executable, str(HERE / "speed_reference.py"), *flags, *(["--bf16"] if bf16 else []),
            "--task", lora["config"]["task"],
            "--like", str(lora["config"]["run_dir"]),
            *(flag for flag in data if flag != "--demo"),  # without --data_dir: the demo data
            "--train_examples", str(sizes["train_examples"]), "--eval_examples", str(sizes["eval_examples"]),
            "--epochs", str(sizes["epochs"]), "--out", str(out)]
    _run(argv, out, threads)
    return json.loads((out / "metrics.json").read_text())


def _run(argv: list[str], out: Path, threads: int) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    (out.parent / f"{out.name}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise SystemExit(f"error: {' '.join(argv[1:3])} failed (exit {done.returncode}):\n" + "\n".join(tail))


# ---------------------------------------------------------------- the table


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = command_line(__doc__)
    parser.add_argument("--quick", action="store_true", help="demo data, 20 steps a run: 3 minutes on 2 cores, a first look (too few steps for stable ratios)")
    parser.add_argument("--data_dir", default=None, help="GLUE folder with SST-2/ and RTE/ (default: synthetic demo data)")
    parser.add_argument("--task", choices=sorted(SCRIPTS), default="sst2",
                        help="sst2 (13 tokens a sentence on average) or rte (pairs of about 70)")
    parser.add_argument("--train_examples", type=int)
    parser.add_argument("--eval_examples", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--rank", type=int, default=3, help="LoRA's rank and AdaLoRA's initial rank")
    parser.add_argument("--threads", default=str(os.cpu_count()),
                        help="threads of every run; a list (1,2) runs the whole table once per thread count")
    parser.add_argument("--work_dir", default="runs/speed")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over the whole list; figures are medians")
    parser.add_argument("--only", help="comma-separated labels' first words to run (e.g. LoRA,AdaLoRA,reference)")
    args = parser.parse_args(argv)
    at_least(1, train_examples=args.train_examples, eval_examples=args.eval_examples, epochs=args.epochs,
             rank=args.rank, repeat=args.repeat)
    folder = FOLDERS[args.task]
    if args.data_dir is not None and not (Path(args.data_dir) / folder / "train.tsv").is_file():
        raise UsageError(f"{args.data_dir}/{folder}/train.tsv does not exist: pass the GLUE folder as --data_dir")
    try:
        args.thread_counts = [int(n) for n in args.threads.split(",")]
    except ValueError:
        raise UsageError(f"--threads {args.threads} is not a whole number or a list of them: give e.g. "
                         "--threads 2 or --threads 1,2") from None
    if min(args.thread_counts) < 1:
        raise UsageError(f"--threads {args.threads}: every count must be at least 1: give e.g. --threads 1 or 1,2")
    threads_at_most("threads", args.thread_counts)
    folder_to_write(args.work_dir, "work_dir")
    check_only(args.only, args.rank, args.task)
    return args


def check_only(only: str | None, rank: int, task: str) -> None:
    """Refuse an --only name that no configuration's label starts with, and the reference loops
    without LoRA (they copy the LoRA run's settings)."""
    if not only:
        return
    names = list(dict.fromkeys(label.split()[0].rstrip(",") for label, _, _ in configurations(rank, None, False, task)))
    unknown = [name for name in only.split(",") if name not in names]
    if unknown:
        raise UsageError(f"--only {only}: '{unknown[0]}' names no configuration: choose from {','.join(names)}")
    if "reference" in only.split(",") and "LoRA" not in only.split(","):
        raise UsageError(f"--only {only}: the reference loops copy the LoRA run's settings: add LoRA (LoRA,reference)")


def run_rounds(args: argparse.Namespace, sizes: dict, chosen: list, data: list[str], work: Path,
               threads: int) -> dict[str, dict]:
    """With --repeat N the whole list runs N times, round after round (so that a slow spell of the
    machine falls on every configuration alike); each figure is the median over the rounds."""
    rounds: dict[str, list[dict]] = {label: [] for label, _, _ in chosen}
    for round_index in range(args.repeat):
        for label, kind, flags in chosen:
            started = time.perf_counter()
            out = work / label.replace(" ", "_").replace(",", "").replace("->", "to").replace("(", "").replace(")", "")
            if kind == "ours":
                rounds[label].append(run_ours(flags, out, sizes, data, threads))
            else:
                lora = rounds[f"LoRA r={args.rank}"][-1]  # --only with reference but not LoRA: refused up front
                rounds[label].append(run_reference(flags, out, lora, sizes, data, threads))
            step = rounds[label][-1]["median_step_seconds"]
            print(f"  {label}{f' (round {round_index + 1})' if args.repeat > 1 else ''}: "
                  f"{time.perf_counter() - started:.0f} s, median step {step:.4f} s", flush=True)
    return {label: median_run(runs) for label, runs in rounds.items()}


def report(args: argparse.Namespace, sizes: dict, results: dict, default: str, extra: str | None, work: Path,
           threads: int) -> None:
    """The table, speed.md and speed.json in the work folder, and the lines for scripts."""
    shapes = model_shapes(None)
    lora_label = f"LoRA r={args.rank}"
    tokens = round(results[lora_label]["train_tokens"] / results[lora_label]["total_step"]) if lora_label in results \
        else 32 * 16
    peak = {precision: step_matmul_rate(shapes, tokens, {"fp32": "float32", "bf16": "bfloat16"}[precision])
            for precision in (default, extra) if precision}
    rows = rows_of(results, shapes, args.rank, peak, default, extra)
    ratios = ratios_of(results, args.rank)
    text = markdown_table(rows, peak, tokens, ratios)
    print(text)
    work.mkdir(parents=True, exist_ok=True)
    (work / "speed.md").write_text(text + "\n")
    (work / "speed.json").write_text(json.dumps({"task": args.task, "sizes": sizes, "threads": threads,
                                                 "matmul_gflops": peak,
                                                 "rows": rows, "ratios": ratios}, indent=2))
    for name in ("adalora_over_lora", "ours_over_reference", "ours_over_dynamic_reference"):
        if ratios.get(name) is not None:
            print(f"ratio {name} {ratios[name]:.2f}")
    fp32_label = lora_label if default == "fp32" else f"{lora_label} fp32"
    lora_row = next((row for row in rows if row["run"] == fp32_label), None)
    if lora_row:
        print(f"fraction_of_matmul_peak {lora_row['fraction_of_peak']:.2f}")


@exits_cleanly_on_usage_errors
def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    sizes = dict(QUICK if args.quick else FULL)
    for key in sizes:
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    data = ["--data_dir", args.data_dir] if args.data_dir else ["--demo"]
    import torch

    default, extra = precisions()
    chosen = [(label, kind, flags) for label, kind, flags in configurations(args.rank, extra, args.quick, args.task)
              if not args.only or label.split()[0].rstrip(",") in args.only.split(",")]
    for threads in args.thread_counts:
        torch.set_num_threads(threads)
        device = (f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else
                  f"{threads} CPU thread(s), capability {torch.backends.cpu.get_cpu_capability()}")
        print(f"{FOLDERS[args.task]} ({'GLUE files' if args.data_dir else 'synthetic demo data'}), "
              f"{sizes['train_examples']} training examples x {sizes['epochs']} epoch(s), {device}, runs in {default}"
              + (f" (and LoRA in {extra})" if extra else ""), flush=True)
        # One folder a table: the default (SST-2, one thread count) where it always was.
        work = Path(args.work_dir)
        if args.task != "sst2" or len(args.thread_counts) > 1:
            work = work / f"{args.task}-{threads}-threads"
        results = run_rounds(args, sizes, chosen, data, work, threads)
        report(args, sizes, results, default, extra, work, threads)


if __name__ == "__main__":
    main()
