"""Images per second delivered to the model: torchvision ImageFolder + PIL transforms + DataLoader(2 workers)
against resnetcls's pipeline cold (first pass: decode into the cache, then an epoch) and warm (cached), from
the decoded store and from the compressed one (data.cache_format=compressed: JPEG q90, decoded in the
workers), side by side in one process, on ../shared/data/coil100-a at 128 px and ../shared/data/hymenoptera
at 224 px; the compressed rows also give the store's size against the decoded one's.

    python bench/data_throughput.py           # full: every image (median images/s over the epochs)
    python bench/data_throughput.py --quick   # about a minute: 20% of coil100-a, 50% of hymenoptera
    python bench/data_throughput.py --train 128 [--train 224 ...]   # end to end: the training step fed
                                              # from image files vs from in-memory tensors

--train SIZE: the same training step (ResNet-50, bf16 autocast where the CPU has it, channels_last, AdamW,
batch 32, engine/loop.py's train_one_epoch) fed once by resnetcls's loader over coil100-a's files (warm
decoded cache, random-resized-crop + flip, 2 workers, normalised in the training process) and once by the
same batches held in memory as finished tensors. Epochs alternate between the two feeds and the median
epoch time of each is compared: the ratio (files / tensors, images/s) is what the data path costs.

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

from resnetcls.data.loader import LoaderOptions, build_loader
from resnetcls.data.sources import read_data
from resnetcls.data.transforms import build_train_transform, make_preprocess
from resnetcls.records.envinfo import machine_line

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WORKERS, BATCH = 2, 64
TRAIN_BATCH = 32  # --train rows


def _drain(loader) -> int:
    images = 0
    for batch in loader:
        x = batch["images"] if isinstance(batch, dict) else batch[0]
        images += 0 if x is None else x.shape[0]
    return images


def _rate(loader, epochs: int) -> float:
    """Median images/s over `epochs` passes of one loader (persistent workers: later passes are steady
    state)."""
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        images = _drain(loader)
        rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates)


def bench(root: Path, size: int, fraction: float) -> list[tuple[str, float]]:
    tv_transform = T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.25, 1.0)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    folder = datasets.ImageFolder(str(root), transform=tv_transform)
    keep = list(range(0, len(folder), round(1 / fraction)))
    samples = read_data(str(root)).splits["all"].subset(keep)
    epochs = max(3, math.ceil(2000 / len(keep)))
    transform = build_train_transform(make_preprocess(size))
    baseline = DataLoader(
        Subset(folder, keep), batch_size=BATCH, shuffle=True, num_workers=WORKERS, persistent_workers=True
    )
    base = _rate(baseline, epochs)
    del baseline
    rows = [("torchvision ImageFolder + PIL, 2 workers", base, "")]
    for cache_format in ("decoded", "compressed"):
        with tempfile.TemporaryDirectory() as cache_dir:
            start = time.perf_counter()  # cold: a new run's first epoch, decoding every image into the cache
            cold = _drain(
                build_loader(
                    samples,
                    transform,
                    BATCH,
                    shuffle=True,
                    num_workers=WORKERS,
                    cache_dir=cache_dir,
                    options=LoaderOptions(cache_format=cache_format),
                )
            ) / (time.perf_counter() - start)
            loader = build_loader(
                samples,
                transform,
                BATCH,
                shuffle=True,
                num_workers=WORKERS,
                cache_dir=cache_dir,
                options=LoaderOptions(cache_format=cache_format),
            )
            warm = _rate(loader, epochs)
            size = (loader.dataset.store.directory / "data.u8").stat().st_size
        label = "" if cache_format == "decoded" else " compressed"
        rows += [
            (f"resnetcls{label} cold (first pass)", cold, ""),
            (f"resnetcls{label} warm (cached)", warm, f"store {size / 1e6:.1f} MB"),
        ]
    return rows


def _train_rows(size: int, steps: int, repeats: int, arch: str) -> tuple[float, float]:
    """(images/s fed from files, images/s fed from in-memory tensors), medians of `repeats` epochs each."""
    from resnetcls.engine.loop import EpochStats, Optimization, StepContext, train_one_epoch
    from resnetcls.models import create_model
    from resnetcls.utils.hardware import resolve_amp

    samples = read_data(str(DATA / "coil100-a")).splits["all"]
    samples = samples.subset(
        list(range(0, len(samples), max(1, len(samples) // (steps * TRAIN_BATCH))))[: steps * TRAIN_BATCH]
    )
    with tempfile.TemporaryDirectory() as cache_dir:
        loader = build_loader(
            samples,
            build_train_transform(make_preprocess(size)),
            TRAIN_BATCH,
            shuffle=True,
            num_workers=WORKERS,
            cache_dir=cache_dir,
            options=LoaderOptions(drop_last=True),
        )
        tensors = [dict(b) for b in loader]  # the same (finished) batches, held in memory
        torch.manual_seed(0)
        model = create_model(arch, len(samples.classes)).to(memory_format=torch.channels_last)
        ctx = StepContext(torch.device("cpu"), resolve_amp("auto", torch.device("cpu")), True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        opt = Optimization(
            optimizer,
            torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0),
            torch.amp.GradScaler("cpu", enabled=False),
        )
        loss_fn = torch.nn.CrossEntropyLoss()
        rates: dict[str, list[float]] = {"files": [], "tensors": []}
        for epoch in range(repeats + 1):  # epoch 0 warms both feeds up (allocator, worker start)
            for name, feed in (("files", loader), ("tensors", tensors)):
                stats = EpochStats()
                train_one_epoch(model, feed, opt, loss_fn, ctx, stats, lambda _s: False)
                if epoch:
                    rates[name].append(stats.images_per_s)
        del loader
    return statistics.median(rates["files"]), statistics.median(rates["tensors"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images (about a minute)")
    parser.add_argument(
        "--train",
        type=int,
        action="append",
        metavar="SIZE",
        help="end-to-end rows at SIZE px instead (repeatable): files vs in-memory tensors",
    )
    parser.add_argument("--steps", type=int, default=6, help="training steps per timed epoch (--train)")
    parser.add_argument(
        "--model", default="resnet50", help="architecture of the --train step (default resnet50)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per feed (--train); median")
    args = parser.parse_args()
    if args.train:
        print(f"machine: {machine_line()}", flush=True)
        print(f"{args.model + ' training step':<28} {'files img/s':>12} {'tensors img/s':>14} {'ratio':>7}")
        for size in args.train:
            files, tensors = _train_rows(size, args.steps, args.repeats, args.model)
            print(
                f"{f'coil100-a @{size}px':<28} {files:>12.1f} {tensors:>14.1f} {files / tensors:>6.2f}x",
                flush=True,
            )
        print("(ratio: median images/s over the epochs, files / tensors; the same step, the same batches)")
        return
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
        for label, rate, note in rows:
            print(
                f"{name + f' @{size}px':<22} {label:<42} {rate:>10.0f} {rate / rows[0][1]:>6.2f}x  {note}",
                flush=True,
            )


if __name__ == "__main__":
    main()
