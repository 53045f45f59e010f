"""ResumableSampler: the training order as a pure function of (seed, epoch), so a run can stop at any batch
and continue from exactly the next sample.

PyTorch's RandomSampler draws its permutation from a generator whose state moves on every epoch and cannot
be wound to "batch 37 of epoch 4"; resuming with it silently repeats or skips data. Here the epoch's order
is recomputed from the seed and the epoch number, and `position` samples are skipped. Each index also
carries a per-sample seed so that augmentation does not depend on which worker, or which process after a
resume, decodes the sample (see ImageDataset).

Progressive resizing (data.progressive) is a function of the epoch too: progressive_size() gives the epoch's
training size, set_epoch() takes it with the epoch, and every batch the loader cuts from this sampler's
indices carries it to the worker that crops it (data/loader.py), so no message beyond the indices is needed
and a resumed run crops exactly the sizes the uninterrupted one did.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler

from ..errors import UserError
from ..utils.limits import MIN_IMAGE_SIZE

MODES = ("shuffle", "balanced", "sequential")
SIZE_STEP = 16  # progressive sizes are multiples of this (FFCV uses 32; 16 keeps small test sizes apart)


def full_size_epochs(epochs: int) -> int:
    """How many of the last epochs progressive resizing runs at the final size: a quarter, at least one."""
    return max(1, math.ceil(epochs / 4))


def progressive_size(epoch: int, epochs: int, image_size: int, progressive: float) -> int:
    """The training image size of `epoch` (1-based) out of `epochs` under data.progressive.

    progressive = 0 (off): image_size throughout. Otherwise epoch 1 trains at progressive x image_size and the
    size grows linearly up to image_size at epoch epochs - full_size_epochs(epochs) + 1, about 75% of the way
    (FFCV's end_ramp); the remaining quarter (at least one epoch) runs at image_size, so BatchNorm's running
    statistics settle at the size the model is evaluated and shipped at. Sizes are rounded down to a multiple
    of SIZE_STEP, as FFCV does, and kept within [limits.MIN_IMAGE_SIZE, image_size]. E.g. image_size 128,
    progressive 0.5, 16 epochs: 64, 64, 64, 80, 80, 80, 96, 96, 96, 112, 112, 112, then 128 for epochs 13-16.
    """
    full_from = epochs - full_size_epochs(epochs) + 1
    if progressive <= 0 or epoch >= full_from:
        return image_size
    start = progressive * image_size
    raw = start + (image_size - start) * (max(epoch, 1) - 1) / (full_from - 1)
    return min(image_size, max(MIN_IMAGE_SIZE, SIZE_STEP * math.floor(raw / SIZE_STEP)))


def progressive_sizes(epochs: int, image_size: int, progressive: float) -> list[int]:
    """progressive_size() of epochs 1..epochs, in order."""
    return [progressive_size(e, epochs, image_size, progressive) for e in range(1, epochs + 1)]


class SeededIndex(int):
    """A dataset index that also carries the seed for this sample's random augmentation."""

    seed: int

    def __new__(cls, index: int, seed: int) -> SeededIndex:
        obj = super().__new__(cls, index)
        obj.seed = seed
        return obj

    def __getnewargs__(self) -> tuple[int, int]:  # travels to DataLoader worker processes by pickle
        return int(self), self.seed


class ResumableSampler(Sampler):
    """Indices for one epoch: a seeded permutation (shuffle), a class-balanced draw with replacement
    (balanced), or 0..n-1 (sequential); rank/world_size take every world_size-th index for DDP."""

    def __init__(
        self, labels: list[int], mode: str = "shuffle", seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if mode not in MODES:
            raise UserError(f"data.sampler={mode!r}: expected shuffle or balanced")
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.mode, self.seed, self.rank, self.world_size = mode, seed, rank, world_size
        self.epoch, self.position = 0, 0
        self.image_size: int | None = None  # the epoch's training size; None: the transform's own

    def set_epoch(self, epoch: int, position: int = 0, image_size: int | None = None) -> None:
        """Choose the epoch's order, how many of this rank's samples were already consumed and the size the
        epoch's images are cropped to (progressive_size(); None: the transform's data.image_size)."""
        self.epoch, self.position, self.image_size = epoch, position, image_size

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
        return order[: n - n % self.world_size][self.rank :: self.world_size]

    def __len__(self) -> int:
        return max(0, len(self.labels) // self.world_size - self.position)

    def __iter__(self):
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        order = self.epoch_indices()
        for k in range(self.position, len(order)):
            # The seed depends on the sample's place in the epoch, never on the worker or the resume point.
            yield SeededIndex(int(order[k]), (base + k * self.world_size + self.rank) % (2**63))
