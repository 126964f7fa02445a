"""When each run reaches a reference's final score: per run, its final and best dev metric, the
epoch of its best, and the first evaluation at which it reaches the target, the mean final score
of the reference runs (LoRA at the same budget, say).

    python analysis/epochs_to_reach.py RUN [RUN ...] --reference RUN [RUN ...] [--csv]

The metric is the task's headline dev metric (CoLA: Matthews correlation; MNLI: the matched split's
accuracy); the evaluations are the ones in each run's history.jsonl (every epoch under the paper's
settings), those without a number (NaN) left out. A run that never reaches the target says so. The
runs and the references must be of one task, all on real data (or all on --demo data), and scored on
the same dev examples.
"""

from __future__ import annotations

import math
import statistics

from cli import command_line, fail_cleanly
from run_reader import AnalysisError, Run, load_run, metric_keys, one_task
from tables import csv_text, markdown


def evaluations(run: Run, key: str) -> list[dict]:
    """The run's dev evaluations in order, each with its step and epoch."""
    records = [r for r in run.require_finished().history().records if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
    infinite = next((r for r in records if math.isinf(r[key])), None)
    if infinite is not None:  # a score is bounded: an infinite one would be the run's best and reach any target
        raise AnalysisError(f"{run.path / 'history.jsonl'} has an infinite {key} at step {infinite.get('step')}: "
                            "the file is damaged")
    if not records:
        raise AnalysisError(f"{run.path / 'history.jsonl'} holds no {key}: the run never evaluated during training")
    return records


def final_score(run: Run, key: str) -> float:
    value = run.metric(key)
    if value is None or math.isnan(value):
        raise AnalysisError(f"{run.path / 'metrics.json'} has no number for {key} (it is undefined): leave the run out")
    return float(value)


def one_dev_set(runs: list[Run]) -> None:
    """Refuse runs scored on different dev examples (--max_eval_samples): a score is a target on its own set."""
    scored = [run for run in runs if run.config.get("dev_examples") is not None]
    for run in scored[1:]:
        if run.config["dev_examples"] != scored[0].config["dev_examples"]:
            raise AnalysisError(f"{scored[0].path} was scored on dev examples {scored[0].config['dev_examples']} and "
                                f"{run.path} on {run.config['dev_examples']}: a score on other examples is no target; "
                                "give runs evaluated on the same dev set")


def row(run: Run, key: str, target: float) -> dict:
    records = evaluations(run, key)
    best = max(records, key=lambda r: r[key])
    reached = next((r for r in records if r[key] >= target), None)
    return {"run": run.name, "final": 100 * final_score(run, key), "best": 100 * best[key],
            "best at epoch": best.get("epoch"), "target": 100 * target,
            "reaches target at epoch": reached.get("epoch") if reached else "never",
            "at step": reached["step"] if reached else ""}


def rows(runs: list[Run], reference: list[Run]) -> list[dict]:
    one_task(runs + reference)
    references = {run.path.resolve() for run in reference}
    if all(run.path.resolve() in references for run in runs):  # as compare_ranks refuses a run in both groups
        raise AnalysisError("every run is one of the references: a run measured against its own final score says "
                            "nothing; give runs besides the references (LoRA at the same budget as --reference, say)")
    one_dev_set(runs + reference)
    for run in runs + reference:
        if "rouge" in metric_keys(run)[0]:
            raise AnalysisError(f"{run.path} is a summarization run: it scores ROUGE at its end only (its evaluations "
                                "during training are the loss), so there is no score per epoch to compare")
    keys = {metric_keys(run)[0] for run in runs + reference}
    if len(keys) != 1:
        raise AnalysisError(f"the runs do not share one dev metric ({', '.join(sorted(keys))}): compare one task at a time")
    (key,) = keys
    target = statistics.mean(final_score(run, key) for run in reference)
    return [row(run, key, target) for run in runs]


def epoch_text(epoch) -> str:
    return f"{epoch:g}" if isinstance(epoch, (int, float)) else str(epoch if epoch is not None else "?")


def formatted(table: list[dict]) -> list[dict]:
    return [{**r, "final": f"{r['final']:.2f}", "best": f"{r['best']:.2f}", "target": f"{r['target']:.2f}",
             "best at epoch": epoch_text(r["best at epoch"]),
             "reaches target at epoch": epoch_text(r["reaches target at epoch"])} for r in table]


@fail_cleanly
def main(argv: list[str] | None = None) -> list[dict]:
    parser = command_line(__doc__, runs="finished run directories that evaluated during training", csv=True)
    parser.add_argument("--reference", nargs="+", required=True,
                        help="the runs whose mean final score is the target")
    args = parser.parse_args(argv)
    table = rows([load_run(path) for path in args.runs], [load_run(path) for path in args.reference])
    print(csv_text(formatted(table)) if args.csv else markdown(formatted(table)))
    return table


if __name__ == "__main__":
    main()
