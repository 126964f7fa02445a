"""The figures of benchmark_speed.py: medians over rounds, the table's rows, the ratios, Markdown."""

from __future__ import annotations

import statistics

from matmul import flops_per_step

SPEED_FIGURES = ("median_step_seconds", "train_examples_per_second", "eval_examples_per_second", "peak_memory_mb",
                 "allocation_seconds_per_step", "train_seconds")
RATIO_NAMES = {
    "adalora_over_lora": "AdaLoRA / LoRA step time (same init rank)",
    "allocation_share_of_adalora_step": "AdaLoRA's allocation, share of its step",
    "qlora_over_lora": "QLoRA / LoRA step time", "qadalora_over_adalora": "QLoRA+AdaLoRA / AdaLoRA step time",
    "bf16_over_fp32_throughput": "LoRA bf16 / fp32 training throughput",
    "ours_over_reference": "LoRA / padded reference loop, throughput",
    "ours_over_dynamic_reference": "LoRA / dynamic-padding reference loop, throughput",
    "fused_over_peft_forward": "LoRA, fused / PEFT's layer forward, throughput",
    "fast_dropout_over_dynamic_reference": "LoRA with --fast_dropout / dynamic-padding reference loop, throughput",
}


def median_run(runs: list[dict]) -> dict:
    """One run's figures, each speed figure replaced by its median over the rounds."""
    merged = dict(runs[-1])
    for key in SPEED_FIGURES:
        values = [run[key] for run in runs if run.get(key) is not None]
        if values:
            merged[key] = statistics.median(values)
    merged["rounds"] = len(runs)
    return merged


def rows_of(results: dict, shapes: dict, rank: int, peak: dict, default: str, extra: str | None) -> list[dict]:
    """A table row a run: its speed, precision and achieved share of the matmul rate."""
    rows = []
    for label, r in results.items():
        # The adapters as computed: LoRA's and AdaLoRA's at their (initial) rank, masked or not; the
        # plateau method's average over its growth.
        adapter_params = (r["average_adapter_params"] if "plateau" in label
                          else rank * sum(i + o for i, o in shapes["linears"]))
        achieved = flops_per_step(r, shapes, adapter_params) / r["median_step_seconds"] / 1e9
        dtype = extra if extra and label.endswith(extra) else default
        rows.append({"run": label, "median_step_s": r["median_step_seconds"],
                     "train_examples_per_s": r["train_examples_per_second"],
                     "eval_examples_per_s": r["eval_examples_per_second"], "peak_memory_mb": r["peak_memory_mb"],
                     "steps": r["total_step"], "tokens_per_step": r["train_tokens"] / r["total_step"],
                     "precision": dtype, "achieved_gflops": achieved, "fraction_of_peak": achieved / peak[dtype],
                     "allocation_s_per_step": r.get("allocation_seconds_per_step")})
    return rows


def ratios_of(results: dict, rank: int) -> dict:
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
        "fast_dropout_over_dynamic_reference": divide(rate(f"LoRA r={rank}, fast dropout"),
                                                      rate("reference, dynamic padding")),
    }


def markdown_table(rows: list[dict], peak: dict, tokens: int, ratios: dict) -> str:
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
    for key, value in ratios.items():
        if value is not None:
            lines.append(f"- {RATIO_NAMES[key]}: {value:.2f}")
    return "\n".join(lines)
