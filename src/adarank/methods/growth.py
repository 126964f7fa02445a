"""Changing the rank of a PEFT LoRA module in the middle of training, with the same optimizer.

Methods whose ranks grow (src/custom's plateau method, IncreLoRA) need the same surgery: new rows
of A and columns of B appended to the live parameters, the layer's and the PEFT config's rank and
alpha kept in step (so that the adapter saves and reloads with its ``rank_pattern``), and the
optimizer's per-entry state (AdamW's moments) extended with zeros for the new entries while the old
entries keep theirs. The parameters stay the same ``nn.Parameter`` objects (their ``.data`` is
replaced), so the optimizer, hooks on them and the Trainer keep working.
"""

from __future__ import annotations

import torch
from torch import nn


def set_lora_weights(peft_model, layer, name: str, a: torch.Tensor, b: torch.Tensor, alpha: float) -> None:
    """Give module ``name`` the weights A (r x in) and B (out x r), of any rank r, and ``alpha``
    (scaling alpha / r), in the layer and in the PEFT config that saves it."""
    adapter = peft_model.active_adapter
    rank = a.shape[0]
    if b.shape[1] != rank:
        raise ValueError(f"A has {rank} rows but B {b.shape[1]} columns")
    weight_a, weight_b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    with torch.no_grad():
        weight_a.data = a.to(weight_a.device, weight_a.dtype).contiguous()
        weight_b.data = b.to(weight_b.device, weight_b.dtype).contiguous()
    layer.lora_A[adapter].out_features = rank
    layer.lora_B[adapter].in_features = rank
    layer.r[adapter] = rank
    layer.lora_alpha[adapter] = alpha
    layer.scaling[adapter] = alpha / rank
    config = peft_model.peft_config[adapter]
    config.rank_pattern = {**(config.rank_pattern or {}), name: rank}
    config.alpha_pattern = {**(config.alpha_pattern or {}), name: alpha}


def resize_module(peft_model, layer, name: str, new_rank: int, rows: torch.Tensor, alpha: float,
                  columns: torch.Tensor | None = None) -> None:
    """Append ``rows`` to A and ``columns`` to B (default zeros: B A, the update, is unchanged), and
    record rank ``new_rank`` and ``alpha`` in the layer and the PEFT config."""
    adapter = peft_model.active_adapter
    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    extra = rows.shape[0]
    if a.shape[0] + extra != new_rank:
        raise ValueError(f"{name}: rank {a.shape[0]} + {extra} new rows is not {new_rank}")
    if columns is None:
        columns = torch.zeros(b.shape[0], extra)
    set_lora_weights(peft_model, layer, name, torch.cat([a.data, rows.to(a.device, a.dtype)], dim=0),
                     torch.cat([b.data, columns.to(b.device, b.dtype)], dim=1), alpha)


def extend_parameter_state(optimizer, param: nn.Parameter, dim: int, extra: int) -> None:
    """Zero optimizer state for ``extra`` new entries of ``param`` appended along ``dim``; the
    state of the existing entries is kept. Only tensors shaped like the parameter (AdamW's moments)
    grow; scalars (the step count) stay."""
    state = getattr(optimizer, "optimizer", optimizer).state
    for key, value in state.get(param, {}).items():
        if torch.is_tensor(value) and value.dim() == param.dim() and value.dim() > dim:
            shape = list(value.shape)
            shape[dim] = extra
            state[param][key] = torch.cat([value, value.new_zeros(shape)], dim=dim)


def extend_optimizer_state(optimizer, a: nn.Parameter, b: nn.Parameter, extra: int) -> None:
    """Zero moments for the new rows of A and columns of B; existing entries keep theirs."""
    extend_parameter_state(optimizer, a, 0, extra)
    extend_parameter_state(optimizer, b, 1, extra)
