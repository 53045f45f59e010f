"""ResNet-50 training images/s on one CUDA GPU: bf16 + channels_last (+ torch.compile), fed by synthetic
tensors vs real JPEGs through resnetcls's decoded uint8 cache, so a data bottleneck shows as a gap.

    python bench/gpu_train_throughput.py            # full: 224 px, batch 128, 40 timed steps per row
    python bench/gpu_train_throughput.py --quick    # a ~2 minute version
    bash bench/gpu_train_throughput.sh              # the same, with PYTHONPATH set for a plain checkout

Rows (ratios against the first row, measured in the same process):
  fp32 eager, contiguous, synthetic       plain PyTorch baseline
  bf16 eager, channels_last, synthetic
  bf16 compiled, channels_last, synthetic  the model's ceiling
  bf16 compiled, channels_last, cache -> loader (normalised on CPU)
  bf16 compiled, channels_last, cache -> loader (uint8 to GPU, normalised there)
  bf16 compiled, channels_last, cache -> loader (data.augment_on=device: uint8 canvases, pinned, cropped,
                                                 flipped and normalised on the GPU)
The last line gives real-data / synthetic throughput (the target: >= 0.9).
Real images: --data DATA (any resnetcls DATA), else a synthetic JPEG set written with `data synth`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from resnetcls.data.loader import LoaderOptions, build_loader
from resnetcls.data.sources import load_splits
from resnetcls.data.synth import synthesize
from resnetcls.data.transforms import build_train_transform, make_preprocess
from resnetcls.models import create_model
from resnetcls.records.envinfo import machine_line


def synthetic_batches(batch_size: int, size: int, classes: int, device):
    x = torch.randn(batch_size, 3, size, size, device=device)
    y = torch.randint(0, classes, (batch_size,), device=device)
    while True:
        yield x, y


def loader_batches(loader, device, finish_on_gpu: bool, transform):
    """Batches on the GPU; a batch with its own finish (data.augment_on=device: crops on the GPU) uses it."""
    while True:
        for batch in loader:
            images = batch["images"].to(device, non_blocking=True)
            if "finish" in batch:
                images = batch["finish"](images)
            elif finish_on_gpu:
                images = transform.finish(images)
            yield images, batch["labels"].to(device, non_blocking=True)


def measure(model, batches, steps: int, warmup: int, amp: bool, channels_last: bool) -> list[float]:
    """Per-step images/s over `steps` timed steps after `warmup` (compile happens in the warm-up)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    rates = []
    for step in range(warmup + steps):
        x, y = next(batches)
        x = x.contiguous(memory_format=fmt)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        if step >= warmup:
            rates.append(x.shape[0] / (time.perf_counter() - t0))
    return rates


def measure_wall(model, batches, steps, warmup, amp, channels_last, batch_size: int) -> float:
    """images/s over the wall time of `steps` steps, including waiting for data (what the loader rows
    need)."""
    measure(model, batches, 0, warmup, amp, channels_last)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    measure(model, batches, steps, 0, amp, channels_last)
    return steps * batch_size / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="DATA for the real-image rows (default: synthetic JPEGs)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="fewer steps and images")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/gpu_train_throughput.py needs a CUDA GPU; none is available here", file=sys.stderr)
        return 2
    BATCH = args.batch_size  # noqa: N806 (read by the row lambdas below)
    steps, warmup = (15, 5) if args.quick else (args.steps, 10)
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    size, classes = args.image_size, 50
    print(f"machine: {machine_line()}\nResNet-50 {size}px batch {BATCH}", flush=True)

    tmp = tempfile.TemporaryDirectory()
    data = args.data or str(
        synthesize(
            Path(tmp.name) / "synth",
            classes=classes,
            per_class=30 if args.quick else 60,
            image_size=int(size * 1.15),
        )
    )
    splits = load_splits(data, val_fraction=0.1)
    preprocess = make_preprocess(size)
    transform = build_train_transform(preprocess)
    t0 = time.perf_counter()
    loader = build_loader(
        splits.train,
        transform,
        BATCH,
        shuffle=True,
        num_workers=args.workers,
        cache_dir=Path(tmp.name) / "cache",
        options=LoaderOptions(drop_last=True),
    )
    print(f"decoded cache of {len(splits.train)} images built in {time.perf_counter() - t0:.1f}s", flush=True)
    n_classes = len(splits.classes)

    def fresh(compile_: bool, channels_last: bool):
        torch.manual_seed(0)
        m = create_model("resnet50", n_classes).to(device)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        return torch.compile(m) if compile_ else m

    rows = []

    def synth():
        return synthetic_batches(BATCH, size, n_classes, device)

    rows.append(
        (
            "fp32 eager, contiguous, synthetic",
            statistics.median(measure(fresh(False, False), synth(), steps, warmup, False, False)),
        )
    )
    rows.append(
        (
            "bf16 eager, channels_last, synthetic",
            statistics.median(measure(fresh(False, True), synth(), steps, warmup, True, True)),
        )
    )
    compiled = fresh(True, True)
    rows.append(
        (
            "bf16 compiled, channels_last, synthetic",
            statistics.median(measure(compiled, synth(), steps, warmup, True, True)),
        )
    )
    rows.append(
        (
            "bf16 compiled, channels_last, cache -> loader (CPU normalise)",
            measure_wall(
                compiled, loader_batches(loader, device, False, transform), steps, 3, True, True, BATCH
            ),
        )
    )
    # The same cached data, built to ship uint8 batches; they are normalised on the GPU.
    loader = build_loader(
        splits.train,
        transform,
        BATCH,
        shuffle=True,
        num_workers=args.workers,
        cache_dir=Path(tmp.name) / "cache",
        options=LoaderOptions(drop_last=True, uint8_batches=True),
    )
    rows.append(
        (
            "bf16 compiled, channels_last, cache -> loader (GPU normalise)",
            measure_wall(
                compiled, loader_batches(loader, device, True, transform), steps, 3, True, True, BATCH
            ),
        )
    )
    # data.augment_on=device (train's default on CUDA): uint8 canvases in pinned memory, crop/flip on the GPU
    device_tf = build_train_transform(preprocess, on_device=True)
    loader = build_loader(
        splits.train,
        device_tf,
        BATCH,
        shuffle=True,
        num_workers=args.workers,
        cache_dir=Path(tmp.name) / "cache",
        options=LoaderOptions(drop_last=True, uint8_batches=True, pin_memory=True),
    )
    rows.append(
        (
            "bf16 compiled, channels_last, cache -> loader (GPU crop+normalise)",
            measure_wall(
                compiled, loader_batches(loader, device, True, device_tf), steps, 3, True, True, BATCH
            ),
        )
    )
    del loader

    base = rows[0][1]
    print(f"\n{'setting':<62} {'images/s':>10} {'vs fp32':>8}")
    for name, rate in rows:
        print(f"{name:<62} {rate:>10.0f} {rate / base:>7.2f}x")
    print("\nsynthetic rows: median of per-step rates; loader rows: wall-clock rate including data waits")
    print(
        f"real data / synthetic (compiled): {rows[-1][1] / rows[2][1]:.2f} (GPU crop), "
        f"{rows[-2][1] / rows[2][1]:.2f} (GPU normalise)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
