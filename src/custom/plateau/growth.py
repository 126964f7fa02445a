"""Growing a LoRA module: the new A rows (linear algebra); the PEFT and optimizer surgery is the
library's (adarank.methods.growth), shared with the other growing methods.

Growth is function-preserving: new columns of B are zero, so B A is unchanged,
and the scaling alpha / r of each module stays at its first alpha / r0 (alpha
grows with r), so old directions are not rescaled. AdamW's moments of existing
entries are kept; new entries start with zero moments.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from adarank.methods.growth import extend_optimizer_state, resize_module

__all__ = ["GradientCapture", "extend_optimizer_state", "gradient_rows", "lora_rows", "resize_module",
           "top_directions", "whitened_rows"]


def top_directions(matrix: torch.Tensor, basis: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` orthonormal rows orthogonal to the columns of ``basis``: the top right singular
    vectors of ``matrix`` there, then, where ``matrix`` has fewer such directions, random ones."""
    outside = matrix - (matrix @ basis) @ basis.T
    _, values, vh = torch.linalg.svd(outside, full_matrices=False)
    chosen = vh[: count][values[: count] > 1e-6 * values[0].clamp_min(1e-30)]
    missing = count - chosen.shape[0]
    if missing:
        span = torch.cat([basis, chosen.T], dim=1)
        drawn = torch.randn(matrix.shape[1], missing, dtype=matrix.dtype, device=matrix.device)
        drawn = drawn - span @ (span.T @ drawn)
        chosen = torch.cat([chosen, torch.linalg.qr(drawn)[0].T])
    return chosen


def lora_rows(a: torch.Tensor, extra: int) -> torch.Tensor:
    """New A rows drawn as PEFT draws lora_A (Kaiming-uniform)."""
    rows = torch.empty(extra, a.shape[1])
    nn.init.kaiming_uniform_(rows, a=math.sqrt(5))
    return rows


def gradient_rows(a: torch.Tensor, gradient: torch.Tensor, extra: int) -> torch.Tensor:
    """The top right singular vectors of the frozen weight's gradient outside the span of the
    existing rows, scaled to their mean norm."""
    old = a.detach().double()
    basis, _ = torch.linalg.qr(old.T)  # the span of the existing rows
    directions = top_directions(gradient.double(), basis, extra)
    return (directions * old.norm(dim=1).mean()).float()


def whitened_rows(a: torch.Tensor, gradient: torch.Tensor, second_moment: torch.Tensor, extra: int
                  ) -> torch.Tensor | None:
    """Rows C^{-1/2} v: v the top right singular vectors of G C^{-1/2} outside the old rows' span.

    C is kept on the eigen-directions the inputs use (eigenvalues above 1e-3 of the mean):
    there the new features are exactly uncorrelated with the old ones (zero cross second
    moment) and with each other, each with a PEFT default row's energy. None where the
    inputs span too few directions for ``extra`` new ones.
    """
    values, vectors = torch.linalg.eigh(second_moment.double())
    used = values > 1e-3 * values.clamp_min(0).mean()
    values, vectors = values[used], vectors[:, used]
    to_white = vectors * values.sqrt()  # a row a becomes a @ to_white; x becomes diag^-1/2 V^T x
    from_white = vectors / values.sqrt()  # a whitened direction v becomes the row v @ from_white.T
    basis, _ = torch.linalg.qr((a.detach().double() @ to_white).T)  # old rows, whitened
    if extra > values.numel() - basis.shape[1]:
        return None
    directions = top_directions(gradient.double() @ from_white, basis, extra)
    # A PEFT default row (uniform in +-1/sqrt(in)) gives E[(a.x)^2] = trace(C) / (3 in);
    # a whitened unit direction gives E[(a.x)^2] = 1.
    target = torch.trace(second_moment.double()) / (3 * a.shape[1])
    return (directions @ from_white.T * target.sqrt()).float()


class GradientCapture:
    """Accumulates each frozen weight's gradient G = sum over tokens of grad_out^T x and, for the
    whitened init, the second moment sum of x x^T over the tokens whose output reaches the loss."""

    def __init__(self, layers: dict[str, nn.Module], second_moments: bool):
        self.layers = layers
        self.second_moments = second_moments
        self.gradients: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, list] = {}  # module -> [sum of x x^T, number of x]
        self._hooks: list = []

    @property
    def active(self) -> bool:
        return bool(self._hooks)

    def second_moment(self, name: str) -> torch.Tensor | None:
        total, count = self.inputs.get(name, (None, 0))
        return total.double() / count if count else None

    def clear(self) -> None:
        self.gradients, self.inputs = {}, {}

    def start(self) -> None:
        for name, layer in self.layers.items():
            def forward_hook(module, inputs, output, name=name):
                if not torch.is_grad_enabled() or not output.requires_grad:
                    return
                x = inputs[0].detach()

                def backward(grad, x=x):  # runs outside autocast: sums are float32
                    grad = grad.detach().reshape(-1, grad.shape[-1]).float()
                    x_flat = x.reshape(-1, x.shape[-1]).float()
                    self.gradients[name] = self.gradients.get(name, 0) + grad.T @ x_flat
                    if self.second_moments:
                        reached = x_flat[grad.abs().amax(dim=1) > 0]  # not padding, not cut off
                        total, count = self.inputs.get(name, (0, 0))
                        self.inputs[name] = [total + reached.T @ reached, count + reached.shape[0]]

                output.register_hook(backward)
            self._hooks.append(layer.register_forward_hook(forward_hook))

    def stop(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
