"""build_loader(): samples + transform -> batches. Bad images are skipped and reported, never fatal."""
from __future__ import annotations

import os
import sys
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from .decode import DecodeError, decode_image
from .sources import Samples


class ImageDataset(Dataset):
    """Decode + transform one sample; a bad image yields None (filtered out by the collate)."""

    def __init__(self, samples: Samples, transform: Callable) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        try:
            image = decode_image(self.samples.paths[i])
        except DecodeError as e:
            return {"bad": (e.path, e.reason)}
        seed = getattr(i, "seed", None)  # data/sampler.py's SeededIndex: augmentation independent of worker
        if seed is None:
            return self.transform(image), self.samples.labels[i], int(i)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), self.samples.labels[i], int(i)


class SkipBadCollate:
    """Batches the good samples; bad ones are warned about once each and counted in `bad`."""

    def __call__(self, batch):
        good = [b for b in batch if not isinstance(b, dict)]
        bad = [b["bad"] for b in batch if isinstance(b, dict)]
        images, labels, index = default_collate(good) if good else (None, None, None)
        return {"images": images, "labels": labels, "index": index, "bad": bad}


def default_workers() -> int:
    """One DataLoader worker per core, at most 4 (a 2-core laptop gets 2)."""
    return min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def build_loader(samples: Samples, transform: Callable, batch_size: int, shuffle: bool,
                 num_workers: int = -1, seed: int = 0, drop_last: bool = False,
                 sampler: Sampler | None = None) -> DataLoader:
    """A DataLoader whose batches are dicts {images, labels, index, bad}; `sampler` replaces shuffle."""
    workers = default_workers() if num_workers < 0 else num_workers
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(ImageDataset(samples, transform), batch_size=batch_size,
                      shuffle=shuffle if sampler is None else None, sampler=sampler,
                      num_workers=workers, collate_fn=SkipBadCollate(), drop_last=drop_last,
                      generator=generator, persistent_workers=workers > 0,
                      multiprocessing_context="fork" if workers > 0 and sys.platform == "linux" else None)
