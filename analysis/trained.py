"""A finished GLUE run's trained model, rebuilt from its run directory, and a padded batch of the
task's sentences to pass through it (the analysis tools that look inside a model)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adarank.errors import UsageError, first_line  # adarank before peft: its filter drops bitsandbytes' notice
from peft import PeftModel, PeftType
from safetensors import SafetensorError
from transformers.utils import logging as hf_logging
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
    model_arguments = _model_arguments(config, config_path)
    _check_adapter_settings(adapter / "adapter_config.json")
    four_bit = config.get("four_bit_cpu_kernels") is not None  # the run's base was NF4: load it so again
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its LOAD REPORT names the task head as new: the adapter holds the trained one
    try:
        tokenizer, base, _ = load_model(model_arguments["model_name_or_path"], task, load_in_4bit=four_bit,
                                        compute_dtype=model_arguments.get("bnb_4bit_compute_dtype"))
    finally:
        hf_logging.set_verbosity(verbosity)
    try:
        model = PeftModel.from_pretrained(base, str(adapter)).eval()
    except SafetensorError as error:
        raise UsageError(_damaged(adapter / "adapter_model.safetensors", str(error))) from None
    except (KeyError, TypeError, ValueError, RuntimeError) as error:  # settings PEFT cannot build, or unlike weights
        raise UsageError(_damaged(adapter / "adapter_config.json", _unbuildable(error))) from None
    _check_target_modules(model, config.get("target_modules"), config_path)
    rows = part(tokenize(data, tokenizer, 128)).select(range(examples))
    batch = tokenizer.pad([{k: r[k] for k in ("input_ids", "attention_mask")} for r in rows], return_tensors="pt")
    return config, model, batch


def _damaged(path: Path, why: str) -> str:
    return f"{path} is damaged ({why}): train the run again or leave it out"


def _unbuildable(error: Exception) -> str:
    """Why PEFT built no adapter from adapter_config.json: the first tensor it holds at another shape than the
    weights saved beside it (of a message listing them all), or the error's first line."""
    lines = [line.strip() for line in str(error).splitlines()]
    mismatch = next((line for line in lines if line.startswith("size mismatch")), None)
    if mismatch:
        return f"its settings do not fit adapter_model.safetensors: {mismatch}"
    return f"its settings build no adapter: {first_line(error)}"


def _model_arguments(config: dict, config_path: Path) -> dict:
    """config.json's arguments.model, naming the base model the run adapted."""
    model = (config.get("arguments") or {}).get("model")
    if model is None:
        raise UsageError(_damaged(config_path, "it names no arguments.model, the base model the run adapted"))
    name = model.get("model_name_or_path", "")  # null: the embedded default model
    if name is not None and not (isinstance(name, str) and name):
        raise UsageError(_damaged(config_path, "its arguments.model names no model_name_or_path"))
    return model


def _check_adapter_settings(settings: Path) -> None:
    """The adapter's adapter_config.json, which PEFT reads: there, and a JSON object naming its peft_type."""
    if not settings.is_file():
        raise UsageError(f"{settings} is missing (PEFT reads the adapter's settings there): "
                         "train the run again or leave it out")
    try:
        document = json.loads(settings.read_text(encoding="utf-8"))
    except ValueError as error:
        raise UsageError(_damaged(settings, str(error))) from None
    except OSError as error:
        raise UsageError(f"{settings} cannot be read ({error.strerror or error}): make it readable") from None
    if not isinstance(document, dict) or "peft_type" not in document:
        raise UsageError(_damaged(settings, "it names no peft_type"))
    if document["peft_type"] not in PeftType.__members__:
        raise UsageError(_damaged(settings, f"its peft_type {document['peft_type']!r} is not one PEFT knows"))


def _check_target_modules(model, names, config_path: Path) -> None:
    """config.json's target_modules: module names, each one the loaded adapter adapts."""
    if names is None:
        raise UsageError(_damaged(config_path, "it names no target_modules"))
    if not (isinstance(names, list) and names and all(isinstance(name, str) for name in names)):
        raise UsageError(_damaged(config_path, "its target_modules is not a list of module names"))
    for name in names:
        try:
            adapted = hasattr(model.base_model.model.get_submodule(name), "base_layer")
        except AttributeError:  # no such module
            adapted = False
        if not adapted:
            raise UsageError(_damaged(config_path, f"its target_modules names {name}, which the run's adapter "
                                                   "does not adapt"))


def model_tool_parser(doc: str, examples: int, sentences: str) -> argparse.ArgumentParser:
    """The command line of a tool that passes a task's sentences through finished runs' models: run
    directories, --data_dir, and --examples (default ``examples``; ``sentences``: which ones)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories with adapter/")
    parser.add_argument("--data_dir", required=True, help="GLUE folder holding the run's task")
    parser.add_argument("--examples", type=int, default=examples, help=sentences)
    return parser
