"""Adapter methods: one module (or package) each, registered by name.

Adding a method: a module here (or anywhere, e.g. ``src/custom``) with a
``Plan`` and an ``AdapterMethod``, and one ``register_method`` call.
"""

from adarank.methods.adalora import AdaLora
from adarank.methods.base import (BUDGET_RANKS, LORA_FLAGS, METHODS, AdapterMethod, AdapterParameters, AdapterRequest,
                                  BuiltAdapter, OneProcess, OwnLayers, Plan, Ranks, Shapes, ShapeChanging, adapter_placement, budget_label,
                                  budget_rank, check_lora_arguments, get_method, lora_parameters, positive,
                                  register_method)
from adarank.methods.four_bit import QAdaLora, QLora
from adarank.methods.increlora import IncreLora
from adarank.methods.lora import Lora
from adarank.methods.none import NoAdapter
from adarank.methods.sora import Sora
from adarank.methods.variants import Dora, Eva, Pissa, QDora, QRsLora, RsLora

# The library's own methods, in the order they are registered (others register theirs, e.g. src/custom):
# the original project's, then the rivals (growth, learned sparsity, and PEFT's LoRA variants).
BUILT_IN_METHODS = tuple(register_method(m).name for m in (
    Lora(), AdaLora(), QLora(), QAdaLora(), NoAdapter(),
    IncreLora(), Sora(), Dora(), QDora(), Pissa(), RsLora(), QRsLora(), Eva()))

__all__ = [
    "BUDGET_RANKS", "BUILT_IN_METHODS", "LORA_FLAGS", "METHODS", "AdapterMethod", "AdapterParameters", "AdapterRequest", "BuiltAdapter", "OneProcess", "OwnLayers", "Plan",
    "Ranks", "Shapes", "ShapeChanging", "adapter_placement", "budget_label", "budget_rank", "check_lora_arguments",
    "get_method", "lora_parameters", "positive", "register_method",
]
