"""Results tables over many runs, with seeds and a paired bootstrap between methods.

    python analysis/summarize_runs.py RUNS_ROOT [--csv] [--paper] [--bootstrap 2000] [--pair-all]

Table 1: task x method x budget, the task's metric as mean +- std over seeds
(n), trainable parameters, the adapter parameters held and trained averaged over
the optimizer steps (and, where a method switched directions off, the live ones:
AdaLoRA's unmasked triplets, SoRA's nonzero gates), adapter MB, train time and
peak memory.
Table 2: for two methods on the same task and budget, the difference of the
means and a paired bootstrap 95% interval of it, resampling the dev examples
(the same resample for both methods, each method's metric averaged over its
seeds), computed from predictions.tsv with the task's own metric. With --pair-all,
every two settings of a task, whatever differs (recipe, training arguments,
budget label), each row naming the difference; two settings evaluated on other
dev examples (other data) have nothing to pair, and their row says so.
Unfinished or failed runs and synthetic-data (--demo) runs are listed apart.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict

import numpy as np
from cli import add_paper_options, command_line, enough_resamples, fail_cleanly
from run_reader import Damaged, Run, dev_splits, find_runs, flatten, metric_keys, task_metric
from run_settings import bracketed, setting_words
from stats import ROUGE, OtherExamples, PredictionTables, mean_std, method_difference, points
from tables import csv_text, markdown

# AdaLoRA paper, Table 1 (DeBERTaV3-base, mean of 5 seeds). MNLI: matched/mismatched
# accuracy; QQP: accuracy/F1; CoLA: Matthews correlation; MRPC: accuracy; STS-B: Pearson.
PAPER_TABLE = {
    ("Full FT", "184M"): {"mnli": "89.90/90.12", "sst2": "95.63", "cola": "69.19", "qqp": "92.40/89.80",
                          "qnli": "94.03", "rte": "83.75", "mrpc": "89.46", "stsb": "91.60"},
    ("LoRA r=8", "1.33M"): {"mnli": "90.65/90.69", "sst2": "94.95", "cola": "69.82", "qqp": "91.99/89.38",
                            "qnli": "93.87", "rte": "85.20", "mrpc": "89.95", "stsb": "91.60"},
    ("AdaLoRA", "1.27M"): {"mnli": "90.76/90.79", "sst2": "96.10", "cola": "71.45", "qqp": "92.23/89.74",
                           "qnli": "94.55", "rte": "88.09", "mrpc": "90.69", "stsb": "91.84"},
    ("LoRA r=2", "0.33M"): {"mnli": "90.30/90.38", "sst2": "94.95", "cola": "68.71", "qqp": "91.61/88.91",
                            "qnli": "94.03", "rte": "85.56", "mrpc": "89.71", "stsb": "91.68"},
    ("AdaLoRA", "0.32M"): {"mnli": "90.66/90.70", "sst2": "95.80", "cola": "70.04", "qqp": "91.78/89.16",
                           "qnli": "94.49", "rte": "87.36", "mrpc": "90.44", "stsb": "91.63"},
}


# --- collecting runs -------------------------------------------------------------------------

COUNTS = ("trainable_params", "adapter_params", "train_seconds", "peak_memory_mb")  # metrics.json's, in the table


def row_keys(run: Run) -> list[str]:
    """The metrics.json keys of the run's scores in the results table: the headline metric on each dev
    split, and for summarization ROUGE-2, -L and -Lsum beside ROUGE-1."""
    metric, keys = task_metric(run), metric_keys(run)
    return keys + [key.replace(metric, other) for other in compared_metrics(run)[1:] for key in keys]


def metrics_problem(run: Run) -> str | None:
    """Why the run's metrics.json cannot give its row (None: it can)."""
    try:
        values = {key: run.metric(key) for key in (*row_keys(run), *COUNTS)}
    except Damaged as damage:
        return damage.short
    if missing := [key for key in COUNTS if values[key] is None]:
        return f"metrics.json is damaged ({missing[0]} is null)"
    if undefined := [key for key in row_keys(run) if values[key] is None]:
        return f"{', '.join(undefined)} undefined (metrics.json: null; the dev labels leave it so)"
    return None


def apart_because(run: Run) -> str | None:
    """Why the run is left out of the numbers (None: it is not)."""
    if run.problem:
        return run.problem
    if not run.finished:
        return "unfinished or failed (no metrics.json)"
    if run.metrics.get("non_finite"):
        return f"diverged ({', '.join(run.metrics['non_finite'])} not finite): its scores are not a result"
    return "synthetic demo data" if run.synthetic else metrics_problem(run)


def repeated_seed(run: Run, group: list[Run]) -> str | None:
    """Why the run is left out as a second run of a seed its setting already counts (None: it is
    not). The same seed run twice (in two benchmarks' folders, say) is one draw, not two."""
    counted = next((other for other in group if other.seed == run.seed), None)
    if counted is None:
        return None
    return (f"seed {run.seed} again in its setting ({counted.path} is counted): one run a seed; "
            "summarize the two folders apart to see each")


