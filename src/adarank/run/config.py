"""config.json: every argument, the resolved defaults and plan, the data and model, the package
versions and device, so that a reader can tell exactly what a run did."""

from __future__ import annotations

import shlex
import sys
from dataclasses import asdict

from adarank.arguments import Arguments
from adarank.precision import precision_note
from adarank.memory import ParameterCounts
from adarank.methods import AdapterRequest, Plan, budget_label
from adarank.run.directory import FORMAT_VERSION, RunDirectory
from adarank.run.environment import environment
from adarank.tasks import Task, TaskData, recipe_of


def synthetic_note(task: Task) -> str:
    return f"synthetic demo data (--demo): these numbers say nothing about {task.family}"


def config_document(args: Arguments, task: Task, data: TaskData, model_name: str, request: AdapterRequest,
                    plan: Plan, counts: ParameterCounts, run: RunDirectory) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "task": task.name,
        "method": args.adapter.method,
        "budget": budget_label(plan.budget_rank),
        "recipe": args.adapter.recipe,  # whose defaults: paper (Table 8) or official (the authors' scripts)
        "recipe_values": asdict(recipe_of(task, args.adapter.recipe)),
        "task_metrics": list(task.metrics),  # headline first; metrics.json has eval_[<split>_]<metric>
        "dev_splits": list(task.dev_splits),
        "run_dir": str(run.path),
        "command": shlex.join([sys.argv[0], *args.argv]),  # the script and the arguments it was given
        "synthetic_data": data.synthetic,
        **({"note": synthetic_note(task)} if data.synthetic else {}),
        "data_source": data.source,
        "train_examples": len(data.train),
        "dev_examples": {k: len(v) for k, v in data.dev.items()},
        "model": model_name,
        "target_modules": request.target_modules,
        "head_modules": request.head_modules,
        "total_step": request.total_step,
        "adapter": plan.as_dict(),
        "parameters": counts.as_dict(),
        "arguments": _arguments(args),
        "explicit_arguments": sorted(args.explicit),
        "precision": precision_note(args.training, args.explicit, task),
        "environment": environment(),
        **({"task_settings": task.describe()} if task.describe() else {}),
        "task_arguments": asdict(args.task_options) if args.task_options is not None else None,
        "warmup_note": args.warmup_note,
    }


def _arguments(args: Arguments) -> dict:
    return {"model": asdict(args.model), "data": asdict(args.data), "run": asdict(args.run),
            **adapter_arguments(args), "training": args.training.to_dict()}


def adapter_arguments(args: Arguments) -> dict:
    """config.json's ``arguments`` groups that shape the adapters: the adapter flags and the method's own."""
    return {"adapter": asdict(args.adapter), **{type(extra).__name__: asdict(extra) for extra in args.extra}}


def resumed_arguments(args: Arguments) -> dict:
    """The flags a resumed run must share with its checkpoint's run (the part of config.json's
    ``arguments`` that decides the adapters' shapes and training): the adapter groups, the model and
    the modules adapted, the data trained on, the optimizer and its schedule (a resume on other data, with
    another learning rate, batch or optimizer, or over a longer schedule would make a run that is neither:
    another optimizer cannot read the checkpoint's state, and AdaLoRA's budget follows the total steps)."""
    model, data, training = asdict(args.model), asdict(args.data), args.training.to_dict()
    return {**adapter_arguments(args), "model": {key: model[key] for key in MODEL_RESUMED},
            "data": {key: data[key] for key in ("data_dir", "demo", "max_train_samples")},
            "training": {key: training[key] for key in RESUMED_TRAINING
                         if not (key == "num_train_epochs" and training["max_steps"] > 0)}}  # --max_steps decides


# The model flags a resumed run takes from its checkpoint's run (the 4-bit compute dtype as it was resolved)
MODEL_RESUMED = ("model_name_or_path", "target_modules", "bnb_4bit_compute_dtype")
# The TrainingArguments a resumed run takes from its checkpoint's run
RESUMED_TRAINING = ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "seed", "optim",
                    "optim_args", "lr_scheduler_type", "lr_scheduler_kwargs", "max_steps", "num_train_epochs",
                    "weight_decay")
