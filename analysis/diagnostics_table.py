"""One row per run trained with --diagnostics: the dev metric, the adapters' update size at
chosen steps, the orthogonal regulariser's share of the loss, and where AdaLoRA put its ranks.

    python analysis/diagnostics_table.py RUN_DIR [RUN_DIR ...] [--steps 10 50 100 200 400] [--csv]
"""

from __future__ import annotations

from cli import at_least, command_line, fail_cleanly
from run_files import update_size
from run_reader import KIND_LABELS, AnalysisError, Run, load_run, metric_keys
from tables import csv_text, markdown


def row(run: Run, steps: list[int]) -> dict:
    run.require_finished()
    records = [r for r in run.diagnostics().records if "update_norm" in r]
    if not records:
        raise AnalysisError(f"{run.path / 'diagnostics.jsonl'} holds no update-norm record")
    by_step = {r["step"]: r for r in records}
    losses = {h["step"]: h["loss"] for h in run.history().records if "loss" in h}
    out = {"run": run.path.name}
    for key in metric_keys(run):  # each dev split's headline metric (MNLI has two)
        value = run.metric(key)
        out[key.removeprefix("eval_")] = "undefined" if value is None else f"{100 * value:.2f}"
    for step in [*steps, records[-1]["step"]]:
        if step in by_step:
            out[f"norm dW @{step}"] = f"{update_size(by_step[step]):.3g}"
    for step in steps[:2]:
        record = by_step.get(step, {})
        if "orth_reg_weighted" in record and losses.get(step):
            out[f"gamma R / loss @{step}"] = f"{record['orth_reg_weighted'] / losses[step]:.2f}"
    ranks = run.ranks().records[-1]["ranks"] if (run.path / "ranks.jsonl").is_file() else {}
    kinds: dict[str, int] = {}
    for modules in ranks.values():
        for kind, rank in modules.items():
            kinds[kind] = kinds.get(kind, 0) + rank
    if kinds:
        out["final rank by kind"] = ", ".join(f"{KIND_LABELS.get(k, k)} {v}" for k, v in kinds.items())
    return out


@fail_cleanly
def main(argv: list[str] | None = None) -> list[dict]:
    parser = command_line(__doc__, runs="run directories trained with --diagnostics", csv=True)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 50, 100, 200, 400],
                        help="optimizer steps to report the update size at (the first two also give gamma R / loss)")
    args = parser.parse_args(argv)
    at_least(0, steps=min(args.steps))
    rows = [row(load_run(path), args.steps) for path in args.runs]
    print(csv_text(rows) if args.csv else markdown(rows))
    return rows


if __name__ == "__main__":
    main()
