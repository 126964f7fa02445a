"""A LoRA fine-tuning loop as the usual examples write it (PEFT and the plain Trainer), timed: the
reference rows of benchmark_speed.py, which runs it with the settings of its own LoRA run.

    python script/bench/speed_reference.py --reference padded|dynamic --like LORA_RUN_DIR --out DIR
        [--data_dir GLUE_DIR] [--bf16] [--train_examples N] [--eval_examples N] [--epochs N]

padded: every sentence padded to 128 and shuffled; dynamic: padded per batch, length-grouped.
Writes DIR/metrics.json with the figures benchmark_speed.py reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench_cli import UsageError, at_least, command_line, exits_cleanly_on_usage_errors, folder_to_write

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))


def load_peft_model(like: dict, path: str):
    """The tokenizer and the PEFT LoRA model of the run ``like`` (its config.json; without
    ``target_modules``, the project's default targets); ``path`` None: the embedded model."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if path is None:
        from adarank.loading import embedded_model_path
        path = embedded_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    adapter = like["adapter"]
    targets = like.get("target_modules")
    if targets is None:  # the project's default: every linear layer of the encoder
        from adarank.modules import resolve_target_modules
        targets = resolve_target_modules(model)
    return tokenizer, get_peft_model(model, LoraConfig(
        task_type=TaskType.SEQ_CLS, r=adapter["r"], lora_alpha=adapter["lora_alpha"],
        lora_dropout=adapter["lora_dropout"], target_modules=targets))


def trainer_of(args: argparse.Namespace, like: dict, model, tokenizer, train, callbacks):
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, default_data_collator

    training = like["arguments"]["training"]
    padded = args.reference == "padded"
    return Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(Path(args.out) / "trainer"),
            per_device_train_batch_size=training["per_device_train_batch_size"],
            per_device_eval_batch_size=training["per_device_eval_batch_size"], learning_rate=training["learning_rate"],
            weight_decay=training["weight_decay"], warmup_steps=training["warmup_steps"],
            num_train_epochs=args.epochs, eval_strategy="no", save_strategy="no", logging_steps=1000,
            report_to="none", seed=42, bf16=args.bf16, use_cpu=not torch.cuda.is_available(),
            train_sampling_strategy="random" if padded else "group_by_length"),
        train_dataset=train, data_collator=default_data_collator if padded else DataCollatorWithPadding(tokenizer),
        callbacks=callbacks)


def run_settings(like: str) -> dict:
    """The config.json of the LoRA run directory ``like``; missing or unreadable: one line."""
    path = Path(like) / "config.json"
    if not path.is_file():
        raise UsageError(f"--like {like} holds no config.json: give the directory of a finished LoRA run "
                         "(benchmark_speed.py passes its own)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"--like {like}: {path} cannot be read as JSON ({error}): give a LoRA run's "
                         "directory") from None


def reference_loop(args: argparse.Namespace, like: dict) -> dict:
    """Train and score once with the settings of the LoRA run given by --like (rank, alpha, dropout,
    modules, learning rate, batch); its speed figures."""
    import torch

    from adarank.memory import PeakMemory
    from adarank.run.callbacks import StepTimer
    from adarank.tasks import get_task

    data = get_task(args.task).load_data(args.data_dir, args.data_dir is None, args.train_examples, args.eval_examples)
    tokenizer, model = load_peft_model(like, like["arguments"]["model"]["model_name_or_path"])
    padded = args.reference == "padded"

    def encode(batch):
        texts = (batch["text_a"], batch["text_b"]) if "text_b" in batch else (batch["text_a"],)
        return tokenizer(*texts, truncation=True, max_length=128, padding="max_length" if padded else False)

    train, dev = (split.map(encode, batched=True, remove_columns=[c for c in split.column_names if c != "label"])
                  for split in (data.train, next(iter(data.dev.values()))))
    timer = StepTimer()
    trainer = trainer_of(args, like, model, tokenizer, train, [timer])
    with PeakMemory() as peak:
        outcome = trainer.train()
    started = time.perf_counter()
    trainer.evaluate(dev)
    eval_seconds = time.perf_counter() - started
    return {**timer.report(), "train_examples_per_second": outcome.metrics["train_samples_per_second"],
            "train_seconds": outcome.metrics["train_runtime"], "eval_examples_per_second": len(dev) / eval_seconds,
            "total_step": trainer.state.global_step,
            "peak_memory_mb": peak.report()["peak_memory_mb"], "threads": torch.get_num_threads()}


@exits_cleanly_on_usage_errors
def main(argv: list[str] | None = None) -> None:
    parser = command_line(__doc__)
    parser.add_argument("--reference", choices=["padded", "dynamic"], required=True)
    parser.add_argument("--like", required=True, help="the LoRA run directory whose settings to copy")
    parser.add_argument("--out", required=True, help="the folder to write metrics.json to")
    parser.add_argument("--data_dir", default=None, help="GLUE folder with SST-2/ (default: synthetic demo data)")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--task", default="sst2", help="sst2 or rte (sentence pairs)")
    parser.add_argument("--train_examples", type=int)
    parser.add_argument("--eval_examples", type=int)
    parser.add_argument("--epochs", type=int)
    args = parser.parse_args(argv)
    at_least(1, train_examples=args.train_examples, eval_examples=args.eval_examples, epochs=args.epochs)
    folder_to_write(args.out, "out")
    metrics = reference_loop(args, run_settings(args.like))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "metrics.json").write_text(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
