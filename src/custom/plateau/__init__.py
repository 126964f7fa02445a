"""Dynamic rank scheduling via loss plateau: grow LoRA ranks when the validation loss stalls.

Every adapted matrix starts at rank ``r0``; the dev loss is evaluated every
``eval_every`` steps, and when it has not improved by ``min_delta`` for
``patience`` evaluations, ranks grow by ``delta_r`` (up to ``r_max``) and
training goes on with the same optimizer and learning-rate schedule.

- ``arguments``: the flags and the defaults derived from the run;
- ``method``: the plan and the PEFT model (adarank's method interface);
- ``growth``: new directions (random, gradient, whitened) and the PEFT/optimizer surgery;
- ``callback``: the control loop in the Trainer, and the checkpointed state.

It plugs into adarank through its extension points (a method, registered by
``register()``, and a callback); adarank does not import it. BENCHMARKS.md has what
the variants measured.
"""

from adarank.methods import register_method
from custom.plateau.arguments import PlateauArguments
from custom.plateau.method import PlateauLora, PlateauPlan


def register() -> PlateauLora:
    """Make ``--method plateau`` known to adarank (``main(task, method="plateau")``); call it once."""
    return register_method(PlateauLora())


__all__ = ["PlateauArguments", "PlateauLora", "PlateauPlan", "register"]
