"""The plateau method's flags and the defaults it derives from the run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from adarank.methods import AdapterRequest

GROWTH_INITS = ("lora", "gradient", "whitened")
# Dev evaluations per epoch when --eval_every is not given: with the default patience of 2,
# a plateau can then be seen, and acted on, within an epoch.
EVALS_PER_EPOCH = 4
GRADIENT_WINDOW = 10  # the most steps of gradients a default window holds


@dataclass
class PlateauArguments:
    r0: int = field(default=2, metadata={"help": "Initial rank of every adapted matrix."})
    delta_r: int = field(default=2, metadata={"help": "Rank added to a module at a growth event."})
    r_max: int | None = field(default=None, metadata={
        "help": "No module grows beyond this rank (default: the budget's rank, 8 for --budget large)."})
    plateau_patience: int = field(default=2, metadata={"help": "Evaluations without improvement before growing."})
    # Not 0: a loss that keeps creeping towards its floor (a fitted training set, a decaying learning
    # rate) improves a little at every evaluation and would never plateau (Keras' ReduceLROnPlateau: 1e-4).
    plateau_min_delta: float = field(default=1e-4, metadata={
        "help": "Smallest dev-loss decrease that counts as an improvement (a loss creeping towards its floor "
                "by less is a plateau)."})
    eval_every: int | None = field(default=None, metadata={
        "help": f"Optimizer steps between dev-loss evaluations (default: {EVALS_PER_EPOCH} per epoch, "
                f"ceil(steps per epoch / {EVALS_PER_EPOCH}), at most the run's steps)."})
    growth_init: str = field(default="lora", metadata={
        "help": "lora (random A rows), gradient (top singular vectors of the weight gradient) or whitened (the same "
                "in whitened input coordinates)."})
    grow_where: str = field(default="all", metadata={"help": "all modules, or importance (the top-scored ones)."})
    growth_budget: int | None = field(default=None, metadata={
        "help": "Rank units per event with grow_where=importance (default: a third of (adapted matrices x delta_r), "
                "at least 1)."})
    gradient_window: int | None = field(default=None, metadata={
        "help": f"Steps of weight gradients kept for growth_init=gradient/whitened (default: "
                f"min({GRADIENT_WINDOW}, eval_every))."})
    importance_beta: float = field(default=0.85, metadata={"help": "EMA factor of the importance score."})


def default_eval_every(request: AdapterRequest) -> int:
    """EVALS_PER_EPOCH evaluations per epoch of the run (a run without a known epoch length: of all its
    steps), at least every step and at most once per run."""
    per_epoch = request.steps_per_epoch or request.total_step
    return min(max(1, math.ceil(per_epoch / EVALS_PER_EPOCH)), request.total_step)


def default_growth_budget(modules: int, delta_r: int) -> int:
    """Rank units per importance-driven event: a third of what growing every module would add."""
    return max(1, modules * delta_r // 3)
