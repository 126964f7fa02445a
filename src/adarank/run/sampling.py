"""The training order of each epoch drawn from (seed, epoch) alone, so a resumed run sees the
batches an uninterrupted run saw.

The Trainer draws an epoch's order (length-grouped, or a plain shuffle) from the process's
random state when the epoch starts. A run resumed mid-epoch restores the random state of its
checkpoint, which is not the state that epoch started from, so it would redraw another order
and skip the wrong batches. Seeding every epoch's draw with seed + epoch makes the order a
function of the epoch: the resumed epoch is the uninterrupted run's, batch for batch.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler
from transformers import Trainer


class EpochSeeded(Sampler):
    """Wraps a sampler that draws from its ``generator`` (RandomSampler, LengthGroupedSampler)."""

    def __init__(self, sampler, seed: int):
        self.sampler = sampler
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls this before every epoch
        self.epoch = int(epoch)

    def __iter__(self):
        self.sampler.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class ResumableTrainer(Trainer):
    """The Trainer with epoch-seeded training order (see above)."""

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        return EpochSeeded(sampler, self.args.data_seed or self.args.seed) if hasattr(sampler, "generator") else sampler
