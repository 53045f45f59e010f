"""ResumableSampler: the training order as a pure function of (seed, epoch), so a run can stop at any batch
and continue from exactly the next sample.

PyTorch's RandomSampler draws its permutation from a generator whose state moves on every epoch and cannot
be wound to "batch 37 of epoch 4"; resuming with it silently repeats or skips data. Here the epoch's order
is recomputed from the seed and the epoch number, and `position` samples are skipped. Each index also
carries a per-sample seed so that augmentation does not depend on which worker, or which process after a
resume, decodes the sample (see ImageDataset).
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler

from ..errors import UserError

MODES = ("shuffle", "balanced", "sequential")


class SeededIndex(int):
    """A dataset index that also carries the seed for this sample's random augmentation."""

    seed: int

    def __new__(cls, index: int, seed: int) -> "SeededIndex":
        obj = super().__new__(cls, index)
        obj.seed = seed
        return obj

    def __getnewargs__(self) -> tuple[int, int]:  # travels to DataLoader worker processes by pickle
        return int(self), self.seed


class ResumableSampler(Sampler):
    """Indices for one epoch: a seeded permutation (shuffle), a class-balanced draw with replacement
    (balanced), or 0..n-1 (sequential); rank/world_size take every world_size-th index for DDP."""

    def __init__(self, labels: list[int], mode: str = "shuffle", seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if mode not in MODES:
            raise UserError(f"data.sampler={mode!r}: expected shuffle or balanced")
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.mode, self.seed, self.rank, self.world_size = mode, seed, rank, world_size
        self.epoch, self.position = 0, 0

    def set_epoch(self, epoch: int, position: int = 0) -> None:
        """Choose the epoch's order and how many of this rank's samples were already consumed."""
        self.epoch, self.position = epoch, position

    def epoch_indices(self) -> torch.Tensor:
        """All of this rank's indices for the current epoch, from the start."""
        n = len(self.labels)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.mode == "shuffle":
            order = torch.randperm(n, generator=g)
        elif self.mode == "balanced":
            counts = torch.bincount(self.labels).double()
            weights = 1.0 / counts[self.labels]  # every class gets the same total weight
            order = torch.multinomial(weights, n, replacement=True, generator=g)
        else:
            order = torch.arange(n)
        # Every rank gets the same number of samples (the last n % world_size of the epoch's order are left
        # out, different ones each shuffled epoch): with unequal shards one rank would wait for a batch that
        # never comes.
        return order[: n - n % self.world_size][self.rank::self.world_size]

    def __len__(self) -> int:
        return max(0, len(self.labels) // self.world_size - self.position)

    def __iter__(self):
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        order = self.epoch_indices()
        for k in range(self.position, len(order)):
            # The seed depends on the sample's place in the epoch, never on the worker or the resume point.
            yield SeededIndex(int(order[k]), (base + k * self.world_size + self.rank) % (2**63))
