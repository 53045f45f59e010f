"""Images per second delivered to the model: torchvision ImageFolder + PIL transforms + DataLoader(2 workers)
against resnetcls's pipeline cold (first pass: decode into the cache, then an epoch) and warm (cached),
side by side in one process, on ../shared/data/coil100-a at 128 px and ../shared/data/hymenoptera at 224 px.

    python bench/data_throughput.py           # full: every image (median images/s over the epochs)
    python bench/data_throughput.py --quick   # about a minute: 20% of coil100-a, 50% of hymenoptera

Baseline and warm: median over the epochs of one loader with persistent workers; at least 3 epochs and at
least 2,000 images (hymenoptera's 244 images make 4 batches an epoch, too few for one epoch to say much).
Cold: a new run's first epoch from an empty cache directory, including decoding every image into the cache
(all cores).
"""
from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision import transforms as T

from resnetcls.data.loader import build_loader
from resnetcls.data.sources import read_data
from resnetcls.data.transforms import build_train_transform, make_preprocess
from resnetcls.envinfo import machine_line

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WORKERS, BATCH = 2, 64


def _drain(loader) -> int:
    images = 0
    for batch in loader:
        x = batch["images"] if isinstance(batch, dict) else batch[0]
        images += 0 if x is None else x.shape[0]
    return images


def _rate(loader, epochs: int) -> float:
    """Median images/s over `epochs` passes of one loader (persistent workers: later passes are steady state)."""
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        images = _drain(loader)
        rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates)


def bench(root: Path, size: int, fraction: float) -> list[tuple[str, float]]:
    tv_transform = T.Compose([T.RandomResizedCrop(size, scale=(0.25, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(),
                              T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    folder = datasets.ImageFolder(str(root), transform=tv_transform)
    keep = list(range(0, len(folder), round(1 / fraction)))
    samples = read_data(str(root)).splits["all"].subset(keep)
    epochs = max(3, math.ceil(2000 / len(keep)))
    transform = build_train_transform(make_preprocess(size))
    baseline = DataLoader(Subset(folder, keep), batch_size=BATCH, shuffle=True, num_workers=WORKERS,
                          persistent_workers=True)
    base = _rate(baseline, epochs)
    del baseline
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()  # cold: a new run's first epoch, decoding every image into the cache
        cold = _drain(build_loader(samples, transform, BATCH, shuffle=True, num_workers=WORKERS,
                                   cache_dir=cache_dir)) / (time.perf_counter() - start)
        warm = _rate(build_loader(samples, transform, BATCH, shuffle=True, num_workers=WORKERS, cache_dir=cache_dir),
                     epochs)
    return [("torchvision ImageFolder + PIL, 2 workers", base), ("resnetcls cold (first pass)", cold),
            ("resnetcls warm (cached)", warm)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images (about a minute)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the main process only drains batches; the workers do the work
    print(f"machine: {machine_line()}", flush=True)
    print(f"{'data set':<22} {'pipeline':<42} {'images/s':>10} {'ratio':>7}")
    for name, size, quick_fraction in (("coil100-a", 128, 0.2), ("hymenoptera/train", 224, 0.5)):
        fraction = quick_fraction if args.quick else 1.0
        root = DATA / name
        if not root.exists():
            print(f"{name:<22} skipped: {root} is missing")
            continue
        rows = bench(root, size, fraction)
        for label, rate in rows:
            print(f"{name + f' @{size}px':<22} {label:<42} {rate:>10.0f} {rate / rows[0][1]:>6.2f}x", flush=True)


if __name__ == "__main__":
    main()
