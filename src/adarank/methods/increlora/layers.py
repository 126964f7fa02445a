"""IncreLoRA's incremental matrices inside PEFT LoRA layers.

Each adapted matrix W gets the update ``Delta W = P diag(lambda) Q * scale`` (the SVD-like form
IncreLoRA takes from AdaLoRA, a sum of rank-one triplets p_i lambda_i q_i): PEFT's ``lora_B`` holds P
(out x r), ``lora_A`` holds Q (r x in) and a ``lora_E`` entry beside them holds lambda. Initial values
are AdaLoRA's: lambda = 0, P and Q ~ N(0, 0.02), so the update starts at zero. The scale is fixed
for the whole run (adding a rank never rescales the others).

Training adds R(P, Q), the orthogonal regulariser of AdaLoRA (``adalora.fast.orthogonality``),
weighted by gamma, to the loss. With advance learning, the last triplet of every matrix is reserved:
its lambda is held at 0 (its gradient is zeroed), so the loss cannot move its p and q and only the
regulariser trains them, towards unit vectors orthogonal to the active ones, before they are used.

When training ends, ``fold`` makes every layer a plain PEFT LoRA layer: B = P diag(lambda) over the
active ranks, A = Q, the reserved triplet dropped, rank and alpha in the config's ``rank_pattern`` and
``alpha_pattern``. The saved adapter then reloads with ``PeftModel.from_pretrained``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.utils.other import transpose
from torch import nn

from adarank.errors import UsageError
from adarank.methods.adalora.fast import group_by_shape, orthogonality
from adarank.methods.fused import diagonal_forward
from adarank.methods.growth import extend_optimizer_state, extend_parameter_state, resize_module, set_lora_weights

INIT_STD = 0.02  # P and Q ~ N(0, 0.02), lambda = 0 (AdaLoRA's initial values, PEFT's AdaLoRA default)


class IncreLoraLinear(LoraLinear):
    """A PEFT LoRA linear layer whose update is B diag(E) A times the layer's scaling, added inside the
    base layer's output as the library's fused LoRA forward does (adarank/methods/fused.py)."""

    fused_forward = True  # counted by fuse_adapter_forward

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters or self.merged:
            if self.disable_adapters and self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if args or kwargs:
            result = self.base_layer(x, *args, **kwargs)
            return result + self._update(x, result.dtype)
        adapter = self.active_adapters[0]
        return diagonal_forward(self, x, adapter, self.lora_E[adapter])

    def _update(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        adapter = self.active_adapters[0]
        a = self.lora_A[adapter].weight
        low = F.linear(self.lora_dropout[adapter](self._cast_input_dtype(x, a.dtype)), a)
        return F.linear(low * (self.lora_E[adapter] * self.scaling[adapter]), self.lora_B[adapter].weight).to(dtype)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """Delta W = P diag(lambda) Q * scale, so merging before the fold adds the update the forward adds."""
        q, p, e = triplet_parameters(self, adapter)
        return transpose((p * e) @ q, self.fan_in_fan_out) * self.scaling[adapter]


def triplet_parameters(layer, adapter: str) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
    """(Q, P, lambda) of a layer: PEFT's lora_A and lora_B weights and lora_E."""
    return layer.lora_A[adapter].weight, layer.lora_B[adapter].weight, layer.lora_E[adapter]


def install(peft_model, names: list[str], scale: float) -> dict[str, nn.Module]:
    """Turn the PEFT LoRA layers ``names`` into IncreLoRA layers (AdaLoRA's initial values)."""
    adapter = peft_model.active_adapter
    layers = {}
    for name in names:
        layer = peft_model.base_model.model.get_submodule(name)
        if type(layer) is not LoraLinear:
            raise UsageError(f"IncreLoRA adapts plain linear layers; {name} is a {type(layer).__name__}")
        rank = layer.r[adapter]
        q = torch.empty(rank, layer.in_features).normal_(0.0, INIT_STD)
        p = torch.empty(layer.out_features, rank).normal_(0.0, INIT_STD)
        set_lora_weights(peft_model, layer, name, q, p, scale * rank)
        layer.lora_E = nn.ParameterDict({adapter: nn.Parameter(torch.zeros(rank))})
        layer.__class__ = IncreLoraLinear
        layers[name] = layer
    return layers


def hold_last_lambda(layer, adapter: str):
    """Zero the gradient of the last lambda (the reserved triplet's) in every backward pass; returns
    the hook's handle."""
    return layer.lora_E[adapter].register_hook(lambda grad: torch.cat([grad[:-1], grad.new_zeros(1)]))


def append_triplet(peft_model, layer, name: str, q: torch.Tensor, p: torch.Tensor, scale: float,
                   optimizer=None) -> None:
    """Append the triplet (p, lambda = 0, q) to a layer, with zero optimizer state for it; the
    update (lambda = 0) and the other triplets' values and optimizer state are unchanged."""
    adapter = peft_model.active_adapter
    a, b, e = triplet_parameters(layer, adapter)
    rank = a.shape[0] + 1
    resize_module(peft_model, layer, name, rank, q.reshape(1, -1), scale * rank, columns=p.reshape(-1, 1))
    with torch.no_grad():
        e.data = torch.cat([e.data, e.data.new_zeros(1)])
    if optimizer is not None:
        extend_optimizer_state(optimizer, a, b, 1)
        extend_parameter_state(optimizer, e, 0, 1)


def fold(peft_model, layer, name: str, active: int, scale: float) -> None:
    """Make ``layer`` a plain PEFT LoRA layer of rank ``active`` with the same update: lambda folded
    into B, the triplets beyond ``active`` (the reserved one) dropped."""
    adapter = peft_model.active_adapter
    a, b, e = triplet_parameters(layer, adapter)
    with torch.no_grad():
        q, p = a.data[:active].clone(), b.data[:, :active] * e.data[:active]
    set_lora_weights(peft_model, layer, name, q, p, scale * active)
    del layer.lora_E
    layer.__class__ = LoraLinear


class OrthogonalRegulariser:
    """Adds gamma R(P, Q) to the training loss of a PEFT model (in training mode only: evaluation
    losses stay the task's), over the current, possibly grown, shapes of ``layers``."""

    def __init__(self, peft_model, layers: dict[str, nn.Module], weight: float):
        self.tuner = peft_model.base_model
        self.adapter = peft_model.active_adapter
        self.layers = layers
        self.weight = weight
        if weight > 0:
            self.tuner.forward = self.forward

    def value(self) -> torch.Tensor:
        pairs = []
        for layer in self.layers.values():
            pairs += [("A", layer.lora_A[self.adapter].weight), ("B", layer.lora_B[self.adapter].weight)]
        return orthogonality(group_by_shape(pairs))

    def forward(self, *args, **kwargs):
        outputs = self.tuner.model(*args, **kwargs)
        loss = getattr(outputs, "loss", None)
        if isinstance(loss, torch.Tensor) and self.tuner.model.training:
            outputs.loss = loss + self.weight * self.value()
        return outputs

    def remove(self) -> None:
        self.tuner.__dict__.pop("forward", None)
