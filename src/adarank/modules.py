"""Which weight matrices get adapters, and how a module is named in outputs.

The paper adapts all six matrices of every transformer layer (section 4):
query, key, value, attention output, intermediate (FFN in) and output (FFN out),
and not the pooler. Each architecture spells them differently; the table below
maps the name of a module inside one layer to the paper's name for it.
"""

from __future__ import annotations

import re

from torch import nn

from adarank.errors import UsageError

# Name of a Linear module inside one layer -> the paper's name for that matrix.
MODULE_KINDS: dict[str, str] = {
    # BERT, RoBERTa, ELECTRA, MiniLM
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    # DeBERTa (v2 and v3)
    "attention.self.query_proj": "query",
    "attention.self.key_proj": "key",
    "attention.self.value_proj": "value",
    # shared by all of the above
    "attention.output.dense": "attention.output",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    # DistilBERT
    "attention.q_lin": "query",
    "attention.k_lin": "key",
    "attention.v_lin": "value",
    "attention.out_lin": "attention.output",
    "ffn.lin1": "intermediate",
    "ffn.lin2": "output",
}
KIND_ORDER = ("query", "key", "value", "attention.output", "intermediate", "output")

_IN_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.(.+)$")
_ADAPTER_SUFFIX = re.compile(r"\.(lora_[A-Za-z]+|base_layer)(\.[^.]+)?$")


def locate(module_name: str) -> tuple[int, str] | None:
    """(layer index, paper name) of an adaptable module, or None for anything else.

    Accepts names as they appear in the base model, in a PeftModel
    (``base_model.model.`` prefix) and in AdaLoRA's rank patterns (parameter
    names ending in ``.lora_E.<adapter>``).
    """
    name = _ADAPTER_SUFFIX.sub("", module_name)
    match = _IN_LAYER.search(name)
    if match is None:
        return None
    kind = MODULE_KINDS.get(match.group(2))
    return None if kind is None else (int(match.group(1)), kind)


def resolve_target_modules(model: nn.Module, requested: str | None = None) -> list[str]:
    """Full names of the Linear modules to adapt.

    ``requested`` is a comma-separated list of paper names (``query,value``) or
    in-layer module names (``attention.self.query``); None means all six kinds.
    """
    found: dict[str, tuple[int, str, str]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) and type(module).__name__ not in ("Linear4bit",):
            continue
        place = locate(name)
        if place is not None:
            suffix = _IN_LAYER.search(name).group(2)
            found[name] = (place[0], place[1], suffix)
    if not found:
        raise UsageError(
            f"no adaptable Linear modules found in {type(model).__name__} (known layer modules: "
            f"{', '.join(sorted(MODULE_KINDS))}): pass --target_modules with names from this model"
        )
    if requested is None:
        return sorted(found, key=lambda n: (found[n][0], KIND_ORDER.index(found[n][1])))
    wanted = [w.strip() for w in requested.split(",") if w.strip()]
    if not wanted:
        raise UsageError(f"--target_modules {requested!r} names no module: use e.g. query,value")
    chosen = []
    for item in wanted:
        hits = [n for n, (_, kind, suffix) in found.items() if item in (kind, suffix)]
        if not hits:
            kinds = sorted({kind for _, kind, _ in found.values()})
            raise UsageError(
                f"--target_modules names {item!r}, which matches no module of this model: "
                f"use some of {', '.join(kinds)}"
            )
        chosen.extend(h for h in hits if h not in chosen)
    return sorted(chosen, key=lambda n: (found[n][0], KIND_ORDER.index(found[n][1])))


def head_modules(model: nn.Module) -> list[str]:
    """The task head, trained in full beside the adapters (and never quantised)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [head for head in ("pooler", "classifier") if head in names]
