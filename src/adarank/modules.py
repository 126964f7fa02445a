"""Which weight matrices get adapters, and how a module is named in outputs.

The paper adapts all six matrices of every transformer layer (section 4):
query, key, value, attention output, intermediate (FFN in) and output (FFN out),
and not the pooler. Each architecture spells them differently; the table below
maps the name of a module inside one layer to the name outputs give it: the
paper's name for encoders (BERT, DeBERTa, ...), the architecture's own for
generators (Llama-style: q_proj ... down_proj; BART: q_proj ... fc2, with
``encoder_attn.`` for the decoder's cross-attention; T5: q ... wo).

A layer is labelled by its index ("3"), and in encoder-decoder models by its
stack too ("encoder.3", "decoder.3"), so the two stacks' layers stay apart.
"""

from __future__ import annotations

import re

from torch import nn

from adarank.errors import UsageError
from adarank.quantization import is_linear_4bit

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
    # Llama-style decoders (Llama, SmolLM2, Mistral, Qwen2)
    "self_attn.q_proj": "q_proj",
    "self_attn.k_proj": "k_proj",
    "self_attn.v_proj": "v_proj",
    "self_attn.o_proj": "o_proj",
    "mlp.gate_proj": "gate_proj",
    "mlp.up_proj": "up_proj",
    "mlp.down_proj": "down_proj",
    # BART (self-attention as above; the decoder's cross-attention)
    "self_attn.out_proj": "out_proj",
    "encoder_attn.q_proj": "encoder_attn.q_proj",
    "encoder_attn.k_proj": "encoder_attn.k_proj",
    "encoder_attn.v_proj": "encoder_attn.v_proj",
    "encoder_attn.out_proj": "encoder_attn.out_proj",
    "fc1": "fc1",
    "fc2": "fc2",
    # T5 (inside ``block.N.layer.M.``)
    "SelfAttention.q": "q",
    "SelfAttention.k": "k",
    "SelfAttention.v": "v",
    "SelfAttention.o": "o",
    "EncDecAttention.q": "EncDecAttention.q",
    "EncDecAttention.k": "EncDecAttention.k",
    "EncDecAttention.v": "EncDecAttention.v",
    "EncDecAttention.o": "EncDecAttention.o",
    "DenseReluDense.wi": "wi",
    "DenseReluDense.wi_0": "wi_0",
    "DenseReluDense.wi_1": "wi_1",
    "DenseReluDense.wo": "wo",
}
KIND_ORDER = (  # within a layer: attention first, then the FFN
    "query", "key", "value", "attention.output", "intermediate", "output",
    "q_proj", "k_proj", "v_proj", "o_proj", "out_proj",
    "encoder_attn.q_proj", "encoder_attn.k_proj", "encoder_attn.v_proj", "encoder_attn.out_proj",
    "gate_proj", "up_proj", "down_proj", "fc1", "fc2",
    "q", "k", "v", "o", "EncDecAttention.q", "EncDecAttention.k", "EncDecAttention.v", "EncDecAttention.o",
    "wi", "wi_0", "wi_1", "wo",
)
STACKS = ("encoder", "decoder")
# The task head of classification models, trained in full beside the adapters and never quantised
# (score: Llama-style classifiers).
HEAD_MODULES = ("pooler", "classifier", "score")

# BERT-style encoders: ``encoder.layer.N.``; BART: ``encoder.layers.N.`` / ``decoder.layers.N.``;
# Llama: ``model.layers.N.``; T5: ``encoder.block.N.layer.M.``. Only the plural and T5 containers
# belong to a stack of an encoder-decoder model.
_IN_LAYER = re.compile(r"(?:^|\.)(?:(encoder|decoder)\.)?(layers?|block)\.(\d+)\.(?:layer\.\d+\.)?(.+)$")
_ADAPTER_SUFFIX = re.compile(r"\.(lora_[A-Za-z]+|base_layer)(\.[^.]+)?$")


def locate(module_name: str) -> tuple[str, str] | None:
    """(layer label, kind) of an adaptable module, or None for anything else.

    Accepts names as they appear in the base model, in a PeftModel
    (``base_model.model.`` prefix) and in AdaLoRA's rank patterns (parameter
    names ending in ``.lora_E.<adapter>``).
    """
    name = _ADAPTER_SUFFIX.sub("", module_name)
    match = _IN_LAYER.search(name)
    if match is None:
        return None
    stack, container, index, inner = match.groups()
    kind = MODULE_KINDS.get(inner)
    if kind is None:
        return None
    return (f"{stack}.{index}" if stack and container != "layer" else index), kind


def layer_order(label: str) -> tuple[int, int]:
    """Sort key of a layer label: encoder layers (or the only stack) first, by index."""
    stack, _, index = label.rpartition(".")
    return (STACKS.index(stack) if stack in STACKS else 0), int(index)


def _order(found: dict, name: str) -> tuple:
    layer, kind, _ = found[name]
    return (*layer_order(layer), KIND_ORDER.index(kind))


def resolve_target_modules(model: nn.Module, requested: str | None = None) -> list[str]:
    """Full names of the Linear modules to adapt.

    ``requested`` is a comma-separated list of paper names (``query,value``) or
    in-layer module names (``attention.self.query``); None means all six kinds.
    """
    found: dict[str, tuple[int, str, str]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) and not is_linear_4bit(module):
            continue
        place = locate(name)
        if place is not None:
            suffix = _IN_LAYER.search(_ADAPTER_SUFFIX.sub("", name)).group(4)
            found[name] = (place[0], place[1], suffix)
    if not found:
        raise UsageError(
            f"no adaptable Linear modules found in {type(model).__name__} (known layer modules: "
            f"{', '.join(sorted(MODULE_KINDS))}): pass --target_modules with names from this model"
        )
    if requested is None:
        return sorted(found, key=lambda n: _order(found, n))
    wanted = [w.strip() for w in requested.split(",") if w.strip()]
    if not wanted:
        raise UsageError(f"--target_modules {requested!r} names no module: use e.g. query,value")
    chosen = []
    for item in wanted:
        # A kind, an in-layer name, or its last part: q_proj names BART's self- and cross-attention's.
        hits = [n for n, (_, kind, suffix) in found.items() if item in (kind, suffix) or suffix.endswith("." + item)]
        if not hits:
            kinds = sorted({kind for _, kind, _ in found.values()})
            raise UsageError(
                f"--target_modules names {item!r}, which matches no module of this model: "
                f"use some of {', '.join(kinds)}"
            )
        chosen.extend(h for h in hits if h not in chosen)
    return sorted(chosen, key=lambda n: _order(found, n))


def check_rank_fits(model: nn.Module, targets: list[str], rank: tuple[str, int] | None) -> None:
    """Refuse a rank (the flag that sets it, and its value) above min(in, out) of the smallest adapted
    matrix: it has no more singular directions than that, so a larger rank only costs memory (and
    PiSSA's and AdaLoRA's SVDs need that many)."""
    if rank is None or not targets:
        return
    flag, value = rank
    widths = {name: (model.get_submodule(name).in_features, model.get_submodule(name).out_features)
              for name in targets}
    smallest = min(widths, key=lambda name: min(widths[name]))
    most = min(widths[smallest])
    if value > most:
        raise UsageError(f"--{flag} {value} is more than the {most} singular directions of the smallest adapted "
                         f"matrix ({smallest}, {widths[smallest][0]} x {widths[smallest][1]}): use --{flag} {most} "
                         "or less")


def head_modules(model: nn.Module) -> list[str]:
    """The task head, trained in full beside the adapters (and never quantised)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [head for head in HEAD_MODULES if head in names]
