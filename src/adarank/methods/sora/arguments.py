"""SoRA's flags, their defaults and where each comes from, and the sparsity schedule.

Notation of the paper (Ding et al., EMNLP 2023, section 3): a gate ``g`` sits between the
down projection A and the up projection B, h = W0 x + B (g * (A x)); ``g`` takes a
proximal gradient step on L0 + lambda ||g||_1 after every optimizer step,

    z = g - eta_t * dL0/dg,    g <- sign(z) max(|z| - eta_t lambda, 0),

``eta_t`` being the step size at step t; the per-step threshold ``xi = eta_t lambda`` is what
the paper's sparsifying scheduler (Algorithm 1) raises. Where the defaults come from:

- ``r_max``: this project's budget rule, 1.5x the rank of the LoRA run compared with (3 for
  --budget small, 12 for large), as AdaLoRA starts from b(0) = 1.5 b(T); the authors
  start from r_max 8 or 16 (their GLUE script: lora_r 8; their answer in issue #1 of the repository).
- ``eta_t`` = eta lr_t / lr, eta = 1: the gates' step size follows the run's learning-rate schedule
  (warm-up and decay) from a peak of 1. The paper's update steps on the plain gradient, and on the
  embedded MiniLM (CoLA) a gate's gradient is 1e-4 to 1e-3 in magnitude (measured), so a step
  size of 1 moves a gate by about what Adam moves A and B per step, the learning rate; a step size
  of the learning rate itself left every gate within 1e-4 of where the threshold put it in 3 epochs.
- ``lambda`` = 3e-4: with eta = 1 the per-step threshold at the peak is eta lambda = 3e-4, the xi of
  the authors' GLUE script (``sparse_lambda_2``, "xi in paper", threshold per step). A gate at zero
  stays there while |dL0/dg| <= lambda; one without gradient support loses lambda sum_t eta_t, about
  3e-4 x half the steps of a run with linear decay, so it reaches zero in runs of several thousand steps.
- ``schedule`` none: the paper's GLUE comparison trains at one xi; linear or exp raise lambda
  in equal phases of the run from --sora_lambda to --sora_max_lambda (Algorithm 1's rising xi).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

RELEASED_THRESHOLD = 3e-4  # xi per optimizer step in the authors' GLUE script
DEFAULT_ETA = 1.0
DEFAULT_LAMBDA = RELEASED_THRESHOLD / DEFAULT_ETA
SCHEDULES = ("none", "linear", "exp")


@dataclass
class SoraArguments:
    sora_max_rank: int | None = field(default=None, metadata={
        "help": "SoRA's starting rank r_max in every adapted matrix, all gates at 1 (default: 1.5x the budget's "
                "LoRA rank, 3 for --budget small, 12 for large)."})
    sora_lambda: float = field(default=DEFAULT_LAMBDA, metadata={
        "help": "L1 strength lambda on the gates: each step soft-thresholds them at eta_t * lambda (default 3e-4: "
                "with eta 1, the authors' per-step threshold xi = 3e-4)."})
    sora_eta: float = field(default=DEFAULT_ETA, metadata={
        "help": "Peak step size eta of the gates' proximal gradient step; eta_t follows the learning-rate "
                "schedule, eta * lr_t / learning_rate (default 1)."})
    sora_schedule: str = field(default="none", metadata={
        "help": "none (one lambda), linear or exp: lambda rises in equal phases of the run from --sora_lambda to "
                "--sora_max_lambda (the paper's sparsifying scheduler)."})
    sora_max_lambda: float | None = field(default=None, metadata={
        "help": "The last phase's lambda under --sora_schedule linear/exp."})
    sora_phases: int = field(default=5, metadata={"help": "Phases of --sora_schedule linear/exp."})


def phase_lambdas(first: float, last: float, phases: int, schedule: str) -> list[float]:
    """The lambda of each phase: evenly spaced (linear) or in a constant ratio (exp)."""
    if schedule == "none" or phases == 1:
        return [first]
    fractions = [k / (phases - 1) for k in range(phases)]
    if schedule == "linear":
        return [first + (last - first) * f for f in fractions]
    return [first * math.exp(math.log(last / first) * f) for f in fractions]


def phase_bounds(total_step: int, phases: int) -> list[tuple[int, int]]:
    """[start, end) optimizer steps of each of ``phases`` equal phases of the run."""
    edges = [round(total_step * k / phases) for k in range(phases + 1)]
    return list(zip(edges[:-1], edges[1:]))
