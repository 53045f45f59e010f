"""`train --batch-size auto` on a CPU: the batch size with the most training images per second among a few
candidates, each timed over a few optimizer steps of the run's recipe (model, precision, memory format, loss,
optimizer) on random inputs of the run's image size. A CPU has memory to spare for any of them; what differs
is how well each batch keeps the cores busy. The data loader is not part of the measurement (it is the same
per image at every batch size). A GPU's search (the largest batch that fits its memory) is not here yet.
"""
from __future__ import annotations

import dataclasses
import sys
import time

import torch

from ..config import Config, validate_config
from ..data.sources import load_splits
from ..errors import UserError
from .loop import StepContext
from .optim import build_loss, build_optimizer
from .prepare import build_context, build_model, seed_everything

CANDIDATES = (16, 32, 64, 128)
WARMUP_STEPS, TIMED_STEPS = 1, 3


def candidate_batches(train_images: int) -> list[int]:
    """The candidates a training set of train_images can fill (always at least the smallest)."""
    return [b for b in CANDIDATES if b <= max(CANDIDATES[0], train_images)]


def fastest_batch(images_per_s: dict[int, float]) -> int:
    """The batch with the most images per second; a tie goes to the smaller batch (more steps per epoch)."""
    return max(sorted(images_per_s), key=lambda b: images_per_s[b])


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs kernels asynchronously; a timer would see only the launch)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batch(model: torch.nn.Module, optimizer, loss_fn, ctx: StepContext, batch: int, image_size: int,
               num_classes: int) -> float:
    """Training images per second at this batch size over TIMED_STEPS steps, after WARMUP_STEPS."""
    fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
    images = torch.randn(batch, 3, image_size, image_size, device=ctx.device).contiguous(memory_format=fmt)
    labels = torch.randint(0, num_classes, (batch,), device=ctx.device)
    model.train()
    for step in range(WARMUP_STEPS + TIMED_STEPS):
        if step == WARMUP_STEPS:
            synchronize(ctx.device)
            start = time.perf_counter()
        with ctx.autocast():
            loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(ctx.device)
    return batch * TIMED_STEPS / max(time.perf_counter() - start, 1e-9)


def auto_batch_size(cfg: Config, device_name: str | None = None) -> Config:
    """cfg with train.batch_size set to the fastest candidate on this CPU (the measurements on stderr)."""
    validate_config(cfg)
    d, t = cfg.data, cfg.train
    ctx = build_context(t, device_name)
    if ctx.device.type != "cpu":
        raise UserError(f"--batch-size auto: measured on a CPU only so far; on {ctx.device.type} give "
                        f"--batch-size B")
    seed_everything(t.seed, t.deterministic)
    splits = load_splits(d.train, d.val, d.val_fraction, t.seed, d.split_by, d.batches)
    num_classes = max(2, len(splits.classes))
    model = build_model(cfg.model, t, num_classes, ctx)
    optimizer = build_optimizer(model, cfg.optim)
    loss_fn = build_loss(cfg.loss, num_classes)
    candidates = candidate_batches(len(splits.train))
    # Once untimed: the first steps in a process pay one-time costs (thread pool, kernel selection) that would
    # otherwise all land on the first candidate.
    time_batch(model, optimizer, loss_fn, ctx, candidates[0], d.image_size, num_classes)
    measured = {b: time_batch(model, optimizer, loss_fn, ctx, b, d.image_size, num_classes) for b in candidates}
    batch = fastest_batch(measured)
    print(f"--batch-size auto: {batch} (the most train images/s on this CPU among "
          + ", ".join(f"{b}: {v:.0f}" for b, v in measured.items()) + ")", file=sys.stderr, flush=True)
    return dataclasses.replace(cfg, train=dataclasses.replace(t, batch_size=batch))
