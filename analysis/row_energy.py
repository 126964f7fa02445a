"""How much input energy each LoRA A row of a finished run picks up, against a random row.

For every adapted matrix, with C = E[x x^T] the second moment of its inputs over
real (unpadded) tokens of the first --examples training sentences, passed through
the run's own trained model, a row a gets

    relative energy = E[(a.x)^2] / (|a|^2 trace(C) / in)

which is 1 on average for a random direction of the same norm. Rows are split into
those there from the start and those added by growth, at the rank every matrix of the
run started at (its config.json's adapter.r0 for plateau, adapter.init_r for
IncreLoRA), and the median and maximum over all matrices are printed per run. In a
run whose ranks never grow every row was there from the start; --r0 splits its rows
all the same, the first r0 against the rest, as a control.

    python analysis/row_energy.py runs/benchmark-cola/plateau-seed42 runs/benchmark-cola/plateau-gradient-seed42 \
        --data_dir ../shared/data/glue_data
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from adarank.errors import UsageError  # noqa: E402
from trained import model_tool_parser, trained_model  # noqa: E402  (adarank before peft: its filter drops bitsandbytes' notice)
from cli import at_least, fail_cleanly  # noqa: E402
from run_files import Damaged  # noqa: E402
from run_reader import AnalysisError, Run, load_run  # noqa: E402

# The methods whose ranks grow -> the entry of config.json's adapter that holds the rank every matrix started at.
GROWS_FROM = {"plateau": "r0", "increlora": "init_r"}


def row_energies(run_dir: Path, data_dir: str, examples: int) -> dict[str, list[torch.Tensor]]:
    """Module name -> relative energy of each of its A rows."""
    config, model, batch = trained_model(run_dir, data_dir, examples)
    real = batch["attention_mask"].bool()
    moments, hooks = {}, []
    for name in config["target_modules"]:
        def keep(module, inputs, output, name=name):
            x = inputs[0][real].double()
            moments[name] = x.T @ x / x.shape[0]
        hooks.append(model.base_model.model.get_submodule(name).register_forward_hook(keep))
    with torch.no_grad():
        model(**batch)
    for hook in hooks:
        hook.remove()
    energies = {}
    for name, second_moment in moments.items():
        a = model.base_model.model.get_submodule(name).lora_A[model.active_adapter]
        a = getattr(a, "weight", a).double()  # LoRA's A is a layer, AdaLoRA's a parameter
        random_row = (a * a).sum(dim=1) * torch.trace(second_moment) / a.shape[1]
        energies[name] = ((a @ second_moment) * a).sum(dim=1) / random_row
    return energies


def rows_from_the_start(run: Run, r0: int | None) -> int | None:
    """How many rows of each matrix count as there from the start (None: all): the run's own record
    where its ranks grow (a --r0 that differs is refused; --r0 stands in where it records none), --r0
    in a run whose ranks never grow."""
    entry = GROWS_FROM.get(run.method)
    if entry is None:
        return r0
    recorded = (run.config.get("adapter") or {}).get(entry)
    if recorded is None:
        if r0 is None:
            raise AnalysisError(f"{run.path / 'config.json'} records no adapter.{entry}, the rank every matrix of "
                                f"this {run.method} run started at: give it with --r0")
        return r0
    if not isinstance(recorded, int) or isinstance(recorded, bool) or recorded < 0:
        raise Damaged(run.path / "config.json", f"its adapter.{entry} is not a rank")
    if r0 is not None and r0 != recorded:
        raise AnalysisError(f"--r0 {r0} contradicts {run.path}, whose matrices started at rank {recorded} "
                            f"(adapter.{entry} in its config.json): leave --r0 out, each run's own is read")
    return recorded


@fail_cleanly
def main(argv: list[str] | None = None) -> None:
    parser = model_tool_parser(__doc__, 256, "training sentences to measure inputs on")
    parser.add_argument("--r0", type=int, help="rows there from the start, for runs that do not record it: in a run "
                        "whose ranks never grow, the first r0 against the rest, as a control (default: all its rows); "
                        "a run whose ranks grow records its own, and a --r0 that differs is refused")
    args = parser.parse_args(argv)
    at_least(1, examples=args.examples)
    at_least(0, r0=args.r0)
    for run_dir in args.runs:
        if not (run_dir / "adapter" / "adapter_model.safetensors").is_file():
            raise AnalysisError(f"{run_dir} is not a finished run directory (config.json and adapter/ are needed)")
    runs = [load_run(run_dir) for run_dir in args.runs]
    splits = [rows_from_the_start(run, args.r0) for run in runs]  # every refusal before the first run's minutes
    print("run\tinitial rows: median, max\tgrown rows: median, max")
    for run, split in zip(runs, splits):
        try:
            energies = row_energies(run.path, args.data_dir, args.examples)
        except UsageError as error:
            raise AnalysisError(str(error)) from None
        initial = [float(e) for v in energies.values() for e in v[:split]]
        grown = [float(e) for v in energies.values() for e in v[split:]] if split is not None else []
        cells = [f"{statistics.median(x):.2f}, {max(x):.2f}" if x else "-" for x in (initial, grown)]
        name = run.name
        if run.method not in GROWS_FROM:
            name += f" ({run.method} grows no rows" + (f"; split at --r0 {split} as a control)" if split is not None
                                                        else ")")
        print(f"{name}\t{cells[0]}\t{cells[1]}")


if __name__ == "__main__":
    main()
