#!/usr/bin/env python3
"""Where a LoRA training step's time goes, with and without the project's fast paths: one batch of
real examples at the task's median length, the same PEFT LoRA model twice (once as the usual
examples train it, once with the fused adapter forward and, under bf16 autocast on the CPU, the
frozen weights held in bf16, as a run of the project takes them; with --fast_dropout, also the
dropout masks that flag draws), forward, backward and AdamW step, timed and then profiled.

    python script/bench/profile_step.py --data_dir ../shared/data/glue_data [--task rte|sst2] [--bf16]
        [--fast_dropout] [--batch 32] [--rank 3] [--steps 10] [--profiled 3] [--copies N]

Prints, for each model, the median step (wall clock, unprofiled, the two models taking turns) and
the profile's self CPU time per step by kind: matrix products (mm, addmm, bmm and their in-place
forms), attention kernels, copies and casts (copy_, _to_copy), dropout masks, the rest; then the
top operations. The last lines give the speed-up of ours over the reference (reference step / ours)
and what is left to remove in ours: its profiled step over the same step without any copy, cast or
dropout mask (what a step would gain if they all went and nothing else changed; the profile's own
overhead and this machine's noise are in both figures). With --copies N, ours' N costliest groups of
copies and casts by the shapes of their inputs, from one more profile that records shapes.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from bench_cli import at_least, command_line, exits_cleanly_on_usage_errors

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

KINDS = {
    "matrix products": ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::matmul"),
    "attention kernels": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                          "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
    "copies and casts": ("aten::copy_", "aten::_to_copy"),
    "dropout masks": ("aten::bernoulli_", "aten::native_dropout", "aten::native_dropout_backward",
                      "aten::random_", "aten::bitwise_and", "aten::lt"),  # the last three: --fast_dropout's masks
}


def training_examples(task_name: str, data_dir: str):
    """The task's training split, read as the training scripts read it: ``data_dir`` is the GLUE
    folder or the task's own folder (a missing file or column: adarank's UsageError, one line)."""
    from adarank.tasks import get_task

    return get_task(task_name).load_data(data_dir, False, None, 1).train


def one_batch(train, batch: int, tokenizer) -> dict:
    """A batch as length grouping makes one, at the task's median length: of up to 64 x ``batch``
    training examples (a seeded draw), the ``batch`` around the median token count, padded to the
    longest of them."""
    from transformers import DataCollatorWithPadding

    train = train.shuffle(seed=0)
    train = train.select(range(min(len(train), 64 * batch)))
    texts = [list(train[c]) for c in ("text_a", "text_b") if c in train.column_names]
    encoded = tokenizer(*texts, truncation=True, max_length=128)
    labels = list(train["label"])
    by_length = sorted(range(len(labels)), key=lambda i: len(encoded["input_ids"][i]))
    middle = by_length[max(0, len(by_length) // 2 - batch // 2):][:batch]
    return DataCollatorWithPadding(tokenizer)(
        [{k: encoded[k][i] for k in encoded} | {"labels": labels[i]} for i in middle])


def lora_model(rank: int, fast: bool, bf16: bool, fast_dropout: bool):
    """The project's LoRA on the embedded MiniLM (every linear layer of the encoder, lora_dropout 0),
    as the usual examples build it (``fast`` False) or with the fast paths a run of the project takes."""
    from speed_reference import load_peft_model

    from adarank.fast_paths import apply_fast_paths

    torch.manual_seed(0)
    tokenizer, model = load_peft_model({"adapter": {"r": rank, "lora_alpha": 16, "lora_dropout": 0.0}}, None)
    if fast:
        apply_fast_paths(model, fused=True, bf16_weights=bf16, fast_dropout=fast_dropout)
    return tokenizer, model.train()


def step(model, optimizer, batch: dict, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def timed_steps(models: dict, batch: dict, bf16: bool, steps: int) -> dict:
    """Each model's step times (s), the models taking turns step by step (so that a machine whose speed
    drifts slows them alike), after 3 warm-up steps each; and each model's optimizer."""
    optimizers = {name: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
                  for name, model in models.items()}
    for name, model in models.items():
        for _ in range(3):  # kernels and optimizer state
            step(model, optimizers[name], batch, bf16)
    seconds = {name: [] for name in models}
    for _ in range(steps):
        for name, model in models.items():
            started = time.perf_counter()
            step(model, optimizers[name], batch, bf16)
            seconds[name].append(time.perf_counter() - started)
    return seconds, optimizers


