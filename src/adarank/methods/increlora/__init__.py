"""IncreLoRA (Zhang et al., 2023, "IncreLoRA: Incremental Parameter Allocation Method for
Parameter-Efficient Fine-tuning", arXiv 2308.12043), all of it in one package.

- ``arguments``: its own flags (the rest it shares with AdaLoRA: --init_r, --tinit, --delta_t,
  --tfinal, --beta1, --beta2, --orth_reg_weight);
- ``schedule``: the plan, the growth steps and the budget rule (average adapter parameters = LoRA's);
- ``allocation``: the importance of a matrix and the order matrices grow in;
- ``layers``: the incremental matrices P diag(lambda) Q in PEFT LoRA layers, the orthogonal
  regulariser, and the folding into a plain LoRA adapter at the end;
- ``callback``: the Trainer callback that grows the ranks, with the state checkpoints carry;
- ``method``: the method as adarank sees it.

Sources. The method (incremental matrices P diag(lambda) Q from AdaLoRA's SVD-like form, ranks added
to the modules with the highest importance every few steps after a warm-up, AdaLoRA's smoothed
sensitivity and uncertainty with beta1, beta2 averaged over a module's parameters, the orthogonal
regulariser, new ranks prepared by "advance learning" and stabilised by a "restart warmup") is the
paper's. The numbers left open by it are taken from the authors' released GLUE scripts
(FeiyuZhang98/IncreLoRA, NLU/scripts and NLU/README.md): initial rank 1 (--lora_r 1), beta1 = beta2 =
0.85, orthogonal weight 0.1, and a new rank's warm-up as long as the interval between allocations
(their --warmup_steps equals --incre_interval). Where this package decides for itself, it says so:
the schedule is the task's AdaLoRA schedule (``schedule``), ``top_h`` defaults to the fewest matrices
per step that reach the budget, the budget rule matches LoRA's *average* parameters, the update scale
is alpha / budget rank, fixed, and the reserved triplet is the last one of each matrix, its lambda held
at zero (``layers``).
"""

from adarank.methods.increlora.arguments import IncreLoraArguments
from adarank.methods.increlora.callback import STATE_FILE, IncreLoraGrowth
from adarank.methods.increlora.method import IncreLora
from adarank.methods.increlora.schedule import IncreLoraPlan, chosen_at_step, expected_growth, growth_steps

__all__ = ["STATE_FILE", "IncreLora", "IncreLoraArguments", "IncreLoraGrowth", "IncreLoraPlan", "chosen_at_step",
           "expected_growth", "growth_steps"]
