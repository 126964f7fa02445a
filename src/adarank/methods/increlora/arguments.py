"""IncreLoRA's own flags. The flags it shares with AdaLoRA keep their names and meaning
(adarank.arguments.AdapterArguments): --init_r (the initial rank), --tinit / --delta_t / --tfinal
(the allocation schedule), --beta1 / --beta2 (the importance averages) and --orth_reg_weight."""

from __future__ import annotations

from dataclasses import dataclass, field

# IncreLoRA's defaults where the flags shared with AdaLoRA are left out. The paper's released GLUE
# scripts (FeiyuZhang98/IncreLoRA, NLU/scripts/rank=2 and rank=8, all tasks) start every incremental
# matrix at rank 1 (--lora_r 1) and use an orthogonal regulariser weight of 0.1 (--reg_orth_coef; 0.3
# for RTE). beta1 = beta2 = 0.85 are the same in those scripts and AdaLoRA's, the shared default.
INIT_RANK = 1
ORTH_REG_WEIGHT = 0.1


@dataclass
class IncreLoraArguments:
    top_h: int | None = field(default=None, metadata={
        "help": "IncreLoRA: at each allocation, the h most important adapted matrices get one rank each "
                "(default: the fewest that reach the budget's average in the schedule)."})
    restart_warmup: int | None = field(default=None, metadata={
        "help": "IncreLoRA: steps over which a newly added rank's learning rate rises linearly from 0 to the "
                "run's (default: --delta_t; 0 turns the restart warm-up off)."})
    advance_learning: bool = field(default=True, metadata={
        "help": "IncreLoRA: keep one reserved rank per matrix (lambda = 0, trained only by the orthogonal "
                "regulariser) that becomes the next added rank; false: added ranks start freshly drawn."})
