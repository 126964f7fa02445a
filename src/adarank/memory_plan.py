"""Memory of every method planned from a model's config alone: no weights are read, nothing trains.

For planning before renting a GPU (``analysis/memory_calculation.py --model_name_or_path``).
The model is built on the meta device, and each piece comes from where training takes it:
the adapted matrices from ``resolve_target_modules``, the task head from ``head_modules``,
the component of every tensor from ``adarank.memory``, the weights the 4-bit loader
quantises from the skip list ``UNQUANTIZED_HEAD``, the ranks and adapter parameters from the
methods themselves (``AdapterMethod.budget_ranks`` and ``adapter_parameters``).

The analytic model:
- ``dtype`` (fp32 by default) for every unquantised tensor;
- NF4 with double quantisation: 4 bits a weight, one 8-bit absmax per block of 64 weights,
  one fp32 absmax per 256 of those, i.e. 4 + 8/64 + 32/(64*256) = 4.127 bits (the small
  code books are left out);
- training adds, per trainable parameter, its fp32 gradient and AdamW's two fp32 moments,
  and the method's own fp32 tensors per adapter parameter (``AdapterMethod.allocator_tensors``: AdaLoRA's
  allocator keeps three, importance, its average, its uncertainty); activations depend on batch and
  length and are not included.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification
from transformers.quantizers.quantizers_utils import should_convert_module

from adarank.errors import UsageError, first_line, whole_message
from adarank.loading import UNQUANTIZED_HEAD, embedded_model_path
from adarank.memory import base_tensors
from adarank.methods import BUILT_IN_METHODS, budget_rank, get_method
from adarank.modules import resolve_target_modules

NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
FP32 = 4  # adapters, the trained head, gradients, AdamW's moments and the allocator are fp32


@dataclass(frozen=True)
class Architecture:
    """What a plan needs to know of a model."""

    parameters: dict[str, int]  # parameters by component (adarank.memory.BASE_COMPONENTS)
    quantized_params: int  # weights the 4-bit loader turns into NF4
    buffer_bytes: int  # e.g. position ids
    adapted: tuple[tuple[int, int], ...]  # (in, out) features of every adapted matrix

    @property
    def total_params(self) -> int:
        return sum(self.parameters.values())


@dataclass(frozen=True)
class MemoryPlan:
    """One method's memory at one budget, in bytes."""

    method: str
    budget: str
    base_bytes: float
    full_precision_base_bytes: int
    unquantized_percent: float  # of the base's parameters (100 without quantisation)
    train_adapter_params: int  # the most while training (AdaLoRA: at its initial rank)
    saved_adapter_params: int  # at the end (AdaLoRA: at the final average rank)
    trainable_params: int  # adapters while training, and the task head
    optimizer_bytes: int
    allocator_bytes: int
    training_bytes: float  # base, fp32 adapters and head, gradients, optimizer, allocator; no activations

    @property
    def saved_adapter_bytes(self) -> int:
        return self.saved_adapter_params * FP32


def model_skeleton(name_or_path: str | None, num_labels: int) -> nn.Module:
    """The model's modules with their shapes, on the meta device: no weights are read.

    ``name_or_path``: a hub name, a model folder or a config JSON; None, the embedded MiniLM.
    Encoder-decoders (BART, T5) and causal LMs are built as generators, as summarization trains
    them; anything else as a sequence classifier with ``num_labels`` labels.
    """
    if name_or_path is None:
        name_or_path = embedded_model_path()
    try:
        if Path(name_or_path).is_file():
            document = json.loads(Path(name_or_path).read_text())
            if not isinstance(document, dict):
                raise ValueError("a JSON list or value, not a config's object")
            config = AutoConfig.for_model(document.pop("model_type"), **document)
        else:
            config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError, KeyError, json.JSONDecodeError, StrictDataclassError) as error:
        # a field of the wrong type: the first line names the field, the next one what it holds
        why = whole_message(error, 160) if isinstance(error, StrictDataclassError) else first_line(error, 120)
        raise UsageError(
            f"cannot read a model config from {name_or_path!r} ({why}): "
            "give a model folder, a config.json, or a hub name reachable from here"
        ) from None
    config.num_labels = num_labels
    causal = any(a.endswith("ForCausalLM") for a in getattr(config, "architectures", None) or [])
    kind = (AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM if causal
            else AutoModelForSequenceClassification)
    try:
        with torch.device("meta"):
            return kind.from_config(config)
    except (ValueError, TypeError, RuntimeError) as error:  # shapes that do not fit: heads, a negative width
        raise UsageError(f"the model config {name_or_path!r} builds no model ({first_line(error, 160)}): "
                         "give a config whose sizes are positive whole numbers that fit together") from None