def scored_alike(groups: dict, apart: list) -> None:
    """Leave out of each group (into ``apart``) its runs scored on other metrics than most of its seeds
    (config.json's task_metrics differ): their scores have no column beside the others'."""
    for group in groups.values():
        common = Counter(tuple(row_keys(run)) for run in group).most_common(1)[0][0]
        counted = next(run for run in group if tuple(row_keys(run)) == common)
        for run in [run for run in group if tuple(row_keys(run)) != common]:
            group.remove(run)
            apart.append((run, f"scored on {', '.join(row_keys(run))}, unlike {counted.path} of its setting "
                               f"({', '.join(common)}), which the table counts: its config.json's task_metrics "
                               "differ; summarize it apart"))


def split_runs(runs: list[Run]):
    """(finished real-data runs grouped by task, method, budget and setting, [(run, why it is apart)]).

    Runs of one group differ in their seed alone; the same method and budget run with
    another model, learning rate or data size is a group of its own.
    """
    groups, apart = defaultdict(list), []
    for run in runs:
        if why := apart_because(run):
            apart.append((run, why))
        else:
            groups[run.group].append(run)
    scored_alike(groups, apart)  # first: a seed whose counted run it sets aside keeps its other run
    for key, group in groups.items():
        kept = []
        for run in group:
            if why := repeated_seed(run, kept):
                apart.append((run, why))
            else:
                kept.append(run)
        groups[key] = kept
    return dict(sorted(groups.items())), apart


def adapter_mb(run: Run) -> float | None:
    """MB of the saved LoRA tensors alone (the trained task head is counted apart)."""
    return run.metrics.get("adapter_mb")


def method_names(groups: dict) -> dict[tuple, str]:
    """Each group's method, with its recipe where it is not the paper's and, where the method ran
    in more than one setting, what sets this one apart (``run_settings.setting_words``)."""
    words = setting_words([runs[0] for runs in groups.values()])
    return {key: bracketed(key[1], words[key]) for key in groups}


def differences(run_a: Run, run_b: Run) -> list[str]:
    """The shared choices (recipe, model, data, training arguments) in which two runs differ;
    against a run that trained nothing (--method none) only the evaluation must match."""
    a, b = (flatten(run.shared_fields) for run in (run_a, run_b))
    untrained = "none" in (run_a.method, run_b.method)
    keys = [k for k in sorted(a.keys() | b.keys())
            if not (untrained and k.startswith(("training.", "train_examples", "recipe")))]
    return [k.rsplit(".", 1)[-1] for k in keys if a.get(k) != b.get(k)]


def compared_metrics(run: Run) -> list[str]:
    """The task's headline metric; summarization: ROUGE-1, -2, -L and -Lsum."""
    metrics = run.config.get("task_metrics") or []
    return [m for m in metrics if m in ROUGE] or [task_metric(run)]


# --- rows -------------------------------------------------------------------------------------

def mean_count(values: list[float]) -> str:
    return f"{round(float(np.mean(values))):,}"


def from_the_start(runs: list[Run], key: str) -> str:
    """The mean of a time or peak over the runs that trained from step 0: a resumed run's covers only
    the part after its resume, so it is left out and counted beside the figure."""
    whole = [run.metrics[key] for run in runs if not run.metrics.get("resumed_from_step")]
    resumed = len(runs) - len(whole)
    if not whole:
        return f"- ({resumed} resumed)"
    return f"{np.mean(whole):.0f}" + (f" ({len(whole)} of {len(runs)}; {resumed} resumed)" if resumed else "")


def live_count(runs: list[Run]) -> str:
    """The live adapter parameters averaged over the steps, mean over the runs that recorded them:
    AdaLoRA's runs written before metrics.json's version 3 did not ("-", never guessed)."""
    live = [r.metrics.get("average_live_adapter_params") for r in runs]
    known = [value for value in live if value is not None]
    if not known:
        return "-"
    return mean_count(known) + (f" ({len(known)} of {len(runs)}; {len(runs) - len(known)} unrecorded)"
                                if len(known) < len(runs) else "")


def results_rows(groups: dict) -> list[dict]:
    rows, names = [], method_names(groups)
    for group, runs in groups.items():
        # The method's name says what sets its setting apart: no hash is shown.
        row = {"task": group[0], "method": names[group], "budget": group[2], "seeds": len(runs)}
        for key in row_keys(runs[0]):
            mean, std = mean_std([run.metrics[key] for run in runs])
            scale = points(key.rsplit("_", 1)[-1])
            # One seed has no spread to show: its score alone, not "+- 0.00".
            row[key.removeprefix("eval_")] = f"{scale * mean:.2f}" + (f" +- {scale * std:.2f}" if len(runs) > 1 else "")
        row["trainable params"] = mean_count([r.metrics["trainable_params"] for r in runs])
        row["adapter params"] = mean_count([r.metrics["adapter_params"] for r in runs])
        # The adapter parameters held and trained, averaged over the optimizer steps (growing methods hold
        # more as they grow), and those of the directions switched on (fewer under AdaLoRA's mask, SoRA's gates).
        row["avg adapter params"] = mean_count(
            [r.metrics.get("average_adapter_params", r.metrics["adapter_params"]) for r in runs])
        row["avg live params"] = live_count(runs)
        sizes = [s for s in map(adapter_mb, runs) if s is not None]
        row["adapter MB"] = f"{np.mean(sizes):.3f}" if sizes else "-"
        row["train s"] = from_the_start(runs, "train_seconds")
        row["peak MB"] = from_the_start(runs, "peak_memory_mb")
        rows.append(row)
    if all(row["avg live params"] == row["avg adapter params"] for row in rows):
        for row in rows:  # no method switched a direction off: the column would repeat the one before
            del row["avg live params"]
    return rows


