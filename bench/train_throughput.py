"""Steady-state training images/s: resnetcls's default settings vs a plain PyTorch loop, same process.

Baseline: torchvision's resnet50, fp32, contiguous memory, AdamW, a textbook loop (zero_grad, forward,
cross-entropy, backward, step). Rows for resnetcls run its real training step (engine.loop.train_one_epoch
with the optimizer, schedule, scaler and loss that `resnetcls train` builds) on in-memory batches, so data
loading is not measured:
  resnetcls default         train.precision=auto + channels_last (auto = bf16 where the CPU/GPU has
                            native bf16)
  resnetcls fp32 ch-last    train.precision=fp32, channels_last
  resnetcls bf16 ch-last    train.precision=bf16 forced (emulated, hence slow, on CPUs without
                            AVX512-BF16/AMX)
Each row: warmup steps, then the median of timed steps; with --repeats N the median of N such runs.

The same run first measures the machine's limit (hardware.peak_gflops: achievable GFLOP/s of an fp32 and a
bf16 matmul and channels_last 3x3 conv at the threads training uses) and prints every row's achieved GFLOP/s
(training ~ 3x the forward's 2 * MACs per image, MACs from models.registry.model_info) and its share of the
limit of its precision (the conv figure: a ResNet is almost all convolutions).

    python bench/train_throughput.py            # ResNet-50, batch 32, 224 and 128 px
    python bench/train_throughput.py --quick    # ResNet-50, batch 8, 64 px (about a minute)
    python bench/train_throughput.py --sizes 224 128 --batch 8 --steps 3 --repeats 3
    python bench/train_throughput.py --sizes 128 224 --batch 32 --steps 3 --repeats 3 --compile
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
from resnetcls.engine.prepare import build_context, build_model, wrap_model
from resnetcls.models.registry import model_info
from resnetcls.records.envinfo import machine_line
from resnetcls.utils.hardware import peak_gflops, pick_device, precision_name

CLASSES = 100


def batches(n: int, batch: int, size: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "images": torch.randn(batch, 3, size, size, generator=g),
            "labels": torch.randint(0, CLASSES, (batch,), generator=g),
            "bad": [],
        }
        for _ in range(n)
    ]


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
    cfg = build_config(
        overrides=[
            "model.name=resnet50",
            f"data.image_size={size}",
            f"train.batch_size={batch}",
            "train.epochs=1",
            *overrides,
        ]
    )
    ctx = build_context(cfg.train)
    model = build_model(cfg.model, cfg.train, CLASSES, ctx)
    opt = build_optimization(model, cfg.optim, cfg.sched, cfg.train, warmup + timed, ctx)
    step_model = wrap_model(model, ctx, False, cfg.train.compile)
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
    train_one_epoch(step_model, data, opt, loss_fn, ctx, EpochStats(), after_step)
    return statistics.median(times[warmup:]), precision_name(ctx.amp_dtype)


# --compile adds the torch.compile'd default row (train.compile=true; off by default: it has not paid here).
ROWS = [
    ("resnetcls default (precision=auto, ch-last)", []),
    ("resnetcls fp32 channels_last", ["train.precision=fp32"]),
    ("resnetcls bf16 channels_last", ["train.precision=bf16"]),
]
COMPILED = ("resnetcls default + torch.compile", ["train.compile=true"])


def print_limit(limit: dict) -> None:
    native = "native" if limit["bf16_native"] else "EMULATED (not a limit to reach)"
    print(
        f"limit ({limit['threads']} threads): fp32 matmul {limit['fp32_matmul']:.0f} / conv "
        f"{limit['fp32_conv']:.0f} GFLOP/s; bf16 ({native}) matmul {limit['bf16_matmul']:.0f} / conv "
        f"{limit['bf16_conv']:.0f} GFLOP/s",
        flush=True,
    )


def print_row(
    size: int, name: str, precision: str, ips: float, base: float, train_flops: float, limit: dict
) -> None:
    """One table row: images/s, ratio vs plain fp32, achieved GFLOP/s and its share of its precision's
    limit."""
    gflops = ips * train_flops / 1e9
    share = gflops / limit[f"{precision if precision == 'bf16' else 'fp32'}_conv"]
    print(
        f"{size:>5} {name:<38} {precision:>9} {ips:>9.3g} {ips / base:>8.2f}x {gflops:>8.3g} {share:>7.0%}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 8 at 64 px, few steps (about a minute)")
    parser.add_argument("--device", default="cpu", help="cpu (the target of this benchmark) or cuda")
    parser.add_argument("--sizes", type=int, nargs="+", help="image sizes (default 224 128; --quick 64)")
    parser.add_argument("--batch", type=int, help="batch size (default 32; --quick 8)")
    parser.add_argument(
        "--steps", type=int, help="timed steps per run after the warmup (default 5; --quick 3)"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per row; the median is printed (default 1)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="add the torch.compile'd default row (its compile falls in the warm-up steps)",
    )
    args = parser.parse_args()
    sizes, batch, warmup, timed = ([64], 8, 1, 3) if args.quick else ([224, 128], 32, 2, 5)
    sizes, batch, timed = args.sizes or sizes, args.batch or batch, args.steps or timed
    device = pick_device(args.device)
    print(f"machine: {machine_line()}")
    print(
        f"ResNet-50 training, batch {batch}, {device.type}; median of {args.repeats} run(s), each the median "
        f"of {timed} steps after {warmup}"
    )
    limit = peak_gflops(seconds=0.5)
    print_limit(limit)
    print(
        f"{'size':>5} {'setting':<38} {'precision':>9} {'img/s':>9} {'vs plain':>9} {'GFLOP/s':>8} "
        f"{'of limit':>7}"
    )
    for size in sizes:
        train_flops = 3 * 2 * model_info("resnet50", size, CLASSES).macs  # forward + 2x for the backward
        base = statistics.median(
            batch / plain_pytorch(size, batch, warmup, timed, device) for _ in range(args.repeats)
        )
        print_row(size, "plain PyTorch (torchvision, fp32)", "fp32", base, base, train_flops, limit)
        for name, overrides in ROWS + ([COMPILED] if args.compile else []):
            runs = [
                resnetcls_step(size, batch, warmup, timed, [f"train.device={args.device}", *overrides])
                for _ in range(args.repeats)
            ]
            ips = statistics.median(batch / seconds for seconds, _ in runs)
            print_row(size, name, runs[0][1], ips, base, train_flops, limit)


if __name__ == "__main__":
    main()
