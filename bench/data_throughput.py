"""Images per second delivered to the model: torchvision ImageFolder + PIL transforms + DataLoader(2 workers)
against resnetcls's pipeline cold (first pass: decode into the cache, then an epoch) and warm (cached),
side by side in one process, on ../shared/data/coil100-a at 128 px and ../shared/data/hymenoptera at 224 px.

    python bench/data_throughput.py           # full: every image, 3 timed epochs per method (median)
    python bench/data_throughput.py --quick   # about a minute: a fifth of the images, 1 epoch
"""
from __future__ import annotations

import argparse
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

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WORKERS, BATCH = 2, 64


def _drain(loader) -> int:
    images = 0
    for batch in loader:
        x = batch["images"] if isinstance(batch, dict) else batch[0]
        images += 0 if x is None else x.shape[0]
    return images


def _rate(make_loader, epochs: int) -> float:
    """Median images/s over `epochs` passes (the loader is built inside each timing)."""
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        images = _drain(make_loader())
        rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates)


def bench(root: Path, size: int, fraction: float, epochs: int) -> list[tuple[str, float]]:
    tv_transform = T.Compose([T.RandomResizedCrop(size, scale=(0.25, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(),
                              T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    folder = datasets.ImageFolder(str(root), transform=tv_transform)
    keep = list(range(0, len(folder), round(1 / fraction)))
    baseline = Subset(folder, keep)
    samples = read_data(str(root)).splits["all"].subset(keep)
    transform = build_train_transform(make_preprocess(size))

    def torchvision_loader():
        return DataLoader(baseline, batch_size=BATCH, shuffle=True, num_workers=WORKERS)

    with tempfile.TemporaryDirectory() as cache_dir:
        def ours():
            return build_loader(samples, transform, BATCH, shuffle=True, num_workers=WORKERS, cache_dir=cache_dir)
        base = _rate(torchvision_loader, epochs)
        cold = _rate(ours, 1)  # the first pass includes decoding every image into the cache
        warm = _rate(ours, epochs)
    return [("torchvision ImageFolder + PIL, 2 workers", base), ("resnetcls cold (first pass)", cold),
            ("resnetcls warm (cached)", warm)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the images, 1 epoch (about a minute)")
    args = parser.parse_args()
    fraction, epochs = (0.2, 1) if args.quick else (1.0, 3)
    torch.set_num_threads(1)  # the main process only drains batches; the workers do the work
    print(f"{'data set':<22} {'pipeline':<42} {'images/s':>10} {'ratio':>7}")
    for name, size in (("coil100-a", 128), ("hymenoptera/train", 224)):
        root = DATA / name
        if not root.exists():
            print(f"{name:<22} skipped: {root} is missing")
            continue
        rows = bench(root, size, fraction, epochs)
        for label, rate in rows:
            print(f"{name + f' @{size}px':<22} {label:<42} {rate:>10.0f} {rate / rows[0][1]:>6.2f}x", flush=True)


if __name__ == "__main__":
    main()
