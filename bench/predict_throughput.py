"""How close `resnetcls predict` on a folder of small image files comes to the model's own throughput.

Baseline (measured in this process): the model alone on already-preprocessed batches. Compared:
Predictor.predict on the files (decode on threads one batch ahead, batched model calls), and the same one
image at a time. Prints median images/s over repeats and the ratio to the baseline.

    python bench/predict_throughput.py --quick     # ~1 minute: 200 images, 3 repeats
    python bench/predict_throughput.py             # 1,000 images, 5 repeats
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnetcls.data.decode import decode_image
from resnetcls.data.transforms import make_preprocess
from resnetcls.inference.predictor import Predictor
from resnetcls.models import create_model
from resnetcls.records.envinfo import machine_line
from resnetcls.records.modelfile import save_model_dir


def write_images(root: Path, count: int, size: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size + i % 7, 3), dtype=np.uint8)
        path = root / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def median_rate(fn, images: int, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    count = args.images or (200 if args.quick else 1000)
    repeats = 3 if args.quick else 5
    single = min(count, 100)  # one-at-a-time is slow; measure it on a prefix
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = write_images(root, count, size=48)
        arch = {"stem": "imagenet", "width": 32}
        torch.manual_seed(0)
        model_dir = save_model_dir(
            root / "model",
            create_model("resnet18", 10, **arch),
            "resnet18",
            arch,
            [f"c{i}" for i in range(10)],
            make_preprocess(args.image_size),
        )
        predictor = Predictor(model_dir)
        tensors = torch.stack([predictor.transform(decode_image(p)) for p in paths])
        batches = tensors.split(args.batch_size)
        predictor.predict(paths[: args.batch_size], batch_size=args.batch_size)  # warm-up

        def model_only():
            for batch in batches:
                predictor.probabilities(batch)

        rows = [
            ("model only, preprocessed batches (baseline)", median_rate(model_only, count, repeats)),
            (
                f"predict files, batch {args.batch_size}",
                median_rate(lambda: predictor.predict(paths, batch_size=args.batch_size), count, repeats),
            ),
            (
                f"predict files, batch {args.batch_size}, flip TTA",
                median_rate(
                    lambda: predictor.predict(paths, batch_size=args.batch_size, tta=True), count, repeats
                ),
            ),
            (
                "predict files one at a time (batch 1)",
                median_rate(lambda: predictor.predict(paths[:single], batch_size=1), single, repeats),
            ),
        ]
    base = rows[0][1]
    print(f"machine: {machine_line()}")
    print(
        f"resnet18 width 32 at {args.image_size}px, {count} JPEGs of 48px, "
        f"{torch.get_num_threads()} threads, "
        f"median of {repeats}"
    )
    print(f"{'method':<48} {'images/s':>10} {'vs baseline':>12}")
    for name, rate in rows:
        print(f"{name:<48} {rate:>10.0f} {rate / base:>11.2f}x")


if __name__ == "__main__":
    main()
