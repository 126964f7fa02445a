"""The few collective steps a multi-process run (torchrun, or srun tasks) needs; each is a no-op in a
single process."""

from __future__ import annotations

import torch


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def from_rank_zero(value):
    """``value`` as process 0 has it, on every process (unchanged in a single process)."""
    if not is_distributed():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1
