"""What a finished run leaves beside its documents: the adapter (with a model card that says what it
is), memory.json, the merged model where asked, the dev predictions, and, last, metrics.json, which
marks the run finished. Process 0 writes them."""

from __future__ import annotations

import json
from pathlib import Path

from adarank.memory import MemoryReport
from adarank.run.directory import RunDirectory
from adarank.run.metrics import RunMetrics, dev_scores
from adarank.run.ranks import final_ranks


def save_outputs(run: RunDirectory, model, tokenizer, memory: MemoryReport, metrics: RunMetrics, config: dict,
                 predictions: tuple[str, str], *, trains: bool, merge: bool) -> None:
    adapter_dir = run / "adapter" if trains else None
    if adapter_dir is not None:
        model.save_pretrained(str(adapter_dir))
    memory.add_adapter(metrics.parameters, adapter_dir)
    memory.peak = metrics.peak
    metrics.memory = memory.summary()
    run.write_json("memory.json", memory.as_dict())
    if adapter_dir is not None:  # after PEFT's own card, which it replaces
        saved = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
        (adapter_dir / "README.md").write_text(
            model_card(config, metrics.as_dict(), final_ranks(run / "ranks.jsonl"), saved), encoding="utf-8")
    if merge:
        model.merge_and_unload().save_pretrained(str(run / "merged"))
        tokenizer.save_pretrained(str(run / "merged"))
    run.write_text(*predictions)
    run.write_json("metrics.json", metrics.as_dict())  # last: marks the run finished


def model_card(config: dict, metrics: dict, ranks: dict | None, saved: dict) -> str:
    """adapter/README.md: the run that made the adapter, so that a copy elsewhere still says what it is
    (``ranks``: the last ranks.jsonl record, where the method writes one; ``saved``: the adapter's
    adapter_config.json, whose rank is what the folder holds)."""
    adapter = config.get("adapter", {})
    scores = {k: v for k, v in dev_scores(metrics).items() if isinstance(v, (int, float))}
    lines = [
        f"# {config['method']} adapter for {config['task']} ({config['budget']} budget)",
        "",
        f"Base model: `{config['model']}`. Adapted modules: {', '.join(config.get('target_modules', []))}; "
        f"trained in full: {', '.join(config.get('head_modules', [])) or 'none'}.",
        "",
        "| setting | value |",
        "|---|---|",
        f"| method | {config['method']} |",
        f"| budget | {config['budget']} (rank {adapter.get('budget_rank')} per adapted matrix) |",
        f"| recipe | {config['recipe']} |",
        f"| task | {config['task']} ({config['train_examples']} training examples, data: {config['data_source']}) |",
        f"| seed | {config['arguments']['training']['seed']} |",
        f"| optimizer steps | {metrics.get('total_step')} |",
        f"| trainable parameters | {metrics.get('trainable_params'):,} (adapters {metrics.get('adapter_params'):,}, "
        f"task head {metrics.get('head_params'):,}) |",
        "",
        "## Dev metrics",
        "",
        *[f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in scores.items()],
    ]
    if config.get("note"):
        lines += ["", f"Note: {config['note']}."]
    lines += ["", "## Rank pattern", ""]
    if ranks is not None:
        lines += [f"Total rank {ranks['total_rank']} (event `{ranks['event']}` at step {ranks['step']}), "
                  "by layer and module:", "", "```json", json.dumps(ranks["ranks"], indent=1), "```"]
    else:
        lines += [f"Rank {saved.get('r')} in every adapted matrix (`{saved.get('peft_type')}` adapter)."]
    lines += ["", "## Made by", "", "```bash", f"python {config['command']}", "```", "",
              "Loading: `PeftModel.from_pretrained(base_model, \"<this folder>\")`; the run directory's "
              "config.json holds every setting."]
    return "\n".join(lines) + "\n"
