"""build_loader(): samples + transform -> batches {images, labels, index, bad}. Bad images are skipped and
reported (or, with on_bad="fail", found before training starts), never fatal mid-run.

Two paths, one batch format:
- a BatchTransform (training and eval in `train`): images come from the decoded uint8 cache (or are decoded
  and resized on the fly with the cache off) and are cropped and flipped per image into uint8 batches in the
  DataLoader workers; the consuming process jitters and normalises each batch (FinishingLoader), or, when
  the loader is built with uint8_batches=True, hands the uint8 batch over for the consumer to finish on its
  device with `loader.device_finish` (a GPU; lifelong replay joins stored images first). With
  workers, the uint8 pixels travel through a ring of shared-memory batch slots made once per loader (see
  data/ring.py): only labels and indices are pickled, and no page is mapped or zeroed per batch; under
  progressive resizing each batch carries its epoch's size (data/sampler.py) and a slot made for the final
  size holds the smaller crops in its first bytes;
- a PIL transform (evaluate/predict style): decode + transform per image.
Labels are class indices, or multi-hot float rows (N, C) for multi-label samples (Samples.label_sets).
Any torch Sampler (e.g. DistributedSampler, or a resumable one) can be passed as LoaderOptions.sampler.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    default_collate,
)

from ..errors import UserError
from ..utils.hardware import usable_cores
from ..utils.multilabel import multi_hot
from .augment import BatchMix
from .cache import open_or_build
from .decode import DecodeError, decode_image
from .geometry import StoreGeometry, decode_resized
from .ring import SlotBatchSampler, copy_out, room_in_shared_memory, slot_pixels
from .scan import find_bad_files  # decodes every image once, on all cores
from .sources import Samples
from .transforms import BatchTransform

ON_BAD = ("skip", "fail")
PREFETCH_FACTOR = 2  # batches in flight per DataLoader worker (torch's default)


class ImageDataset(Dataset):
    """Decode + PIL transform one sample; a bad image yields {"bad": (path, reason)}."""

    def __init__(self, samples: Samples, transform: Callable) -> None:
        self.samples = samples
        self.transform = transform
        self.bad_files: dict[str, str] = {}  # known before the first batch (filled by a pre-scan)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        try:
            image = decode_image(self.samples.paths[i])
        except DecodeError as e:
            return {"bad": (e.path, e.reason)}
        seed = getattr(i, "seed", None)  # data/sampler.py's SeededIndex: augmentation independent of worker
        try:
            if seed is None:
                return self.transform(image), sample_targets(self.samples, [i])[0], int(i)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.transform(image), sample_targets(self.samples, [i])[0], int(i)
        except MemoryError:  # named and skipped like a bad file, rather than a traceback from a worker
            return {"bad": (self.samples.paths[i], "not enough memory to preprocess this image")}


def sample_targets(samples: Samples, indices: list[int]) -> torch.Tensor:
    """A batch's labels: class indices (N,), or for multi-label samples multi-hot float rows (N, C)."""
    if samples.label_sets is None:
        return torch.tensor([samples.labels[i] for i in indices])
    return multi_hot([samples.label_sets[i] for i in indices], len(samples.classes))


class _OnTheFly:
    """The cache's interface without a cache: decode + stored resize on every access (data.cache=false)."""

    def __init__(self, paths: list[str], geometry: StoreGeometry) -> None:
        self.paths, self.geometry = paths, geometry

    def load(self, i: int):
        return decode_resized(self.paths[i], self.geometry)


