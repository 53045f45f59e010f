"""train_one_epoch() and evaluate(): the inner loops, one precision code path (autocast with enabled=)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class StepContext:
    """What the loops need to run a batch: where, in which precision and memory format."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = True

    def autocast(self):
        dtype = self.amp_dtype or torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.amp_dtype is not None)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return images.to(self.device, non_blocking=True, memory_format=fmt)


@dataclass
class EpochStats:
    loss: float = 0.0
    top1: float = 0.0
    top5: float = 0.0
    images: int = 0
    seconds: float = 0.0
    data_wait_s: float = 0.0
    bad: list = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum())


def train_one_epoch(model: nn.Module, loader, optimizer, scheduler, loss_fn: nn.Module, ctx: StepContext,
                    scaler: torch.amp.GradScaler, grad_clip_norm: float = 0.0) -> EpochStats:
    """One pass over loader; the scheduler steps per batch. Returns mean loss, top-1, throughput."""
    model.train()
    stats = EpochStats()
    loss_sum, correct = 0.0, 0
    start = tick = time.perf_counter()
    for batch in loader:
        stats.data_wait_s += time.perf_counter() - tick
        stats.bad += batch["bad"]
        if batch["images"] is None:
            tick = time.perf_counter()
            continue
        images, labels = ctx.to_device(batch["images"]), batch["labels"].to(ctx.device, non_blocking=True)
        with ctx.autocast():
            logits = model(images)
            loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip_norm > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        n = labels.shape[0]
        loss_sum += float(loss.detach()) * n
        correct += topk_correct(logits.detach(), labels, 1)
        stats.images += n
        tick = time.perf_counter()
    stats.seconds = time.perf_counter() - start
    if stats.images:
        stats.loss, stats.top1 = loss_sum / stats.images, correct / stats.images
    return stats


@torch.inference_mode()
def evaluate(model: nn.Module, loader, loss_fn: nn.Module | None, ctx: StepContext) -> EpochStats:
    """Loss, top-1 and top-5 over loader in eval mode."""
    model.eval()
    stats = EpochStats()
    loss_sum, c1, c5 = 0.0, 0, 0
    start = tick = time.perf_counter()
    for batch in loader:
        stats.data_wait_s += time.perf_counter() - tick
        stats.bad += batch["bad"]
        if batch["images"] is None:
            tick = time.perf_counter()
            continue
        images, labels = ctx.to_device(batch["images"]), batch["labels"].to(ctx.device)
        with ctx.autocast():
            logits = model(images).float()
        if loss_fn is not None:
            loss_sum += float(loss_fn(logits, labels)) * labels.shape[0]
        c1 += topk_correct(logits, labels, 1)
        c5 += topk_correct(logits, labels, 5)
        stats.images += labels.shape[0]
        tick = time.perf_counter()
    stats.seconds = time.perf_counter() - start
    if stats.images:
        stats.loss, stats.top1, stats.top5 = loss_sum / stats.images, c1 / stats.images, c5 / stats.images
    return stats
