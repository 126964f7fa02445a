"""IncreLoRA's importance of an adapted matrix, and the order the matrices get ranks in.

Every trainable entry w of an incremental matrix (of P, lambda and Q) has AdaLoRA's smoothed
sensitivity and uncertainty, updated after every optimizer step (AdaLoRA eqs. 8-9, with the same
beta1, beta2)::

    I(w)  = |w * dL/dw|
    Ibar  = beta1 * Ibar + (1 - beta1) * I
    Ubar  = beta2 * Ubar + (1 - beta2) * |I - Ibar|       (Ibar: the value just updated)
    s(w)  = Ibar * Ubar                                   (AdaLoRA eq. 10)

and a matrix's importance is the mean of s over its active entries (its r columns of P, r lambdas
and r rows of Q; not the reserved triplet). At a growth step the matrices are taken from the most
important down (ties in the order the matrices were adapted).
"""

from __future__ import annotations

import torch


def smoothed_importance(avg: torch.Tensor, unc: torch.Tensor, value: torch.Tensor, grad: torch.Tensor,
                        beta1: float, beta2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The averages (Ibar, Ubar) of one tensor after a step with entries ``value`` and gradient ``grad``."""
    sensitivity = (value * grad).abs()
    avg = beta1 * avg + (1 - beta1) * sensitivity
    unc = beta2 * unc + (1 - beta2) * (sensitivity - avg).abs()
    return avg, unc


def matrix_score(avg: list[torch.Tensor], unc: list[torch.Tensor], rank: int) -> float:
    """The mean of Ibar * Ubar over the active entries of one matrix: ``avg`` and ``unc`` hold the
    averages of (Q, P, lambda), shaped (r', in), (out, r') and (r',) with r' >= rank."""
    (avg_q, avg_p, avg_e), (unc_q, unc_p, unc_e) = avg, unc
    total = (avg_q[:rank] * unc_q[:rank]).sum() + (avg_p[:, :rank] * unc_p[:, :rank]).sum() \
        + (avg_e[:rank] * unc_e[:rank]).sum()
    count = rank * (avg_q.shape[1] + avg_p.shape[0] + 1)
    return float(total) / count


def by_importance(scores: dict[str, float]) -> list[str]:
    """The matrices from the most important down; equal scores keep their order."""
    return sorted(scores, key=lambda name: -scores[name])
