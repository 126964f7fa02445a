"""A finished GLUE run's trained model, rebuilt from its run directory, and a padded batch of the
task's sentences to pass through it (the analysis tools that look inside a model)."""

from __future__ import annotations

import argparse
from pathlib import Path

from adarank.errors import UsageError  # adarank before peft: its filter drops bitsandbytes' notice
from peft import PeftModel
from adarank.tasks import get_task
from adarank.tasks.glue.data import load_glue, tokenize
from adarank.tasks.glue.spec import GlueSpec
from adarank.tasks.glue.model import load_model
from run_reader import load_run


def trained_model(run_dir: Path, data_dir: str, examples: int, split: str = "train"):
    """(config.json's contents, the run's base model (in 4 bits where the run's was) with its adapter,
    in evaluation mode, and a batch of the first ``examples`` sentences of ``split``: train, or the
    first dev split). A missing adapter, a run of another task family or too few sentences:
    UsageError, one line."""
    config_path, adapter = run_dir / "config.json", run_dir / "adapter"
    if not config_path.is_file() or not (adapter / "adapter_model.safetensors").is_file():
        raise UsageError(f"{run_dir} is not a finished run directory (config.json and adapter/ are needed)")
    if not (run_dir / "metrics.json").is_file():
        raise UsageError(f"{run_dir} has not finished (no metrics.json): its adapter/ may be from another run; "
                         "finish it with --resume_from_checkpoint auto")
    config = load_run(run_dir).config
    task = get_task(config["task"])
    if not isinstance(task, GlueSpec):
        raise UsageError(f"{run_dir} is a {config['task']} run: this tool reads GLUE (classification) runs")
    def part(data):  # the split asked for: train, or the first dev split
        return data.train if split == "train" else next(iter(data.dev.values()))

    data = load_glue(task, data_dir=data_dir)
    sentences = part(data)
    if examples > len(sentences):
        what = "training" if split == "train" else "dev"
        raise UsageError(f"--examples {examples} is more than the {len(sentences)} {what} sentences of "
                         f"{data.source}: give --examples {len(sentences)} or fewer")
    model_arguments = config["arguments"]["model"]
    four_bit = config.get("four_bit_cpu_kernels") is not None  # the run's base was NF4: load it so again
    tokenizer, base, _ = load_model(model_arguments["model_name_or_path"], task, load_in_4bit=four_bit,
                                    compute_dtype=model_arguments.get("bnb_4bit_compute_dtype"))
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    rows = part(tokenize(data, tokenizer, 128)).select(range(examples))
    batch = tokenizer.pad([{k: r[k] for k in ("input_ids", "attention_mask")} for r in rows], return_tensors="pt")
    return config, model, batch


def model_tool_parser(doc: str, examples: int, sentences: str) -> argparse.ArgumentParser:
    """The command line of a tool that passes a task's sentences through finished runs' models: run
    directories, --data_dir, and --examples (default ``examples``; ``sentences``: which ones)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories with adapter/")
    parser.add_argument("--data_dir", required=True, help="GLUE folder holding the run's task")
    parser.add_argument("--examples", type=int, default=examples, help=sentences)
    return parser