def profiled_steps(model, optimizer, batch: dict, bf16: bool, profiled: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(profiled):
            step(model, optimizer, batch, bf16)
    events = {e.key: e for e in prof.key_averages()}
    per_step = {key: e.self_cpu_time_total / 1000 / profiled for key, e in events.items()}
    kinds = {kind: sum(per_step.get(op, 0.0) for op in ops) for kind, ops in KINDS.items()}
    kinds["the rest"] = sum(per_step.values()) - sum(kinds.values())
    top = sorted(per_step.items(), key=lambda item: -item[1])[:8]
    calls = {key: e.count / profiled for key, e in events.items()}
    return {"kinds": kinds, "top": top, "calls": calls}


def copies_by_shape(model, optimizer, batch: dict, bf16: bool, profiled: int, top: int) -> list[tuple]:
    """The ``top`` groups of copies and casts (copy_, _to_copy) by the shapes of their inputs: (operation,
    input shapes, self CPU ms a step, calls a step), costliest first; a profile of its own, shapes recorded."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(profiled):
            step(model, optimizer, batch, bf16)
    groups = [(e.key, str(e.input_shapes), e.self_cpu_time_total / 1000 / profiled, e.count / profiled)
              for e in prof.key_averages(group_by_input_shape=True) if e.key in KINDS["copies and casts"]]
    return sorted(groups, key=lambda group: -group[2])[:top]


def report(label: str, figures: dict) -> None:
    total = sum(figures["kinds"].values())
    print(f"{label}: median step {figures['median_ms']:.1f} ms (unprofiled); profile, self CPU ms a step:")
    for kind, ms in figures["kinds"].items():
        print(f"  {kind:<18} {ms:8.1f}  {ms / total:5.1%}")
    print("  top operations: " + "; ".join(f"{op} {ms:.1f} ({figures['calls'][op]:.0f} calls)"
                                           for op, ms in figures["top"]))


@exits_cleanly_on_usage_errors
def main(argv: list[str] | None = None) -> None:
    parser = command_line(__doc__)
    parser.add_argument("--data_dir", required=True, help="GLUE folder with SST-2/ and RTE/, or the task's folder")
    parser.add_argument("--task", choices=["rte", "sst2"], default="rte")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (default: fp32)")
    parser.add_argument("--fast_dropout", action="store_true",
                        help="ours also draws its dropout masks as --fast_dropout does (hidden states and attention)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rank", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 3 of warm-up)")
    parser.add_argument("--profiled", type=int, default=3, help="profiled steps (after the timed ones)")
    parser.add_argument("--copies", type=int, default=0,
                        help="also list ours' N costliest groups of copies and casts by input shape")
    args = parser.parse_args(argv)
    at_least(1, batch=args.batch, rank=args.rank, steps=args.steps, profiled=args.profiled)
    at_least(0, copies=args.copies)
    profile(args)  # the data folder or the model: adarank's UsageError, one line, exit 2


def profile(args) -> None:
    from adarank.errors import UsageError
    from adarank.modules import check_rank_fits

    train = training_examples(args.task, args.data_dir)
    if args.batch > len(train):
        raise UsageError(f"--batch {args.batch} is more than the task's {len(train)} training examples: "
                         f"give --batch {len(train)} or fewer")
    tokenizer, reference = lora_model(args.rank, fast=False, bf16=args.bf16, fast_dropout=False)
    adapted = [name for name, module in reference.base_model.model.named_modules() if hasattr(module, "lora_A")]
    check_rank_fits(reference.base_model.model, adapted, ("rank", args.rank))
    batch = one_batch(train, args.batch, tokenizer)
    _, ours = lora_model(args.rank, fast=True, bf16=args.bf16, fast_dropout=args.fast_dropout)
    print(f"{args.task}: {args.batch} x {batch['input_ids'].shape[1]} tokens, LoRA r={args.rank}, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}, {torch.get_num_threads()} thread(s)"
          f"{', ours with --fast_dropout' if args.fast_dropout else ''}")
    models = {"reference": reference, "ours": ours}
    seconds, optimizers = timed_steps(models, batch, args.bf16, args.steps)
    figures = {name: {"median_ms": 1000 * statistics.median(seconds[name]),
                      **profiled_steps(model, optimizers[name], batch, args.bf16, args.profiled)}
               for name, model in models.items()}
    for label, values in figures.items():
        report(label, values)
    ref, fast = figures["reference"], figures["ours"]
    print(f"speed-up, reference step / ours (median, unprofiled): {ref['median_ms'] / fast['median_ms']:.2f}")
    total, kinds = sum(fast["kinds"].values()), fast["kinds"]
    left = kinds["copies and casts"] + kinds["dropout masks"]
    print(f"left in ours: copies, casts and dropout masks {left / total:.1%} of its profiled step; without them "
          f"its step would be {total / (total - left):.2f}x shorter, nothing else changed")
    if args.copies:
        print(f"ours' copies and casts by input shape (self CPU ms a step, calls a step; {kinds['copies and casts']:.1f} "
              "ms in all above):")
        for op, shapes, ms, calls in copies_by_shape(ours, optimizers["ours"], batch, args.bf16, args.profiled,
                                                     args.copies):
            print(f"  {op:<15} {ms:7.2f} {calls:6.0f}  {shapes}")


if __name__ == "__main__":
    main()
