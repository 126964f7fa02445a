"""AdaLoRA (Zhang et al., ICLR 2023), all of it in one package.

- ``schedule``: the plan, the initial-rank rule and the budget schedule fitted to the run;
- ``method``: the method (plan from the flags, the PeftModel, parameter counts);
- ``allocation``: the callback that allocates once per optimizer step, the allocator state
  checkpoints carry, and how to read the allocator's scores;
- ``fast``: PEFT's per-step loops batched (importance update, masks, orthogonal regulariser),
  and the formulas others measure AdaLoRA with.
"""

from adarank.methods.adalora.allocation import (ALLOCATOR_STATE_FILE, AdaLoraAllocation, importance_steps,
                                                triplet_scores)
from adarank.methods.adalora.fast import (distances_from_orthogonal, group_by_shape, orthogonality, update_scale,
                                          vectorise_allocator, vectorise_regulariser)
from adarank.methods.adalora.method import INITS, AdaLora, regulariser_scalars
from adarank.methods.adalora.schedule import (INIT_RANK_FACTOR, AdaLoraPlan, BudgetSchedule, fit_budget_schedule,
                                              init_rank)

__all__ = [
    "ALLOCATOR_STATE_FILE", "INITS", "INIT_RANK_FACTOR", "AdaLora", "AdaLoraAllocation", "AdaLoraPlan",
    "BudgetSchedule", "distances_from_orthogonal", "fit_budget_schedule", "group_by_shape", "importance_steps", "init_rank", "orthogonality",
    "regulariser_scalars", "triplet_scores", "update_scale", "vectorise_allocator", "vectorise_regulariser",
]
