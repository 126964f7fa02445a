"""How alike the final rank patterns of two groups of runs are (bf16 against fp32, one recipe against
another): each run of the first group against the run of the second with the same seed, and, as the
scale to read that against, the runs within each group against each other (different seeds).

    python analysis/compare_ranks.py RUN [RUN ...] --against RUN [RUN ...] [--csv]

A row per pair of runs: the share of adapted matrices given the same final rank, the mean and largest
difference of rank, and each run's total. The last rows average each kind of pair. Same-seed pairs that
agree about as often as different seeds of one group do mean the change moved the allocation as much
as a new seed does.
"""

from __future__ import annotations

from itertools import combinations

from cli import command_line, fail_cleanly
from run_reader import AnalysisError, Run, load_run, one_task
from tables import csv_text, markdown


def final_ranks(run: Run) -> dict[tuple[str, str], int]:
    """(layer, module kind) -> rank, from the run's last ranks.jsonl record (its final allocation)."""
    last = run.require_finished().ranks().records[-1]["ranks"]
    return {(layer, kind): rank for layer, modules in last.items() for kind, rank in modules.items()}


def compare(kind: str, a: Run, b: Run) -> dict:
    ranks_a, ranks_b = final_ranks(a), final_ranks(b)
    if ranks_a.keys() != ranks_b.keys():
        raise AnalysisError(f"{a.path} and {b.path} adapt different matrices: their ranks cannot be compared")
    differences = [abs(ranks_a[m] - ranks_b[m]) for m in ranks_a]
    return {"pair": kind, "runs": f"{a.name} / {b.name}", "matrices": len(differences),
            "same rank (%)": 100 * sum(d == 0 for d in differences) / len(differences),
            "mean rank difference": sum(differences) / len(differences), "largest rank difference": max(differences),
            "total rank": f"{sum(ranks_a.values())} / {sum(ranks_b.values())}"}


def one_setting(runs: list[Run], which: str) -> None:
    """A group is seeds of one task, method and budget, each seed once."""
    if len({(run.task, run.method, run.budget) for run in runs}) > 1:
        raise AnalysisError(f"{which} mixes tasks, methods or budgets: give one setting's seeds per group")
    seeds = [run.seed for run in runs]
    if None in seeds or len(set(seeds)) < len(seeds):
        raise AnalysisError(f"{which} holds a run without a seed or one seed twice ({seeds}): each seed once")


def pairs(first: list[Run], second: list[Run]) -> list[dict]:
    one_task(first + second)  # the groups' settings differ on purpose, their task and data must not
    one_setting(first, "the first group")
    one_setting(second, "--against")
    if both := sorted({run.path.resolve() for run in first} & {run.path.resolve() for run in second}):
        raise AnalysisError(f"{both[0]} is in both groups: a run compared with itself says nothing; give two "
                            "different groups of runs")
    by_seed = {run.seed: run for run in second}
    matched = [(run, by_seed[run.seed]) for run in first if run.seed in by_seed]
    if not matched:
        raise AnalysisError("no run of --against has the seed of a run before it: nothing to pair")
    rows = [compare("same seed", a, b) for a, b in matched]
    for label, group in (("first group, seeds", first), ("--against, seeds", second)):
        rows += [compare(label, a, b) for a, b in combinations(group, 2)]
    return rows


def averages(rows: list[dict]) -> list[dict]:
    out = []
    for kind in dict.fromkeys(row["pair"] for row in rows):
        chosen = [row for row in rows if row["pair"] == kind]
        out.append({"pair": f"mean: {kind}", "runs": f"{len(chosen)} pair(s)", "matrices": chosen[0]["matrices"],
                    **{key: sum(row[key] for row in chosen) / len(chosen)
                       for key in ("same rank (%)", "mean rank difference", "largest rank difference")}, "total rank": ""})
    return out


def formatted(rows: list[dict]) -> list[dict]:
    return [{**row, "same rank (%)": f"{row['same rank (%)']:.1f}", "mean rank difference": f"{row['mean rank difference']:.2f}",
             "largest rank difference": f"{row['largest rank difference']:g}"} for row in rows]


@fail_cleanly
def main(argv: list[str] | None = None) -> list[dict]:
    parser = command_line(__doc__, runs="the first group's run directories (rank-changing runs: ranks.jsonl)",
                          csv=True)
    parser.add_argument("--against", nargs="+", required=True, help="the second group's run directories")
    args = parser.parse_args(argv)
    rows = pairs([load_run(path) for path in args.runs], [load_run(path) for path in args.against])
    rows += averages(rows)
    print(csv_text(formatted(rows)) if args.csv else markdown(formatted(rows)))
    return rows


if __name__ == "__main__":
    main()