class StoredImageDataset(Dataset):
    """Samples through the decoded store (or on-the-fly decoding) and a BatchTransform's uint8 crops.

    __getitems__ lets the DataLoader fetch a whole batch in one call (any sampler still picks the indices);
    it needs automatic batching (batch_size set), which build_loader always uses. Given a `ring` (slots x
    batch x S x S x 3 uint8 in shared memory) and SlottedBatch indices, the crops go to the batch's slot
    and the batch carries the slot number instead of the pixels.
    """

    def __init__(self, samples: Samples, transform: BatchTransform, store) -> None:
        self.samples, self.transform, self.store = samples, transform, store
        self.bad_files: dict[str, str] = dict(getattr(store, "bad_files", {}))
        self.ring: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitems__(self, indices: list[int]) -> dict:
        """A whole batch: uint8 crops of the good images, plus (path, reason) for each bad one."""
        images, good, bad = [], [], []
        for i in indices:
            try:
                images.append(self.store.load(i))
                good.append(i)
            except DecodeError as e:
                bad.append((e.path, e.reason))
        if not good:
            return {"images": None, "labels": None, "index": None, "bad": bad}
        slot = getattr(indices, "slot", None) if self.ring is not None else None
        size = getattr(indices, "size", None) or self.transform.size  # progressive resizing's epoch size
        seed = getattr(indices[0], "seed", None)  # data/sampler.py: augmentation seeded by place in the epoch
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            seeds = [i.seed for i in good] if seed is not None else None
            device_crops = self.transform.device_crops  # augment_on=device: canvases + the draws to crop them
            pixels = size if device_crops is None else device_crops.canvas
            into = None if slot is None else slot_pixels(self.ring, slot, len(images), pixels)
            crops = self.transform.crops(images, into, seeds, size)
            draws = None if device_crops is None else device_crops.draw(len(good), seeds)
        batch = {
            "images": crops,
            "labels": sample_targets(self.samples, good),
            "index": torch.tensor([int(i) for i in good]),
            "bad": bad,
            "seed": seed,
        }
        if draws is not None:
            batch["device_crops"] = (draws, size)
        if slot is not None:  # FinishingLoader reads the pixels from the ring
            batch["images"], batch["slot"], batch["size"] = None, slot, pixels
        return batch

    def __getitem__(self, i: int):
        return self.__getitems__([i])


class SkipBadCollate:
    """Batches the good samples; bad ones go to `bad`. A batch already assembled by __getitems__ (the uint8
    path) passes through unchanged."""

    def __call__(self, batch):
        if isinstance(batch, dict):
            return batch
        good = [b for b in batch if not isinstance(b, dict)]
        bad = [b["bad"] for b in batch if isinstance(b, dict)]
        images, labels, index = default_collate(good) if good else (None, None, None)
        return {"images": images, "labels": labels, "index": index, "bad": bad}