def comparison_rows(groups: dict, resamples: int, pair_all: bool = False) -> list[dict]:
    """Paired differences between methods of a task and budget that share recipe, model, data and
    training arguments (the untrained base model, budget "none", is every budget's baseline); with
    ``pair_all``, every pair of a task, budgets included, each naming what differs."""
    rows, names = [], method_names(groups)
    by_task = defaultdict(dict)
    for group, runs in groups.items():
        by_task[group[0]][(names[group], group[2])] = runs
    predictions = PredictionTables()
    for task, settings in sorted(by_task.items()):
        for ((name_a, budget_a), runs_a), ((name_b, budget_b), runs_b) in itertools.combinations(
                sorted(settings.items()), 2):
            budgets = {budget_a, budget_b} - {"none"} or {"none"}
            differ = differences(runs_a[0], runs_b[0]) + (["budget"] if len(budgets) > 1 else [])
            if differ and not pair_all:
                continue
            tables_a, tables_b = ({run.path: predictions(run) for run in runs} for runs in (runs_a, runs_b))
            for split, metric in itertools.product(dev_splits(runs_a[0]), compared_metrics(runs_a[0])):
                row = {
                    "task": task + ("" if split == "validation" else f" ({split})"),
                    "budget": budget_a if len(budgets) == 1 and budget_a != "none" else
                    budget_b if len(budgets) == 1 else f"{budget_a} / {budget_b}",
                    "comparison": f"{name_a} - {name_b}" + (f" (differ: {', '.join(differ)})" if differ else ""),
                    "metric": metric, "seeds": f"{len(runs_a)} vs {len(runs_b)}",
                }
                try:
                    d = method_difference(metric, split, tables_a, tables_b, resamples)
                except OtherExamples:
                    if not differ:  # the same settings, yet other examples: a damaged run, named
                        raise
                    # --pair-all over runs of other data: this pair has nothing to pair, the others do
                    rows.append({**row, "examples": 0, "difference": "-", "95% CI": "-",
                                 "excludes 0": "not paired: other dev examples"})
                    continue
                scale = points(metric)
                rows.append({**row, "examples": d.examples, "difference": f"{scale * d.value:+.2f}",
                             "95% CI": f"[{scale * d.low:+.2f}, {scale * d.high:+.2f}]",
                             "excludes 0": "yes" if d.excludes_zero else "no"})
    return rows


# --- the tables ------------------------------------------------------------------------------

def paper_rows(tasks) -> list[dict]:
    return [
        {"task": task, "method": f"paper: {method}", "budget": params, "seeds": 5, "metric (paper)": values[task]}
        for (method, params), values in PAPER_TABLE.items() for task in tasks if task in values
    ]


def summarize(root, paper: bool = False, resamples: int = 2000, pair_all: bool = False) -> dict[str, list[dict]]:
    groups, apart = split_runs(find_runs(root))
    tables = {
        "results": results_rows(groups),
        "comparisons": comparison_rows(groups, resamples, pair_all),
        "apart": [{"run": str(run.path), "task": run.task, "method": run.method, "why": why} for run, why in apart],
    }
    if paper:
        tasks = sorted({task for task, *_ in groups}) or sorted({t for v in PAPER_TABLE.values() for t in v})
        tables["paper"] = paper_rows(tasks)
    return tables


TITLES = {
    "results": "Results (dev set, mean +- std over seeds, in %)",
    "comparisons": "Method differences (paired bootstrap over dev examples, in points)",
    "paper": "Reference: AdaLoRA paper, Table 1 (DeBERTaV3-base, 5 seeds)",
    "apart": "Runs left out of the numbers",
}


@fail_cleanly
def main(argv: list[str] | None = None) -> dict:
    parser = command_line(__doc__, root="a folder of run directories (searched recursively)", csv=True)
    add_paper_options(parser, "add the AdaLoRA paper's numbers as reference rows")
    parser.add_argument("--pair-all", action="store_true",
                        help="also compare methods whose runs differ in recipe, model, data, training arguments "
                             "or budget label (each such row names what differs)")
    args = parser.parse_args(argv)
    enough_resamples(args.bootstrap)
    tables = summarize(args.root, args.paper, args.bootstrap, args.pair_all)
    for name, rows in tables.items():
        if args.csv:
            print(f"# {name}\n{csv_text(rows)}" if rows else f"# {name}\n")
        else:
            print(f"## {TITLES[name]}\n\n{markdown(rows)}")
    return tables


if __name__ == "__main__":
    main()
