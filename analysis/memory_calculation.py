"""Memory of LoRA, AdaLoRA, QLoRA and QLoRA + AdaLoRA: measured in runs, or planned from a config.

    python analysis/memory_calculation.py RUN_DIR [RUN_DIR ...] [--csv]
    python analysis/memory_calculation.py --model_name_or_path microsoft/deberta-v3-base [--budget large] [--csv]

With run directories: the comparison table of the runs (base / adapter MB,
trainable parameters, measured peak), read from their memory.json alone. With a
model (a hub name, a folder or a config JSON; default: the embedded MiniLM), the
same table computed from the architecture alone, without weights or training, to
plan memory before renting a GPU: the plan is the library's (adarank.memory_plan,
which states its analytic model), imported only then. MB are 2**20 bytes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cli import at_least, command_line, fail_cleanly
from run_files import Unreadable, finite_number
from run_reader import AnalysisError, load_run
from tables import csv_text, markdown

MB = 2**20
MOST_LABELS = 1_000_000  # a task head's classes; the plan builds the head's label map in memory


# --- runs ------------------------------------------------------------------------------------

def run_rows(paths) -> list[dict]:
    rows = []
    for path in paths:
        run = load_run(path)
        try:
            rows.append(_run_row(run, _memory_of(run)))
        except (KeyError, TypeError, AttributeError) as error:
            what = f"lacks the entry {error}" if isinstance(error, KeyError) else "is not laid out as training writes"
            raise AnalysisError(f"{run.path / 'memory.json'} {what}: it is damaged or not this project's; "
                                "train the run again or leave it out") from None
    return rows


def _run_row(run, memory: dict) -> dict:
    base = memory["base"]["component_bytes"]
    adapter = memory["adapter"]
    bits = memory["quantized_bits_per_parameter"]
    measured_by = memory["peak"]["peak_memory_measured_by"]
    if not isinstance(measured_by, str):
        raise TypeError("peak_memory_measured_by is not text")
    return {
        "task": run.task, "method": run.method, "budget": run.budget,
        "base MB": f"{_figure(memory['base']['total_bytes']) / MB:.2f}",
        "quantised MB": f"{_figure(base['quantized_linear_weights'] + base['quantization_constants']) / MB:.2f}",
        "bits/quantised weight": _maybe(bits if bits is None else _figure(bits), "{:.3f}"),
        "adapter MB": f"{_figure(adapter['adapter_lora_bytes']) / MB:.3f}",
        "head MB": f"{_figure(adapter['adapter_head_bytes']) / MB:.3f}",
        "adapter params (saved)": f"{_figure(adapter['saved_adapter_params']):,}",
        "trainable params": f"{_figure(adapter['trainable_params']['trainable_params']):,}",
        "peak MB": f"{_figure(memory['peak']['peak_memory_mb']):.0f}",
        "peak measured by": measured_by.split(" (")[0],
    }


def _figure(value):
    """A figure of memory.json: a finite number, else TypeError (the file is not as training writes it)."""
    if not finite_number(value):
        raise TypeError(f"{value!r} is not a finite number")
    return value


def _memory_of(run) -> dict:
    """The run's memory.json, or one line saying why it cannot be read."""
    memory_file = run.path / "memory.json"
    if not memory_file.is_file():
        raise AnalysisError(f"{run.path} has no memory.json: the run is unfinished or predates memory accounting")
    try:
        return json.loads(memory_file.read_text(encoding="utf-8"))
    except ValueError as error:  # a cut-off file, or one that is not UTF-8
        raise AnalysisError(f"{memory_file} is damaged ({error}): train the run again or leave it out") from None
    except OSError as error:
        raise Unreadable(memory_file, error) from None


def _maybe(value, form: str) -> str:
    return "-" if value is None else form.format(value)


ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "analysis" / "configs"  # architecture shapes of models the hub may not reach


# --- the library's plan ----------------------------------------------------------------------

def refusal(method, budget: str, init_r: int) -> str | None:
    """What training would say to ``method`` with ``--budget budget --init_r init_r`` (None: nothing).
    The method's own plan checks it; its rank rules hold for any task, and the steps of a run are not
    known yet, so the request is an SST-2 run long enough for any schedule."""
    from adarank.arguments import AdapterArguments
    from adarank.errors import UsageError
    from adarank.methods import AdapterRequest
    from adarank.tasks import get_task

    arguments = AdapterArguments(method=method.name, budget=budget, init_r=init_r)
    try:
        method.plan(AdapterRequest(get_task("sst2"), arguments, total_step=100_000))
    except UsageError as error:
        return str(error)
    return None


