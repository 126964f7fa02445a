"""Dropout on the CPU with cheaper masks.

``torch.nn.Dropout`` draws its mask with ``bernoulli_``, one draw from the generator per element: at
the embedded MiniLM's SST-2 shapes its 14 hidden-state masks cost about as much as the model's
matmuls in bf16. Here each 64-bit draw gives two elements: its two 32-bit halves, each reduced to 31
uniform bits (``random_`` fills an int64 with values below 2**63, so the high half has 31 random bits,
the low half 32), and an element is kept where its 31-bit value is below round((1 - p) * 2**31). The
mask is the same distribution as ``bernoulli_(1 - p)`` up to that rounding of the keep probability
(below 2**-32), independent across elements, and drawn from the same default generator (so it follows
``torch.manual_seed`` and the RNG state a checkpoint restores). Kept values are scaled by 1 / (1 - p),
as ``nn.Dropout`` does; the mask is kept as booleans for the backward pass.

Attention-probability dropout is not an ``nn.Dropout`` call: transformers' attention modules pass
its probability to the attention function, and in training on the CPU PyTorch's attention runs its
composite ("math") kernel, which draws the mask with ``bernoulli_``. The attention function
registered here makes that kernel's computation step by step (``_attention``: fp32 inside for bf16
inputs, autocast off, the scale split between query and key, the padding added, a softmax that
gives zeros on a row with nothing to attend), with the dropout of ``_MaskedScale`` on the
probabilities; with every element kept its output is PyTorch's bit for bit (tested). Everywhere
else (evaluation, no dropout, other devices, grouped or causal attention, a position bias) it is
transformers' ``sdpa`` unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_BITS = 31
ATTENTION = "sdpa_fast_dropout"  # the attention implementation registered with transformers


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A boolean mask of ``shape``, each element True with probability 1 - p (to 2**-32)."""
    count = shape.numel()
    words = torch.empty((count + 1) // 2, dtype=torch.int64).random_()
    halves = words.view(torch.int32)[:count].bitwise_and(2**_BITS - 1)
    return halves.lt(round((1.0 - p) * 2**_BITS)).view(shape)


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        mask, scale = keep_mask(x.shape, p), 1.0 / (1.0 - p)
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return torch.ops.aten.native_dropout_backward(x, mask, scale)  # x * mask * scale, one pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return torch.ops.aten.native_dropout_backward(grad, mask, ctx.scale), None


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with the mask of ``keep_mask``; on other devices than the CPU, ``nn.Dropout``'s."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or self.p == 1.0:
            return super().forward(x)
        return _MaskedScale.apply(x, self.p)


def use_fast_dropout(model: nn.Module) -> int:
    """Every ``nn.Dropout`` of ``model`` becomes a ``FastDropout`` (same probability); returns how many.
    Attention modules only pass their dropout's probability to the attention function: see
    ``use_fast_attention_dropout``."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = FastDropout
            count += 1
    return count


def _takes_given_mask(module, query, key, attention_mask, dropout, is_causal, kwargs) -> bool:
    """Where the attention of ``sdpa_fast_dropout`` draws its own mask: training on the CPU with
    attention dropout below 1, one key head per query head, no causal flag and nothing but a padding
    mask."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    return (module.training and 0.0 < dropout < 1.0 and query.device.type == "cpu" and not causal
            and key.shape[1] == query.shape[1] and kwargs.get("position_bias") is None
            and kwargs.get("softcap") is None and (attention_mask is None or attention_mask.dim() == 4))


def _attention(query, key, value, attention_mask, dropout: float, scaling: float | None) -> torch.Tensor:
    """PyTorch's composite attention kernel, [batch, heads, tokens, head size] out, with the
    probabilities dropped by ``_MaskedScale``. Under CPU autocast the inputs are cast to its dtype and
    the kernel runs without it, as autocast runs ``scaled_dot_product_attention``."""
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else query.dtype
    with torch.autocast("cpu", enabled=False):
        query, key, value = (t.to(dtype) for t in (query, key, value))
        if dtype in (torch.bfloat16, torch.float16):  # the kernel's accumulation dtype
            query, key, value = query.float(), key.float(), value.float()
        root = math.sqrt(scaling if scaling is not None else 1.0 / math.sqrt(query.size(-1)))
        scores = (query * root) @ (key.transpose(-2, -1) * root)
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:  # transformers' sdpa mask: True where attended
                attention_mask = torch.zeros((), dtype=dtype).masked_fill(~attention_mask, float("-inf"))
            scores = scores + attention_mask
        probabilities = _MaskedScale.apply(torch._safe_softmax(scores, -1), dropout)
        return (probabilities @ value).to(dtype)


def fast_dropout_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                           scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' ``sdpa`` attention, with the probability mask from ``keep_mask`` where
    PyTorch would draw it with ``bernoulli_`` (``_takes_given_mask``)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not _takes_given_mask(module, query, key, attention_mask, dropout, is_causal, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    return _attention(query, key, value, attention_mask, dropout, scaling).transpose(1, 2).contiguous(), None


def _attention_dropout(config) -> float:
    """The attention-probability dropout a model's config sets (BERT's name, then the newer one)."""
    return getattr(config, "attention_probs_dropout_prob", None) or getattr(config, "attention_dropout", 0.0) or 0.0


def use_fast_attention_dropout(model: nn.Module) -> int:
    """Models of ``model`` that attend with transformers' ``sdpa`` and drop attention probabilities
    switch to ``sdpa_fast_dropout``; returns how many of their attention modules draw its masks
    (causal ones keep sdpa's)."""
    from transformers import AttentionInterface, PreTrainedModel
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, fast_dropout_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the masks sdpa takes
    switched = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if (isinstance(module, PreTrainedModel) and id(config) not in switched
                and config._attn_implementation == "sdpa" and _attention_dropout(config) > 0):
            module.set_attn_implementation(ATTENTION)
            switched.add(id(config))
    return sum(1 for module in model.modules()  # the attention modules that can take its own path
               if not isinstance(module, PreTrainedModel) and id(getattr(module, "config", None)) in switched
               and getattr(module, "is_causal", True) is False)
