"""Adapter methods: one module each, registered by name.

Adding a method: a module here (or anywhere, e.g. ``src/custom``) with a
``Plan`` and an ``AdapterMethod``, and one ``register_method`` line.
"""

from adarank.methods.adalora import AdaLora
from adarank.methods.base import (BUDGET_RANKS, METHODS, AdapterMethod, AdapterRequest, BuiltAdapter, Plan,
                                  ShapeChanging, budget_label, budget_rank, check_lora_arguments, get_method,
                                  positive, register_method)
from adarank.methods.four_bit import QAdaLora, QLora
from adarank.methods.lora import Lora
from adarank.methods.none import NoAdapter

for _method in (Lora(), AdaLora(), QLora(), QAdaLora(), NoAdapter()):
    register_method(_method)

__all__ = [
    "BUDGET_RANKS", "METHODS", "AdapterMethod", "AdapterRequest", "BuiltAdapter", "Plan", "ShapeChanging",
    "budget_label", "budget_rank", "check_lora_arguments", "get_method", "positive", "register_method",
]
