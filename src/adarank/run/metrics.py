"""metrics.json, the record that marks a run finished: the final dev metrics, the trainable
parameters, where the time and memory went, and what the data was; and the summary printed at the end."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from adarank.memory import ParameterCounts
from adarank.run.directory import FORMAT_VERSION, RunDirectory


@dataclass
class RunMetrics:
    evaluation: dict  # the task's final dev metrics: eval_[<split>_]<metric>, eval_loss ...
    parameters: ParameterCounts  # after training (growing methods change them)
    total_step: int
    train_seconds: float
    train_examples_per_second: float
    train_loss: float | None
    speed: dict  # the step timer's figures (median step, tokens)
    eval_seconds: float
    eval_examples_per_second: float
    peak: dict  # PeakMemory.report() of training
    peak_memory_evaluation_mb: float
    data: str  # "synthetic", or where the data came from
    resumed_from_step: int | None  # time and peak memory cover the part of training after this step only
    # The adapter parameters the run holds and trains, averaged over the optimizer steps; methods whose
    # adapters change size report their own, and methods that switch directions off (AdaLoRA's mask,
    # SoRA's gates) also the live ones (``adapter_figures``).
    average_adapter_params: int
    method_figures: dict = field(default_factory=dict)  # the method's own summary (AdaLoRA's final ranks ...)
    memory: dict = field(default_factory=dict)  # MemoryReport.summary(), on the main process
    note: str | None = None  # what a reader must know (synthetic data)

    def as_dict(self) -> dict:
        undefined = [key for key, value in self.evaluation.items() if value is None]
        document = {
            **self.evaluation,
            **self.parameters.as_dict(),
            "total_step": self.total_step,
            "train_seconds": round(self.train_seconds, 2),
            "train_examples_per_second": round(self.train_examples_per_second, 2),
            "train_loss": self.train_loss,
            **self.speed,
            "eval_seconds": round(self.eval_seconds, 2),
            "eval_examples_per_second": round(self.eval_examples_per_second, 2),
            **self.peak,
            "peak_memory_evaluation_mb": self.peak_memory_evaluation_mb,
            "data": self.data,
            "resumed_from_step": self.resumed_from_step,
            **self.adapter_figures(),
            **({"note": self.note} if self.note else {}),
            # Metrics the dev labels leave undefined (one class: no Matthews correlation), stored as null.
            **({"undefined_metrics": undefined} if undefined else {}),
            **self.memory,
            "format_version": FORMAT_VERSION,
        }
        # A diverged run's NaN or infinite losses: null (JSON has no NaN), named, and said in its summary.
        if diverged := [k for k, v in document.items() if isinstance(v, float) and not math.isfinite(v)]:
            document.update({key: None for key in diverged}, non_finite=diverged)
        return document

    def adapter_figures(self) -> dict:
        """The held adapter parameters averaged over the steps, the method's own figures, and the live ones:
        the parameters of the directions switched on, averaged and at the end (a method that never
        switches one off holds only live ones; AdaLoRA's and SoRA's report their own, null if unknown)."""
        figures = {"average_adapter_params": self.average_adapter_params, **self.method_figures}
        figures.setdefault("average_live_adapter_params", figures["average_adapter_params"])
        figures.setdefault("final_live_adapter_params", figures.get("final_adapter_params",
                                                                    self.parameters.adapter_params))
        return figures


# metrics.json's figures of what evaluating cost, beside the dev scores under the same eval_ prefix.
EVALUATION_COSTS = ("eval_examples", "eval_seconds", "eval_examples_per_second")


def dev_scores(metrics: dict) -> dict:
    """The dev metrics of metrics.json (losses included), not what evaluating cost."""
    return {k: v for k, v in metrics.items() if k.startswith("eval_") and k not in EVALUATION_COSTS
            and not k.endswith("_seconds_per_article")}


def print_summary(task_name: str, method: str, budget: str, metrics: dict, run: RunDirectory) -> None:
    headline = {k: v for k, v in dev_scores(metrics).items() if not k.endswith("_loss")}
    lines = [
        f"== {task_name} / {method} / budget {budget}"
        + (f" / {metrics['note']}" if metrics.get("note") else "") + " ==",
        "dev: " + ", ".join(f"{k} {'undefined' if v is None else f'{v:.4f}'}" for k, v in headline.items()),
        f"trainable parameters: {metrics['trainable_params']:,} "
        f"(adapters {metrics['adapter_params']:,}, task head {metrics['head_params']:,})",
        f"training: {metrics['total_step']} steps in {metrics['train_seconds']:.1f} s, "
        f"{metrics['train_examples_per_second']:.1f} examples/s, peak memory {metrics['peak_memory_mb']:.0f} MB",
        f"run directory: {run.path}",
    ]
    if metrics.get("non_finite"):
        lines.insert(1, f"DIVERGED: {', '.join(metrics['non_finite'])} not finite (stored as null): the training "
                        "blew up; lower --learning_rate")
    print("\n".join(lines), flush=True)
