"""PEFT's AdaLoRA made cheap, on one model's instance: the same formulas, fewer small operations.

Also the formulas other parts of the library measure AdaLoRA with (the update's scale, the
orthogonal regulariser), so that they are written once.
"""

from __future__ import annotations

import torch
from peft import PeftModel


def update_scale(scaling, ranknum):
    """The scale of AdaLoRA's update B diag(E) A as PEFT applies it: scaling / (ranknum + 1e-5)
    (floats or tensors, computed as given)."""
    return scaling / (ranknum + 1e-5)


def group_by_shape(matrices) -> dict[tuple, list]:
    """(A or B, shape) -> the matrices of that kind and shape, from (``"A"`` or ``"B"``, matrix)
    pairs; groups and matrices in the order given."""
    groups: dict[tuple, list] = {}
    for kind, matrix in matrices:
        groups.setdefault((kind, tuple(matrix.shape)), []).append(matrix)
    return groups


def distances_from_orthogonal(kind: str, stacked: torch.Tensor) -> torch.Tensor:
    """||A A^T - I||_F (``kind`` "A", ``stacked`` (n, r, in)) or ||B^T B - I||_F ("B", (n, out, r)) of
    each of n matrices, their Gram matrices taken in one ``bmm`` (of one matrix: a 0-d tensor)."""
    gram = stacked @ stacked.mT if kind == "A" else stacked.mT @ stacked
    identity = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    return torch.linalg.matrix_norm(gram - identity)


def orthogonality(groups: dict[tuple, list]) -> torch.Tensor:
    """R = mean over matrices of ||A A^T - I||_F and ||B^T B - I||_F (paper eq. 4), from
    ``group_by_shape``: the matrices of one shape stacked."""
    total = 0.0
    for (kind, _), matrices in groups.items():
        total = total + distances_from_orthogonal(kind, torch.stack(matrices)).sum()
    return total / sum(len(group) for group in groups.values())


def vectorise_allocator(model: PeftModel) -> None:
    """The same allocator with its two per-step loops made cheap, on this model's instance.

    PEFT's ``update_ipt`` walks every parameter of the model each step and updates the importance
    averages of each adapter tensor with a handful of small operations; here the same formulas run
    as one batch of ``torch._foreach`` operations over all adapter tensors, with the same roundings
    (the results are equal to the bit, tests/test_adalora.py). In the final phase PEFT re-zeroes the
    pruned triplets after every step by building each mask afresh from the rank pattern's lists; the
    masks are built once per pattern here.
    """
    allocator = model.base_model.rankallocator
    name = allocator.adapter_name
    tensors = [(n, p) for n, p in model.base_model.model.named_parameters() if "lora_" in n and name in n]
    names, params = [n for n, _ in tensors], [p for _, p in tensors]
    singular_values = [(n, p) for n, p in tensors if f"lora_E.{name}" in n]
    masks: dict = {}  # id of the rank pattern -> (pattern, the masks of what it prunes)

    def update_ipt(_model) -> None:
        b1, b2 = allocator.beta1, allocator.beta2
        for n, p in zip(names, params):
            if n not in allocator.ipt:
                allocator.ipt[n], allocator.exp_avg_ipt[n], allocator.exp_avg_unc[n] = (
                    torch.zeros_like(p), torch.zeros_like(p), torch.zeros_like(p))
        with torch.no_grad():
            ipt = torch._foreach_mul(params, [p.grad for p in params])
            torch._foreach_abs_(ipt)
            avg = [allocator.exp_avg_ipt[n] for n in names]
            unc = [allocator.exp_avg_unc[n] for n in names]
            avg = torch._foreach_add(torch._foreach_mul(avg, b1), torch._foreach_mul(ipt, 1 - b1))  # sensitivity
            spread = torch._foreach_sub(ipt, avg)
            torch._foreach_abs_(spread)
            unc = torch._foreach_add(torch._foreach_mul(unc, b2), torch._foreach_mul(spread, 1 - b2))  # uncertainty
        for n, i, a, u in zip(names, ipt, avg, unc):
            allocator.ipt[n], allocator.exp_avg_ipt[n], allocator.exp_avg_unc[n] = i, a, u

    def mask_using_rank_pattern(_model, rank_pattern: dict) -> None:
        if id(rank_pattern) not in masks or masks[id(rank_pattern)][0] is not rank_pattern:
            truncated = name not in next(iter(rank_pattern))  # keys saved without the adapter name
            masks.clear()
            masks[id(rank_pattern)] = (rank_pattern, [
                ~torch.tensor(rank_pattern[n.replace(f".{name}", "") if truncated else n], dtype=torch.bool,
                              device=p.device).unsqueeze(-1) for n, p in singular_values])
        with torch.no_grad():
            for (_, p), pruned in zip(singular_values, masks[id(rank_pattern)][1]):
                p.masked_fill_(pruned, 0.0)

    allocator.update_ipt = update_ipt
    allocator.mask_using_rank_pattern = mask_using_rank_pattern


def vectorise_regulariser(model: PeftModel) -> None:
    """The orthogonal regulariser of PEFT's AdaLoRA forward (``orthogonality``) as a few batched
    products instead of a walk over every parameter of the model with five small operations per
    matrix at every step. The same value and gradient, summed in another order (tests/test_adalora.py).
    """
    adalora = model.base_model
    name = adalora.trainable_adapter_name
    groups = group_by_shape(("A" if "lora_A" in n else "B", p) for n, p in adalora.model.named_parameters()
                            if ("lora_A" in n or "lora_B" in n) and name in n)  # in PEFT's order

    def forward(*args, **kwargs):
        outputs = adalora.model.forward(*args, **kwargs)
        loss = getattr(outputs, "loss", None)
        if isinstance(loss, torch.Tensor) and groups:
            weight = adalora.peft_config[name].orth_reg_weight
            if weight < 0:
                raise ValueError("orth_reg_weight should be greater than or equal to 0. ")
            outputs.loss = loss + weight * orthogonality(groups)
        return outputs

    adalora.forward = forward
