"""The shared-memory batch ring of data/loader.py: with DataLoader workers, the uint8 pixels of a batch are
written into one of a few shared slots made once per loader, so only labels and indices are pickled and no
page is mapped or zeroed per batch. SlotBatchSampler says which slot each batch goes to; slot_pixels is where
in a slot writer and reader find it; copy_out takes a batch out of its slot for the consumer to keep."""

from __future__ import annotations

import os
import sys

import torch
from torch.utils.data import BatchSampler


class SlottedBatch(list):
    """A batch's dataset indices plus the ring slot its pixels are written to and the size to crop them to
    (the sampler's image_size for the epoch; None: the transform's own)."""

    slot: int
    size: int | None


def slot_pixels(ring: torch.Tensor, slot: int, count: int, size: int) -> torch.Tensor:
    """The (count, size, size, 3) uint8 batch in ring slot `slot`: its first bytes, so a slot allocated for
    the final size also holds the smaller crops of progressive resizing. Writer and reader both use this."""
    return ring[slot].view(-1)[: count * size * size * 3].view(count, size, size, 3)


class SlotBatchSampler(BatchSampler):
    """Batches of `sampler`'s indices, each tagged with slot k mod `slots` for the k-th batch of an epoch.

    torch's DataLoader keeps at most prefetch_factor x num_workers batches dispatched but not yet returned,
    and dispatches the next one only when it returns a batch; FinishingLoader copies each batch out of its
    slot before asking for the next. So with slots = prefetch_factor x num_workers + 1 a worker never writes
    into a slot whose pixels are still to be read. (Persistent workers finish and drop a stopped epoch's
    batches before the next epoch dispatches anything.)

    Each batch also carries the sampler's `image_size` for the epoch (data/sampler.py's set_epoch), read when
    the epoch's iteration starts, so workers learn the progressive size with the indices they receive."""

    def __init__(self, sampler, batch_size: int, drop_last: bool, slots: int) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.slots = slots

    def __iter__(self):
        size = getattr(self.sampler, "image_size", None)
        for k, indices in enumerate(super().__iter__()):
            batch = SlottedBatch(indices)
            batch.slot, batch.size = k % self.slots, size
            yield batch


def room_in_shared_memory(nbytes: int) -> bool:
    """Whether a ring of nbytes fits comfortably (half the free space) in /dev/shm, where PyTorch's shared
    tensors live on Linux. Containers often get only 64 MB there (Docker's default); without the room the
    loader says so once and passes each batch through its own shared segment, as torch does (slower)."""
    try:
        st = os.statvfs("/dev/shm")
    except (OSError, AttributeError):  # no /dev/shm (macOS, Windows): torch shares memory another way
        return True
    free = st.f_bavail * st.f_frsize
    if nbytes <= free // 2:
        return True
    print(
        f"note: /dev/shm has {free / 1e6:.0f} MB free, too little for the {nbytes / 1e6:.0f} MB batch ring; "
        f"loading data the slower way (give the container more shared memory, e.g. docker --shm-size=1g)",
        file=sys.stderr,
        flush=True,
    )
    return False


def copy_out(pixels: torch.Tensor, pin: bool) -> torch.Tensor:
    """A channels-last copy of a batch's ring pixels, in pinned (page-locked) memory when `pin`: a
    non_blocking copy to the GPU from there overlaps with compute instead of staging through pageable
    memory."""
    if not pin:
        return pixels.clone(memory_format=torch.channels_last)
    out = torch.empty(pixels.shape[0], *pixels.shape[2:], pixels.shape[1], dtype=torch.uint8, pin_memory=True)
    out.copy_(pixels.permute(0, 2, 3, 1))
    return out.permute(0, 3, 1, 2)