class FinishingLoader(DataLoader):
    """A DataLoader whose uint8 batches are finished (colour jitter, float conversion, normalisation) in the
    process that consumes them: workers then ship 1-byte pixels instead of 4-byte floats, which measured
    about 1.35x more images/s on the 2-core AVX2 AMD EPYC (bench/data_throughput.py's setting).

    The contract is fixed when the loader is built: with uint8_batches=False it yields normalised float
    batches (finish applied here); with uint8_batches=True it yields uint8 batches and `device_finish` is the
    normalisation the consumer runs itself (on its device, after joining any images of its own). Both are
    read-only, so no caller can change what a loader hands over after the fact.

    With a ring (shared uint8 batch slots, see SlotBatchSampler) the pixels of a batch are read from its
    slot; handed over as uint8 they are copied out of it, so a batch may be kept after the next one arrives.

    batch_mix (read-only, or None): Mixup/CutMix (data/augment.py's BatchMix), which the training loop
    applies to each finished batch with the batch's "seed", turning its labels into soft targets."""

    def __init__(
        self,
        *args,
        finish: Callable | None = None,
        uint8_batches: bool = False,
        mix: BatchMix | None = None,
        pin: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._finish, self._uint8 = finish, uint8_batches and finish is not None
        self._mix = mix if mix is not None and mix.active else None
        self._pin = pin

    @property
    def batch_mix(self) -> BatchMix | None:
        """Mixup/CutMix for the consumer to apply after finishing a batch, or None."""
        return self._mix

    @property
    def uint8_batches(self) -> bool:
        """True: batches are uint8 and the consumer applies device_finish."""
        return self._uint8

    @property
    def device_finish(self) -> Callable | None:
        """The normalisation the consumer must apply (uint8_batches), else None (batches come finished)."""
        return self._finish if self._uint8 else None

    def __iter__(self):
        finish_here = None if self._uint8 else self._finish
        for batch in super().__iter__():
            slot, size = batch.pop("slot", None), batch.pop("size", None)
            if slot is not None:
                pixels = slot_pixels(self.dataset.ring, slot, len(batch["labels"]), size).permute(0, 3, 1, 2)
                batch["images"] = pixels if finish_here is not None else copy_out(pixels, self._pin)
            elif self._pin and batch["images"] is not None and finish_here is None:
                batch["images"] = batch["images"].pin_memory()
            crops = batch.pop("device_crops", None)
            if crops is not None:  # augment_on=device: the consumer crops on its device, then normalises
                batch["finish"] = DeviceFinish(self.dataset.transform, *crops)
                if finish_here is not None:
                    batch["images"] = batch.pop("finish")(batch["images"])
            elif finish_here is not None and batch["images"] is not None:
                batch["images"] = finish_here(batch["images"])
            yield batch


class DeviceFinish:
    """One batch's finish under data.augment_on=device: its crops, flips and policy (drawn by the worker,
    data/augment.py's DeviceCrops) applied to the uint8 canvases on their device, then the transform's finish.
    A batch carries it as batch["finish"]; engine/loop.py uses it in place of the loader's device_finish."""

    def __init__(self, transform: BatchTransform, draws: dict, size: int) -> None:
        self.transform, self.draws, self.size = transform, draws, size

    def crops(self, canvases: torch.Tensor) -> torch.Tensor:
        """The uint8 (N, 3, size, size) crops, on the canvases' device."""
        return self.transform.device_crops.apply(canvases, self.draws, self.size)

    def __call__(self, canvases: torch.Tensor) -> torch.Tensor:
        return self.transform.finish(self.crops(canvases))


def default_workers() -> int:
    """One DataLoader worker per core, at most 4 (a 2-core laptop gets 2)."""
    return min(4, usable_cores())


def _check_policy(on_bad: str) -> None:
    if on_bad not in ON_BAD:
        raise UserError(f"data.on_bad={on_bad!r}: expected skip or fail")


def build_dataset(
    samples: Samples,
    transform,
    cache_dir: str | os.PathLike | None = None,
    on_bad: str = "skip",
    cache_max_gb: float = 0.0,
    cache_format: str = "auto",
) -> Dataset:
    """The dataset behind build_loader; with a cache_dir the first call decodes every image once (all cores).

    With on_bad="fail" every image is decoded before this returns, so `dataset.bad_files` is complete.
    """
    _check_policy(on_bad)
    if not isinstance(transform, BatchTransform):
        dataset = ImageDataset(samples, transform)
        if on_bad == "fail":
            dataset.bad_files = find_bad_files(samples.paths)
        return dataset
    if cache_dir is not None:
        store = open_or_build(
            samples.paths, transform.geometry, cache_dir, max_gb=cache_max_gb, cache_format=cache_format
        )
    else:
        store = _OnTheFly(samples.paths, transform.geometry)
    dataset = StoredImageDataset(samples, transform, store)
    if on_bad == "fail" and cache_dir is None:
        dataset.bad_files = find_bad_files(samples.paths)
    return dataset


@dataclass(frozen=True)
class LoaderOptions:
    """What build_loader does beyond its samples, transform, batch size, order and cache folder.

    sampler: any torch Sampler over range(len(samples)); when given, `shuffle` and `seed` are its business.
    drop_last: drop an epoch's last, incomplete batch.
    on_bad: skip (bad images are counted and reported) or fail (every image is decoded first, see
    build_dataset).
    start_method: how workers start: auto (fork on Linux, else the platform's default, spawn), fork or spawn.
    cache_max_gb: the decoded cache's size limit (least-recently-used stores are pruned beyond it; 0 = none).
    cache_format: auto, decoded or compressed (data/cache.py's open_or_build); a compressed store's images
    are decoded in the workers.
    uint8_batches: with a BatchTransform, hand over uint8 batches for the consumer to finish with
    `loader.device_finish` (see FinishingLoader); otherwise batches come normalised.
    mix: Mixup/CutMix for the training loop to apply (the loader's batch_mix).
    pin_memory: hand uint8 batches over in pinned memory (for non_blocking copies to a CUDA device; ignored
    when CUDA is unavailable)."""

    sampler: Sampler | None = None
    drop_last: bool = False
    on_bad: str = "skip"
    start_method: str = "auto"
    cache_max_gb: float = 0.0
    cache_format: str = "auto"
    uint8_batches: bool = False
    mix: BatchMix | None = None
    pin_memory: bool = False


def build_loader(
    samples: Samples,
    transform,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = -1,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    options: LoaderOptions = LoaderOptions(),  # noqa: B008 (frozen: one shared default is safe)
) -> DataLoader:
    """A DataLoader whose batches are dicts {images, labels, index, bad}.

    transform: a BatchTransform (uint8 pipeline, cached when cache_dir is given) or a PIL transform. A
    transform with device_crops (data.augment_on=device) ships canvases and each batch carries its own finish
    (batch["finish"], see DeviceFinish). options: see LoaderOptions.
    """
    dataset = build_dataset(
        samples, transform, cache_dir, options.on_bad, options.cache_max_gb, options.cache_format
    )
    workers = default_workers() if num_workers < 0 else num_workers
    generator = torch.Generator().manual_seed(seed)
    sampler = options.sampler
    if sampler is None:
        sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    finish = transform.finish if isinstance(transform, BatchTransform) else None
    slots = attach_ring(dataset, transform, batch_size, workers) if finish is not None else 1
    start_method = options.start_method
    if start_method == "auto":
        start_method = "fork" if sys.platform == "linux" else None
    return FinishingLoader(
        dataset,
        batch_sampler=SlotBatchSampler(sampler, batch_size, options.drop_last, slots),
        num_workers=workers,
        collate_fn=SkipBadCollate(),
        generator=generator,
        persistent_workers=workers > 0,
        finish=finish,
        uint8_batches=options.uint8_batches,
        mix=options.mix,
        pin=options.pin_memory and options.uint8_batches and torch.cuda.is_available(),
        prefetch_factor=PREFETCH_FACTOR if workers > 0 else None,
        worker_init_fn=ignore_sigint if workers > 0 else None,
        multiprocessing_context=start_method if workers > 0 else None,
    )


def attach_ring(dataset, transform: BatchTransform, batch_size: int, workers: int) -> int:
    """The number of batch slots: with workers and room in shared memory, a ring of them (see
    SlotBatchSampler) is given to the dataset, made before the workers start (they inherit it with fork, or
    receive it with spawn); else 1 (each batch travels in its own shared segment)."""
    side = transform.size if transform.device_crops is None else transform.device_crops.canvas
    ring_shape = (PREFETCH_FACTOR * workers + 1, batch_size, side, side, 3)
    if workers == 0 or not room_in_shared_memory(math.prod(ring_shape)):
        return 1
    dataset.ring = torch.empty(ring_shape, dtype=torch.uint8).share_memory_()
    return ring_shape[0]


def ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers ignore Ctrl-C: the terminal sends SIGINT to the whole process group, and a worker
    that died of it (spawn starts them with Python's default handler) would take the loader down before the
    training process could save its checkpoint. The training process stops them when it is done."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def known_bad_files(on_bad: str, *loaders: DataLoader) -> dict[str, str]:
    """Bad files found while preparing the loaders; with on_bad="fail" any of them stops the run here,
    before training starts, with one error naming every bad file and its reason."""
    _check_policy(on_bad)
    bad: dict[str, str] = {}
    for loader in loaders:
        bad.update(getattr(loader.dataset, "bad_files", {}))
    if on_bad == "fail" and bad:
        listing = "; ".join(f"{path}: {reason}" for path, reason in bad.items())
        raise UserError(
            f"{len(bad)} bad image{'s' if len(bad) != 1 else ''} (data.on_bad=fail; use "
            f"--set data.on_bad=skip to train without them): {listing}"
        )
    return bad