def is_generator(model: nn.Module) -> bool:
    return hasattr(model, "lm_head")


def quantized_by_loader(name: str, module: nn.Module, skip=UNQUANTIZED_HEAD) -> bool:
    """Whether loading in 4 bits turns this module into NF4: transformers converts every
    nn.Linear whose name the skip list does not match (generators keep lm_head)."""
    return type(module) is nn.Linear and should_convert_module(name, skip)


def architecture(model: nn.Module) -> Architecture:
    """Parameters by component, buffers and adapted shapes of a (meta-device) model."""
    parameters, buffer_bytes = {}, 0
    for kind, tensor in base_tensors(model):
        if isinstance(tensor, nn.Parameter):
            parameters[kind] = parameters.get(kind, 0) + tensor.numel()
        else:
            buffer_bytes += tensor.numel() * tensor.element_size()
    try:
        adapted = [model.get_submodule(name) for name in resolve_target_modules(model)]
    except UsageError:
        raise UsageError(f"{type(model).__name__} has none of the six adaptable matrices this project knows") from None
    return Architecture(
        parameters=parameters,
        quantized_params=sum(m.weight.numel() for n, m in model.named_modules()
                             if quantized_by_loader(n, m, ["lm_head"] if is_generator(model) else UNQUANTIZED_HEAD)),
        buffer_bytes=buffer_bytes,
        adapted=tuple((m.in_features, m.out_features) for m in adapted),
    )


def planned_methods() -> list[str]:
    """The library's own methods that train adapters, in the order they are registered (any other
    registered method, e.g. src/custom's, is planned when named)."""
    return [name for name in BUILT_IN_METHODS if get_method(name).trains]


def plan(arch: Architecture, method_name: str, budget: str, dtype: str = "float32",
         init_r: int | None = None) -> MemoryPlan:
    """``init_r``: the initial rank where a recipe sets it (AdaLoRA's; default: the method's rule)."""
    if dtype not in DTYPE_BYTES:
        raise UsageError(f"unknown dtype {dtype!r} for the unquantised tensors: choose one of {', '.join(DTYPE_BYTES)}")
    method, width = get_method(method_name), DTYPE_BYTES[dtype]
    total = arch.total_params
    fp_bytes = total * width + arch.buffer_bytes
    if not method.trains:
        raise UsageError(f"the memory plan is for methods that train adapters; {method.name} trains none")
    adapter = method.adapter_parameters(method.budget_ranks(budget_rank(budget), init_r), arch.adapted)
    train_adapter, saved_adapter = adapter.most, adapter.end
    base = fp_bytes - arch.quantized_params * (width - NF4_BITS / 8) if method.quantized else fp_bytes
    trainable = train_adapter + arch.parameters.get("head", 0)
    optimizer = trainable * FP32 * 2  # AdamW: two moments
    gradients = trainable * FP32
    allocator = train_adapter * FP32 * method.allocator_tensors
    weights = trainable * FP32  # adapters and the trained copy of the head
    return MemoryPlan(
        method=method_name, budget=budget, base_bytes=base, full_precision_base_bytes=fp_bytes,
        unquantized_percent=100 * (total - arch.quantized_params) / total if method.quantized else 100.0,
        train_adapter_params=train_adapter, saved_adapter_params=saved_adapter, trainable_params=trainable,
        optimizer_bytes=optimizer, allocator_bytes=allocator,
        training_bytes=base + weights + gradients + optimizer + allocator,
    )


def plan_model(name_or_path: str | None, budget: str = "small", dtype: str = "float32", num_labels: int = 2,
               methods: Iterable[str] | None = None, init_r: int | None = None) -> list[MemoryPlan]:
    """The plan of every method (default: ``planned_methods()``) for a model, from its config alone."""
    budget_rank(budget)  # an unknown budget fails before the model is built
    arch = architecture(model_skeleton(name_or_path, num_labels))
    return [plan(arch, method, budget, dtype, init_r) for method in (methods or planned_methods())]
