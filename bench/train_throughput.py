"""Steady-state training images/s: resnetcls's default settings vs a plain PyTorch loop, same process.

Baseline: torchvision's resnet50, fp32, contiguous memory, AdamW, a textbook loop (zero_grad, forward,
cross-entropy, backward, step). Rows for resnetcls run its real training step (engine.loop.train_one_epoch
with the optimizer, schedule, scaler and loss that `resnetcls train` builds) on in-memory batches, so data
loading is not measured:
  resnetcls default         train.amp=auto + channels_last (auto = bf16 where the CPU/GPU has native bf16)
  resnetcls fp32 ch-last    train.amp=fp32, channels_last
  resnetcls bf16 ch-last    train.amp=bf16 forced (emulated, hence slow, on CPUs without AVX512-BF16/AMX)
Each row: warmup steps, then the median of timed steps.

    python bench/train_throughput.py            # ResNet-50, batch 32, 224 and 128 px
    python bench/train_throughput.py --quick    # ResNet-50, batch 8, 64 px (about a minute)
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
from torch import nn

from resnetcls.config import build_config
from resnetcls.engine.loop import EpochStats, train_one_epoch
from resnetcls.engine.optim import build_loss, build_optimization
from resnetcls.engine.prepare import build_context, build_model
from resnetcls.envinfo import machine_line
from resnetcls.hardware import pick_device, precision_name

CLASSES = 100


def batches(n: int, batch: int, size: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"images": torch.randn(batch, 3, size, size, generator=g),
             "labels": torch.randint(0, CLASSES, (batch,), generator=g), "bad": []} for _ in range(n)]


def median_step_s(step, warmup: int, timed: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(timed):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_pytorch(size: int, batch: int, warmup: int, timed: int, device: torch.device) -> float:
    model = torchvision.models.resnet50(num_classes=CLASSES).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = batches(1, batch, size)[0]
    x, y = data["images"].to(device), data["labels"].to(device)

    def step():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return median_step_s(step, warmup, timed)


def resnetcls_step(size: int, batch: int, warmup: int, timed: int, overrides: list[str]) -> tuple[float, str]:
    cfg = build_config(overrides=["model.name=resnet50", f"data.image_size={size}", f"train.batch_size={batch}",
                                  "train.epochs=1", *overrides])
    ctx = build_context(cfg.train)
    model = build_model(cfg.model, cfg.train, CLASSES, ctx)
    opt = build_optimization(model, cfg.optim, cfg.sched, cfg.train, warmup + timed, ctx)
    loss_fn = build_loss(cfg.loss, CLASSES, list(range(CLASSES))).to(ctx.device)
    data = batches(warmup + timed, batch, size)
    times, last = [], [0.0]

    def after_step(stats: EpochStats) -> bool:
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
        return False

    last[0] = time.perf_counter()
    train_one_epoch(model, data, opt, loss_fn, ctx, EpochStats(), after_step)
    return statistics.median(times[warmup:]), precision_name(ctx.amp_dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 8 at 64 px, few steps (about a minute)")
    parser.add_argument("--device", default="cpu", help="cpu (the target of this benchmark) or cuda")
    args = parser.parse_args()
    sizes, batch, warmup, timed = ([64], 8, 1, 3) if args.quick else ([224, 128], 32, 2, 5)
    device = pick_device(args.device)
    print(f"machine: {machine_line()}")
    print(f"ResNet-50 training, batch {batch}, {device.type}; median of {timed} steps after {warmup}")
    print(f"{'size':>5} {'setting':<38} {'precision':>9} {'img/s':>9} {'vs plain':>9}")
    rows = [("resnetcls default (amp=auto, ch-last)", []),
            ("resnetcls fp32 channels_last", ["train.amp=fp32"]),
            ("resnetcls bf16 channels_last", ["train.amp=bf16"])]
    for size in sizes:
        base = batch / plain_pytorch(size, batch, warmup, timed, device)
        print(f"{size:>5} {'plain PyTorch (torchvision, fp32)':<38} {'fp32':>9} {base:>9.1f} {1.0:>8.2f}x", flush=True)
        for name, overrides in rows:
            seconds, precision = resnetcls_step(size, batch, warmup, timed, [f"train.device={args.device}",
                                                                              *overrides])
            ips = batch / seconds
            print(f"{size:>5} {name:<38} {precision:>9} {ips:>9.1f} {ips / base:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
