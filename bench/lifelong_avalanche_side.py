"""The Avalanche half of bench/lifelong_vs_avalanche.py. Runs ONLY in its own venv (avalanche-lib is never a
resnetcls dependency), here path/to/avalanche-venv:

    python3 -m venv path/to/avalanche-venv
    path/to/avalanche-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 avalanche-lib==0.6.0
    PYTHONPATH=src path/to/avalanche-venv/bin/python bench/lifelong_avalanche_side.py \
        --strategy naive --seed 0 --out result.json

The same stream as the lifelong-coil100-classes recipe: COIL-100 pose-split.csv, 5 tasks of 10 objects in
sorted order, images resized to --size (bilinear, ImageNet normalisation, no augmentation: the resnetcls side
runs with data.augment=resize to match), the same network (resnetcls.models.create_model, imported from src/
with torch only), AdamW at a constant rate, plain cross-entropy, the same epochs and batch size. The head
grows per task (Avalanche's IncrementalClassifier), as resnetcls's does. Writes the accuracy matrix R (row i:
after task i, accuracy on every task's test images) and the train seconds per task.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from resnetcls.models import create_model  # noqa: E402  (after the path: this venv has no resnetcls install)

MEAN, STD = (
    torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1),
    torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1),
)


def load(manifest: Path, size: int):
    """(train images, train labels, test images, test labels, class names) with labels in sorted class
    order."""
    rows = list(csv.DictReader(open(manifest)))
    classes = sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    out = {"train": ([], []), "val": ([], [])}
    for r in rows:
        img = Image.open(manifest.parent / r["path"]).convert("RGB").resize((size, size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
        out[r["split"]][0].append((x - MEAN) / STD)
        out[r["split"]][1].append(index[r["label"]])
    return (
        torch.stack(out["train"][0]),
        torch.tensor(out["train"][1]),
        torch.stack(out["val"][0]),
        torch.tensor(out["val"][1]),
        classes,
    )


def build_strategy(args, model, n_classes_per_task: int):
    from avalanche.models import IncrementalClassifier
    from avalanche.training import EWC, LwF, Naive, Replay
    from avalanche.training.plugins import EvaluationPlugin

    model.fc = IncrementalClassifier(model.fc.in_features, initial_out_features=n_classes_per_task)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    common = dict(
        train_mb_size=args.batch_size,
        train_epochs=args.epochs,
        eval_mb_size=256,
        device="cpu",
        evaluator=EvaluationPlugin(loggers=[]),
    )  # no loggers: nothing printed or timed but training
    loss = torch.nn.CrossEntropyLoss()
    if args.strategy == "replay":
        return Replay(model, opt, loss, mem_size=args.buffer_size, **common)
    if args.strategy == "ewc":
        return EWC(model, opt, loss, ewc_lambda=args.ewc_lambda, **common)
    if args.strategy == "lwf":
        return LwF(model, opt, loss, alpha=args.lwf_alpha, temperature=args.lwf_temperature, **common)
    return Naive(model, opt, loss, **common)


def accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return float((pred == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description="Avalanche side of bench/lifelong_vs_avalanche.py")
    ap.add_argument("--manifest", default=str(ROOT.parent / "shared/data/coil100-a/pose-split.csv"))
    ap.add_argument("--strategy", choices=["naive", "replay", "ewc", "lwf"], default="naive")
    for flag, kind, default in (
        ("--seed", int, 0),
        ("--tasks", int, 5),
        ("--size", int, 32),
        ("--width", int, 8),
        ("--epochs", int, 2),
        ("--batch-size", int, 32),
        ("--lr", float, 0.003),
        ("--buffer-size", int, 500),
        ("--ewc-lambda", float, 1e4),
        ("--lwf-alpha", float, 1.0),
        ("--lwf-temperature", float, 2.0),
    ):
        ap.add_argument(flag, type=kind, default=default)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from avalanche.benchmarks import nc_benchmark
    from avalanche.benchmarks.utils.classification_dataset import (
        _make_taskaware_tensor_classification_dataset,
    )

    torch.manual_seed(args.seed)
    xtr, ytr, xte, yte, classes = load(Path(args.manifest), args.size)
    per = len(classes) // args.tasks
    order = list(range(len(classes)))
    bench = nc_benchmark(
        _make_taskaware_tensor_classification_dataset(xtr, ytr),
        _make_taskaware_tensor_classification_dataset(xte, yte),
        n_experiences=args.tasks,
        task_labels=False,
        shuffle=False,
        fixed_class_order=order,
    )
    model = create_model("resnet18", per, width=args.width, stem="small")
    strategy = build_strategy(args, model, per)
    groups = [(yte >= t * per) & (yte < (t + 1) * per) for t in range(args.tasks)]
    R, seconds, cpu = [], [], []
    for exp in bench.train_stream:
        start, start_cpu = time.perf_counter(), time.process_time()
        strategy.train(exp)
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)  # CPU seconds: less at the mercy of a loaded machine
        R.append([accuracy(model, xte[g], yte[g]) for g in groups])
        print(f"task {len(R)}: {seconds[-1]:.1f}s  R row {' '.join(f'{a:.3f}' for a in R[-1])}", flush=True)
    Path(args.out).write_text(
        json.dumps(
            {"R": R, "train_seconds_per_task": seconds, "train_cpu_s_per_task": cpu, "args": vars(args)}
        )
    )


if __name__ == "__main__":
    main()
