"""Training speed of every method side by side: same model, data and number of steps, one run after
another in one invocation, against two reference loops written the way the usual examples are
(PEFT LoRA and the plain Trainer: every sentence padded to 128, or dynamic padding with length
grouping), and against the machine's own matmul rate.

    python script/benchmark_speed.py [--quick] [--data_dir ../shared/data/glue_data] [--threads N]
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
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

QUICK = {"train_examples": 640, "epochs": 1, "eval_examples": 256}
FULL = {"train_examples": 2000, "epochs": 2, "eval_examples": 872}


def configurations(rank: int, extra_precision: str | None, quick: bool) -> list[tuple[str, str, list[str]]]:
    """(label, kind, the run's own flags); kind: ours or reference. ``extra_precision``: a second LoRA
    row in the precision that is not the default (fp32 where bf16 is the default; bf16 on a CPU with
    bf16 units where fp32 is). Not in --quick: LoRA with PEFT's own layer forward, which shows what
    the fused forward saves."""
    runs = [
        (f"LoRA r={rank}", "ours", ["src/glue_sst2.py", "--method", "lora", "--lora_r", str(rank)]),
        *([] if quick else [(f"LoRA r={rank}, PEFT forward", "ours",
                             ["src/glue_sst2.py", "--method", "lora", "--lora_r", str(rank), "--peft_forward"])]),
        (f"AdaLoRA {rank}->2", "ours", ["src/glue_sst2.py", "--method", "adalora", "--init_r", str(rank),
                                        "--target_r", "2"]),
        (f"QLoRA r={rank}", "ours", ["src/src_qlora/glue_sst2.py", "--method", "qlora", "--lora_r", str(rank)]),
        (f"QLoRA+AdaLoRA {rank}->2", "ours", ["src/src_qlora/glue_sst2.py", "--method", "qadalora",
                                              "--init_r", str(rank), "--target_r", "2"]),
        ("plateau (from r=2)", "ours", ["src/custom/glue_sst2.py", "--method", "plateau"]),
    ]
    if extra_precision:
        runs.append((f"LoRA r={rank} {extra_precision}", "ours",
                     ["src/glue_sst2.py", "--method", "lora", "--lora_r", str(rank),
                      "--bf16" if extra_precision == "bf16" else "--no_bf16"]))
    runs += [
        ("reference, padded to 128", "reference", ["--reference", "padded"]),
        ("reference, dynamic padding", "reference", ["--reference", "dynamic"]),
    ]
    return runs


def precisions() -> tuple[str, str | None]:
    """The runs' default precision here, and the other one worth a row (None: not worth it)."""
    import torch

    from adarank.arguments import bf16_by_default, cpu_has_bf16_units
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
    argv = [sys.executable, __file__, *flags, *(["--bf16"] if bf16 else []), "--like", str(lora["config"]["run_dir"]),
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


def reference_loop(args: argparse.Namespace) -> None:
    """A LoRA fine-tuning loop as the usual examples write it: PEFT and the plain Trainer, with the
    settings of the LoRA run given by --like (rank, alpha, dropout, modules, learning rate, batch)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, default_data_collator)

    from adarank.memory import PeakMemory
    from adarank.run.callbacks import StepTimer
    from adarank.tasks import get_task

    like = json.loads((Path(args.like) / "config.json").read_text())
    training = like["arguments"]["training"]
    task = get_task("sst2")
    data = task.load_data(args.data_dir, args.data_dir is None, args.train_examples, args.eval_examples)
    path = like["arguments"]["model"]["model_name_or_path"]
    if path is None:
        from adarank.models import embedded_model_path
        path = embedded_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    adapter = like["adapter"]
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=adapter["r"],
                                             lora_alpha=adapter["lora_alpha"], lora_dropout=adapter["lora_dropout"],
                                             target_modules=like["target_modules"]))
    padded = args.reference == "padded"

    def encode(batch):
        return tokenizer(batch["text_a"], truncation=True, max_length=128,
                         padding="max_length" if padded else False)

    train, dev = (split.map(encode, batched=True, remove_columns=[c for c in split.column_names if c != "label"])
                  for split in (data.train, next(iter(data.dev.values()))))
    timer = StepTimer()
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(Path(args.out) / "trainer"), per_device_train_batch_size=training["per_device_train_batch_size"],
            per_device_eval_batch_size=training["per_device_eval_batch_size"], learning_rate=training["learning_rate"],
            weight_decay=training["weight_decay"], warmup_steps=training["warmup_steps"],
            num_train_epochs=args.epochs, eval_strategy="no", save_strategy="no", logging_steps=1000,
            report_to="none", seed=42, bf16=args.bf16, use_cpu=not torch.cuda.is_available(),
            train_sampling_strategy="random" if padded else "group_by_length"),
        train_dataset=train, data_collator=default_data_collator if padded else DataCollatorWithPadding(tokenizer),
        callbacks=[timer])
    with PeakMemory() as peak:
        outcome = trainer.train()
    started = time.perf_counter()
    trainer.evaluate(dev)
    eval_seconds = time.perf_counter() - started
    metrics = {**timer.report(), "train_examples_per_second": outcome.metrics["train_samples_per_second"],
               "train_seconds": outcome.metrics["train_runtime"], "eval_examples_per_second": len(dev) / eval_seconds,
               "total_step": trainer.state.global_step,
               "peak_memory_mb": peak.report()["peak_memory_mb"], "threads": torch.get_num_threads()}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "metrics.json").write_text(json.dumps(metrics, indent=2))


# ---------------------------------------------------------------- FLOPs and the machine's rate


def model_shapes(path: str | None) -> dict:
    """The encoder's linear layers (in, out), its width and depth."""
    from torch import nn
    from transformers import AutoConfig, AutoModel

    from adarank.models import embedded_model_path

    model = AutoModel.from_config(AutoConfig.from_pretrained(path or embedded_model_path()))
    linears = [(m.in_features, m.out_features) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and ".layer." in f".{name}."]
    return {"linears": linears, "width": model.config.hidden_size, "layers": model.config.num_hidden_layers}


def flops_per_step(result: dict, shapes: dict, adapter_params: float) -> float:
    tokens = result["train_tokens"] / result["total_step"]
    examples = result["train_examples_per_second"] * result["train_seconds"] / result["total_step"]
    length = tokens / examples  # mean padded length of a sequence
    linear = sum(4 * i * o for i, o in shapes["linears"])
    attention = 12 * length * shapes["width"] * shapes["layers"]
    adapters = 6 * adapter_params  # each adapter weight: once forward, twice backward
    return tokens * (linear + attention + adapters)


def matmul_rate(shapes: dict, tokens: int, dtype: str, repeats: int = 30) -> float:
    """GFLOP/s over one step's matmuls: every linear layer forward (tokens x in @ in x out) and the
    gradient of its input (tokens x out @ out x in), FLOP-weighted."""
    import torch

    kind = getattr(torch, dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    seconds = flops = 0.0
    for i, o in sorted(set(shapes["linears"])):
        count = shapes["linears"].count((i, o))
        for k, n in ((i, o), (o, i)):
            a, b = torch.randn(tokens, k, dtype=kind, device=device), torch.randn(k, n, dtype=kind, device=device)
            for _ in range(3):
                a @ b
            sync()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                a @ b
                sync()
                times.append(time.perf_counter() - start)
            seconds += count * statistics.median(times)
            flops += count * 2 * tokens * k * n
    return flops / seconds / 1e9


# ---------------------------------------------------------------- the table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="demo data, 20 steps a run: 3 minutes on 2 cores, a first look (too few steps for stable ratios)")
    parser.add_argument("--data_dir", default=None, help="GLUE folder with SST-2/ (default: synthetic demo data)")
    parser.add_argument("--train_examples", type=int)
    parser.add_argument("--eval_examples", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--rank", type=int, default=3, help="LoRA's rank and AdaLoRA's initial rank")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of every run")
    parser.add_argument("--work_dir", default="runs/speed")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over the whole list; figures are medians")
    parser.add_argument("--only", help="comma-separated labels' first words to run (e.g. LoRA,AdaLoRA,reference)")
    parser.add_argument("--reference", choices=["padded", "dynamic"], help=argparse.SUPPRESS)
    parser.add_argument("--like", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference:
        return reference_loop(args)

    sizes = dict(QUICK if args.quick else FULL)
    for key in sizes:
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    if args.data_dir is not None and not (Path(args.data_dir) / "SST-2" / "train.tsv").is_file():
        raise SystemExit(f"error: {args.data_dir}/SST-2/train.tsv does not exist: pass the GLUE folder as --data_dir")
    data = ["--data_dir", args.data_dir] if args.data_dir else ["--demo"]
    work = Path(args.work_dir)
    import torch

    torch.set_num_threads(args.threads)
    default, extra = precisions()
    device = (f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else
              f"{args.threads} CPU thread(s), capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"SST-2 ({'GLUE files' if args.data_dir else 'synthetic demo data'}), {sizes['train_examples']} training "
          f"examples x {sizes['epochs']} epoch(s), {device}, runs in {default}"
          + (f" (and LoRA in {extra})" if extra else ""), flush=True)

    # With --repeat N the whole list runs N times, round after round (so that a slow spell of the
    # machine falls on every configuration alike); each figure is the median over the rounds.
    chosen = [(label, kind, flags) for label, kind, flags in configurations(args.rank, extra, args.quick)
              if not args.only or label.split()[0].rstrip(",") in args.only.split(",")]
    rounds: dict[str, list[dict]] = {label: [] for label, _, _ in chosen}
    for round_index in range(args.repeat):
        for label, kind, flags in chosen:
            started = time.perf_counter()
            out = work / label.replace(" ", "_").replace(",", "").replace("->", "to").replace("(", "").replace(")", "")
            if kind == "ours":
                rounds[label].append(run_ours(flags, out, sizes, data, args.threads))
            else:
                lora = rounds.get(f"LoRA r={args.rank}")
                if not lora:
                    raise SystemExit("error: the reference loops copy the LoRA run's settings: include LoRA in --only")
                rounds[label].append(run_reference(flags, out, lora[-1], sizes, data, args.threads))
            print(f"  {label}{f' (round {round_index + 1})' if args.repeat > 1 else ''}: "
                  f"{time.perf_counter() - started:.0f} s, median step {rounds[label][-1]['median_step_seconds']:.4f} s",
                  flush=True)
    results = {label: _median_run(runs) for label, runs in rounds.items()}

    shapes = model_shapes(None)
    lora_label = f"LoRA r={args.rank}"
    tokens = round(results[lora_label]["train_tokens"] / results[lora_label]["total_step"]) if lora_label in results \
        else 32 * 16
    peak = {precision: matmul_rate(shapes, tokens, {"fp32": "float32", "bf16": "bfloat16"}[precision])
            for precision in (default, extra) if precision}
    rows = []
    for label, r in results.items():
        # The adapters as computed: LoRA's and AdaLoRA's at their (initial) rank, masked or not; the
        # plateau method's average over its growth.
        adapter_params = (r["average_adapter_params"] if "plateau" in label
                          else args.rank * sum(i + o for i, o in shapes["linears"]))
        achieved = flops_per_step(r, shapes, adapter_params) / r["median_step_seconds"] / 1e9
        dtype = extra if extra and label.endswith(extra) else default
        rows.append({"run": label, "median_step_s": r["median_step_seconds"],
                     "train_examples_per_s": r["train_examples_per_second"],
                     "eval_examples_per_s": r["eval_examples_per_second"], "peak_memory_mb": r["peak_memory_mb"],
                     "steps": r["total_step"], "tokens_per_step": r["train_tokens"] / r["total_step"],
                     "precision": dtype, "achieved_gflops": achieved, "fraction_of_peak": achieved / peak[dtype],
                     "allocation_s_per_step": r.get("allocation_seconds_per_step")})
    ratios = _ratios(results, args.rank)
    text = _table(rows, peak, tokens, ratios)
    print(text)
    work.mkdir(parents=True, exist_ok=True)
    (work / "speed.md").write_text(text + "\n")
    (work / "speed.json").write_text(json.dumps({"sizes": sizes, "threads": args.threads, "matmul_gflops": peak,
                                                 "rows": rows, "ratios": ratios}, indent=2))
    for name in ("adalora_over_lora", "ours_over_reference", "ours_over_dynamic_reference"):
        if ratios.get(name) is not None:
            print(f"ratio {name} {ratios[name]:.2f}")
    fp32_label = lora_label if default == "fp32" else f"{lora_label} fp32"
    lora_row = next((row for row in rows if row["run"] == fp32_label), None)
    if lora_row:
        print(f"fraction_of_matmul_peak {lora_row['fraction_of_peak']:.2f}")


SPEED_FIGURES = ("median_step_seconds", "train_examples_per_second", "eval_examples_per_second", "peak_memory_mb",
                 "allocation_seconds_per_step", "train_seconds")


def _median_run(runs: list[dict]) -> dict:
    """One run's figures, each speed figure replaced by its median over the rounds."""
    merged = dict(runs[-1])
    for key in SPEED_FIGURES:
        values = [run[key] for run in runs if run.get(key) is not None]
        if values:
            merged[key] = statistics.median(values)
    merged["rounds"] = len(runs)
    return merged


def _ratios(results: dict, rank: int) -> dict:
    def step(label):
        return results[label]["median_step_seconds"] if label in results else None

    def rate(label):
        return results[label]["train_examples_per_second"] if label in results else None

    def divide(a, b):
        return a / b if a is not None and b else None

    lora, ada = f"LoRA r={rank}", f"AdaLoRA {rank}->2"
    allocation = results.get(ada, {}).get("allocation_seconds_per_step")
    return {
        "adalora_over_lora": divide(step(ada), step(lora)),
        "allocation_share_of_adalora_step": divide(allocation, step(ada)),
        "qlora_over_lora": divide(step(f"QLoRA r={rank}"), step(lora)),
        "qadalora_over_adalora": divide(step(f"QLoRA+AdaLoRA {rank}->2"), step(ada)),
        "bf16_over_fp32_throughput": divide(rate(f"LoRA r={rank} bf16"), rate(lora))
        or divide(rate(lora), rate(f"LoRA r={rank} fp32")),
        "ours_over_reference": divide(rate(lora), rate("reference, padded to 128")),
        "ours_over_dynamic_reference": divide(rate(lora), rate("reference, dynamic padding")),
        "fused_over_peft_forward": divide(rate(lora), rate(f"LoRA r={rank}, PEFT forward")),
    }


def _table(rows: list[dict], peak: dict, tokens: int, ratios: dict) -> str:
    lines = ["| run | precision | median step (s) | train examples/s | eval examples/s | peak memory (MB) | "
             "tokens/step | achieved GFLOP/s | of matmul rate |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['run']} | {row['precision']} | {row['median_step_s']:.4f} | "
                     f"{row['train_examples_per_s']:.1f} | {row['eval_examples_per_s']:.1f} | "
                     f"{row['peak_memory_mb']:.0f} | {row['tokens_per_step']:.0f} | "
                     f"{row['achieved_gflops']:.1f} | {100 * row['fraction_of_peak']:.0f}% |")
    lines.append("")
    lines.append("Machine's matmul rate at these shapes (" + f"{tokens} tokens per step): " + ", ".join(
        f"{precision} {rate:.0f} GFLOP/s" for precision, rate in peak.items()))
    names = {"adalora_over_lora": "AdaLoRA / LoRA step time (same init rank)",
             "allocation_share_of_adalora_step": "AdaLoRA's allocation, share of its step",
             "qlora_over_lora": "QLoRA / LoRA step time", "qadalora_over_adalora": "QLoRA+AdaLoRA / AdaLoRA step time",
             "bf16_over_fp32_throughput": "LoRA bf16 / fp32 training throughput",
             "ours_over_reference": "LoRA / padded reference loop, throughput",
             "ours_over_dynamic_reference": "LoRA / dynamic-padding reference loop, throughput",
             "fused_over_peft_forward": "LoRA, fused / PEFT's layer forward, throughput"}
    for key, value in ratios.items():
        if value is not None:
            lines.append(f"- {names[key]}: {value:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
