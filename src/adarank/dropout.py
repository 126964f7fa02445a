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
"""

from __future__ import annotations

import torch
from torch import nn

_BITS = 31


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
    Attention modules that only pass their dropout's probability to the attention function keep
    that function's own dropout."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = FastDropout
            count += 1
    return count
