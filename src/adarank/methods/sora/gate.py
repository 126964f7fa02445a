"""SoRA's gate on PEFT's LoRA layers: the gated forward, the proximal step, and the fold that turns
a trained SoRA model back into a plain LoRA model.

A gated layer is PEFT's LoRA ``Linear`` with one more parameter per adapter, ``sora_gate`` (r_max
entries, starting at 1), between A and B: h = W0 x + B (g * (A x)) * scaling. The gate's name has
no ``lora_`` in it, so PEFT's checkpoints stay plain LoRA adapters (the gates travel in the
method's own checkpoint file) and PEFT's "only LoRA trains" rule never touches them. The forward
is the fused one of ``adarank.methods.fused`` with g folded into the scale of the tokens x r product,
so a gate costs an elementwise product on r columns (``--peft_forward`` does not apply: PEFT has no
gated forward).

After training, ``fold_gates`` multiplies B by diag(g), drops the dimensions whose gate is zero and
records each module's rank and alpha in the PEFT config (rank_pattern, alpha_pattern with
alpha / r unchanged), so the saved adapter reloads with ``PeftModel.from_pretrained`` and computes
the same function. PEFT refuses rank 0, so a module whose gates are all zero keeps one zero
direction (a zero row of A and a zero column of B), which adds nothing to its output.
"""

from __future__ import annotations

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.utils.other import transpose
from torch import nn

from adarank.errors import UsageError
from adarank.methods.fused import diagonal_forward, plain_adapter
from adarank.methods.growth import set_lora_weights

GATE = "sora_gate"


def proximal_step(gate: torch.Tensor, grad: torch.Tensor, eta: float, lam: float) -> torch.Tensor:
    """The paper's update of the gate (section 3): a gradient step on the loss, then the proximal
    map of eta * lambda * ||g||_1, which is soft-thresholding at eta * lambda."""
    z = gate - eta * grad
    return torch.sign(z) * torch.clamp(z.abs() - eta * lam, min=0.0)


class GatedLinear(LoraLinear):
    """PEFT's LoRA linear layer with SoRA's gate between A and B."""

    fused_forward = True  # counted by fuse_adapter_forward

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters or self.merged:
            if self.disable_adapters and self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        adapter = plain_adapter(self, args, kwargs)
        if adapter is None:
            raise NotImplementedError("a SoRA layer runs one active plain LoRA adapter without extra arguments")
        return diagonal_forward(self, x, adapter, getattr(self, GATE)[adapter])  # B diag(g) A x alpha / r

    def get_delta_weight(self, adapter) -> torch.Tensor:
        """B diag(g) A times the scaling: what merging adds to the base weight."""
        b = self.lora_B[adapter].weight * getattr(self, GATE)[adapter].to(self.lora_B[adapter].weight.dtype)
        return transpose(b @ self.lora_A[adapter].weight, self.fan_in_fan_out) * self.scaling[adapter]


def add_gates(peft_model, target_modules: list[str]) -> dict[str, GatedLinear]:
    """Give every adapted module a gate of ones (the start is LoRA at r_max); name -> gated layer.
    The gates do not require gradients until training starts, so the Trainer's optimizer leaves them out."""
    adapter = peft_model.active_adapter
    layers = {}
    for name in target_modules:
        layer = peft_model.base_model.model.get_submodule(name)
        if type(layer) is not LoraLinear:
            raise UsageError(f"--method sora adapts linear layers only; {name} is a {type(layer).__name__}: "
                             "choose linear --target_modules")
        layer.__class__ = GatedLinear
        ones = torch.ones(layer.r[adapter], device=layer.lora_A[adapter].weight.device)
        setattr(layer, GATE, nn.ParameterDict({adapter: nn.Parameter(ones, requires_grad=False)}))
        layers[name] = layer
    return layers


def gate_of(layer: GatedLinear, adapter: str) -> nn.Parameter:
    return getattr(layer, GATE)[adapter]


def fold_gates(peft_model, layers: dict[str, GatedLinear]) -> dict[str, int]:
    """Turn every gated layer into a plain LoRA layer of its live rank (see the module's docstring);
    returns each module's live rank (0 where all its gates are zero)."""
    adapter = peft_model.active_adapter
    return {name: _fold_layer(peft_model, layer, name, adapter) for name, layer in layers.items()}


def _fold_layer(peft_model, layer: GatedLinear, name: str, adapter: str) -> int:
    """B diag(g) and A on the live dimensions, alpha / r kept (methods/growth.py's surgery); the live rank."""
    gate = gate_of(layer, adapter).detach()
    live = gate.nonzero().flatten()
    a_weight, b_weight = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    with torch.no_grad():
        a = a_weight[live]
        b = b_weight[:, live] * gate[live].to(b_weight.dtype)
        if live.numel() == 0:  # PEFT refuses rank 0: one zero direction
            a, b = a_weight.new_zeros(1, a.shape[1]), b_weight.new_zeros(b.shape[0], 1)
    alpha = layer.lora_alpha[adapter] * a.shape[0] / layer.r[adapter]  # alpha / r stays what it was
    set_lora_weights(peft_model, layer, name, a, b, alpha)
    delattr(layer, GATE)
    layer.__class__ = LoraLinear
    return live.numel()