def start_ranks(arch, budget: str, init_r: int | None) -> dict[str, int | None]:
    """Each method planned -> its --init_r: ``init_r`` for a method that reads --init_r in training, None
    (its own rule) for the others. A method whose training would refuse ``init_r`` is left out, with a
    note on stderr; where each one that reads it would, or no matrix can hold the rank, the plan is refused."""
    from adarank.memory_plan import planned_methods
    from adarank.methods import budget_rank, get_method

    methods = {name: None for name in planned_methods()}
    if init_r is None:
        return methods
    narrowest = min(min(shape) for shape in arch.adapted)
    if init_r > narrowest:
        raise AnalysisError(f"--init_r {init_r} is more than any adapted matrix of this model can hold (rank "
                            f"{narrowest}, its narrowest width): use --init_r {narrowest} or less")
    readers = [name for name in methods if "init_r" in (get_method(name).flags_read or ())]
    refused = {name: why for name in readers if (why := refusal(get_method(name), budget, init_r))}
    if readers and len(refused) == len(readers):
        name, why = next(iter(refused.items()))
        raise AnalysisError(f"{get_method(name).title or name}: {why} (here the target rank is --budget {budget}'s, "
                            f"{budget_rank(budget)}: change --init_r or --budget)")
    for name, why in refused.items():
        print(f"note: {name} is left out of the plan (training would refuse it: {why})", file=sys.stderr)
        del methods[name]
    return {name: init_r if name in readers else None for name in methods}


def skeleton(model: str | None, num_labels: int):
    """The library's skeleton of ``model``; a hub name the hub cannot give (offline) is read from
    analysis/configs/ where that folder holds its shapes, with a note saying so."""
    from adarank.errors import UsageError
    from adarank.memory_plan import model_skeleton

    try:
        return model_skeleton(model, num_labels)
    except UsageError:
        stored = CONFIGS / f"{str(model).rsplit('/', 1)[-1]}.json"
        if model is None or Path(model).exists() or not stored.is_file():
            raise
        print(f"note: the hub gives no config for {model} here: planned from {stored.relative_to(ROOT)}, "
              "its stored shapes", file=sys.stderr)
        return model_skeleton(str(stored), num_labels)


def plan_rows(model: str | None, budget: str, dtype: str, num_labels: int, init_r: int | None = None) -> list[dict]:
    """The plan of every method for ``model`` (None: the embedded MiniLM), one row a method."""
    from adarank.errors import UsageError
    from adarank.memory_plan import architecture, plan
    from adarank.methods import budget_rank

    try:
        budget_rank(budget)  # an unknown budget fails before the model is built
        arch = architecture(skeleton(model, num_labels))
        plans = [plan(arch, name, budget, dtype, start) for name, start in start_ranks(arch, budget, init_r).items()]
    except UsageError as error:
        raise AnalysisError(str(error)) from None
    return [{
        "method": p.method, "budget": p.budget,
        "base MB": p.base_bytes / MB,
        "vs fp base": p.full_precision_base_bytes / p.base_bytes,
        "unquantised share %": p.unquantized_percent,
        "adapter params (training)": p.train_adapter_params,
        "adapter params (saved)": p.saved_adapter_params,
        "adapter MB (saved, fp32)": p.saved_adapter_bytes / MB,
        "trainable params": p.trainable_params,
        "optimizer MB": p.optimizer_bytes / MB,
        "allocator MB": p.allocator_bytes / MB,
        "training MB (no activations)": p.training_bytes / MB,
    } for p in plans]


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
    parser = command_line(__doc__, runs="run directories (with memory.json)", nargs="*", csv=True)
    parser.add_argument("--model_name_or_path", help="plan from this model's config (no training)")
    parser.add_argument("--plan", action="store_true", help="plan for the embedded MiniLM")
    # Budgets and dtypes are the library's, checked by its planner (reading runs needs no library).
    parser.add_argument("--budget", default="small", help="the paper's budget label to plan for (default: small)")
    parser.add_argument("--dtype", default="float32", help="dtype of the unquantised tensors (default: float32)")
    parser.add_argument("--num_labels", type=int, default=2)
    parser.add_argument("--init_r", type=int, help="AdaLoRA's initial rank, where a recipe sets it "
                                                   "(CNN/DailyMail: 4); default 1.5x the budget's")
    args = parser.parse_args(argv)
    at_least(1, init_r=args.init_r, num_labels=args.num_labels)
    if args.num_labels > MOST_LABELS:
        raise AnalysisError(f"--num_labels {args.num_labels} is more than {MOST_LABELS:,}: give the task's own "
                            "number of classes (GLUE's are 1 to 3)")
    if args.runs and (args.model_name_or_path or args.plan):
        raise AnalysisError("give run directories or --model_name_or_path/--plan, not both")
    if args.runs:
        rows = run_rows(args.runs)
    elif args.model_name_or_path or args.plan:
        rows = readable(plan_rows(args.model_name_or_path, args.budget, args.dtype, args.num_labels, args.init_r))
    else:
        raise AnalysisError("nothing to do: give run directories, or --model_name_or_path (or --plan) to plan")
    print(csv_text(rows) if args.csv else markdown(rows), end="")
    return rows


if __name__ == "__main__":
    main()
