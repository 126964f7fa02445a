"""How much input energy each LoRA A row of a finished run picks up, against a random row.

For every adapted matrix, with C = E[x x^T] the second moment of its inputs over
real (unpadded) tokens of the first --examples training sentences, passed through
the run's own trained model, a row a gets

    relative energy = E[(a.x)^2] / (|a|^2 trace(C) / in)

which is 1 on average for a random direction of the same norm. Rows are split into
the first --r0 (there from the start) and the rest (added by growth), and the median
and maximum over all matrices are printed per run.

    python analysis/row_energy.py runs/benchmark-cola/plateau-seed42 runs/benchmark-cola/plateau-gradient-seed42 \
        --data_dir ../shared/data/glue_data
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from adarank.errors import UsageError  # noqa: E402
from trained import model_tool_parser, trained_model  # noqa: E402  (adarank before peft: its filter drops bitsandbytes' notice)
from cli import at_least, fail_cleanly  # noqa: E402
from run_reader import AnalysisError  # noqa: E402


def row_energies(run_dir: Path, data_dir: str, examples: int) -> dict[str, list[torch.Tensor]]:
    """Module name -> relative energy of each of its A rows."""
    config, model, batch = trained_model(run_dir, data_dir, examples)
    adapter = run_dir / "adapter"
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
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    energies = {}
    for name, second_moment in moments.items():
        (a,) = [v for k, v in weights.items() if k.endswith(f"{name}.lora_A.weight")]
        a = a.double()
        random_row = (a * a).sum(dim=1) * torch.trace(second_moment) / a.shape[1]
        energies[name] = ((a @ second_moment) * a).sum(dim=1) / random_row
    return energies


@fail_cleanly
def main(argv: list[str] | None = None) -> None:
    parser = model_tool_parser(__doc__, 256, "training sentences to measure inputs on")
    parser.add_argument("--r0", type=int, default=2, help="rows there from the start; the rest were grown")
    args = parser.parse_args(argv)
    at_least(1, examples=args.examples)
    at_least(0, r0=args.r0)
    for run_dir in args.runs:
        if not (run_dir / "adapter" / "adapter_model.safetensors").is_file():
            raise AnalysisError(f"{run_dir} is not a finished run directory (config.json and adapter/ are needed)")
    print("run\tinitial rows: median, max\tgrown rows: median, max")
    for run_dir in args.runs:
        try:
            energies = row_energies(run_dir, args.data_dir, args.examples)
        except UsageError as error:
            raise AnalysisError(str(error)) from None
        initial = [float(e) for v in energies.values() for e in v[: args.r0]]
        grown = [float(e) for v in energies.values() for e in v[args.r0:]]
        cells = [f"{statistics.median(x):.2f}, {max(x):.2f}" if x else "-" for x in (initial, grown)]
        print(f"{run_dir.name}\t{cells[0]}\t{cells[1]}")


if __name__ == "__main__":
    main()
