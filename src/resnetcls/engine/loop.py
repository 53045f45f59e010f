"""train_one_epoch() and evaluate(): the inner loops, one precision code path (autocast/GradScaler with
enabled=), gradient accumulation and clipping, EMA, a callback after every optimizer step, and StepHooks: what
a training mode (lifelong strategies) adds to a step. Plain training and every lifelong strategy run this one
step loop."""

from __future__ import annotations

import time
from collections.abc import Callable
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

    def to_device(self, images: torch.Tensor, finish: Callable | None = None) -> torch.Tensor:
        """The batch on the device; finish (a BatchTransform's normalisation) runs there when given: on a GPU
        the loader then ships uint8 pixels, 4x fewer bytes than float32 (measured 1.6x more images/s on an
        H100 with bench/gpu_train_throughput.py)."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        images = images.to(self.device, non_blocking=True, memory_format=fmt)
        return images if finish is None else finish(images).contiguous(memory_format=fmt)


@dataclass
class EpochStats:
    """Running sums over an epoch (or its remainder after a resume); plain numbers, so they checkpoint."""

    loss_sum: float = 0.0
    correct1: int = 0
    correct5: int = 0
    images: int = 0
    batches: int = 0  # batches consumed in this epoch: the sampler position is batches * B
    steps: int = 0  # optimizer steps done in this epoch
    seconds: float = 0.0
    data_wait_s: float = 0.0
    bad: list = field(default_factory=list)
    nonfinite: int = 0  # batches whose loss was NaN/Inf, skipped (train.nonfinite=skip)
    interrupted: bool = False  # evaluate() stopped early at a stop request
    map: float | None = None  # multi-label validation: the mean average precision (engine/multilabel.py)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = labels.shape[0]
        self.loss_sum += float(loss.detach()) * n
        self.correct1 += topk_correct(logits.detach(), labels, 1)
        self.correct5 += topk_correct(logits.detach(), labels, 5)
        self.images += n

    @property
    def loss(self) -> float:
        return self.loss_sum / self.images if self.images else 0.0

    @property
    def top1(self) -> float:
        return self.correct1 / self.images if self.images else 0.0

    @property
    def top5(self) -> float:
        return self.correct5 / self.images if self.images else 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    @property
    def data_wait_share(self) -> float:
        return self.data_wait_s / self.seconds if self.seconds else 0.0


class NonFiniteLoss(Exception):
    """A batch's loss was NaN or Inf (train.nonfinite=stop); raised before its backward, so the weights and
    the optimizer state are still those of the last good step."""

    def __init__(self, step_in_epoch: int, value: float) -> None:
        super().__init__(f"loss {value} at step {step_in_epoch} of the epoch")
        self.step_in_epoch, self.value = step_in_epoch, value


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """Images whose label is among their k highest logits; for multi-hot labels (N, C), images with one of
    their labels among them."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    if labels.ndim == 2:
        return int((labels.gather(1, top) > 0.5).any(dim=1).sum())
    return int((top == labels[:, None]).any(dim=1).sum())


@dataclass
class Optimization:
    """Optimizer, schedule, gradient scaler and EMA, stepped together once every accum_steps batches."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: nn.Module | None = None
    accum_steps: int = 1
    clip_norm: float = 0.0

    def backward(self, loss: torch.Tensor) -> None:
        # Divided so that accum_steps batches of B give the gradient of one batch of accum_steps * B.
        self.scaler.scale(loss / self.accum_steps).backward()

    def step(self, model: nn.Module) -> None:
        if self.clip_norm > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradient, not the scaled one
            nn.utils.clip_grad_norm_(model.parameters(), self.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(model)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


class StepHooks:
    """What a training mode adds to the standard step. This base class adds nothing (plain training);
    lifelong/hooks.py's StrategyHooks overrides it per strategy.

    - extra_batch(n): (uint8 NCHW images, labels) joined to a batch of n uint8 images before it is normalised
      (replay), or None. Needs a loader built with uint8_batches=True: the joined batch is finished on the
      device with the loader's device_finish, so stored and fresh images get the same jitter and
      normalisation.
    - extra_loss(images, logits): a term added to the batch's loss inside autocast, after the forward (EWC's
      penalty, LwF's distillation, `train --teacher`'s: engine/distill.py), or None.
    - task_weight: the factor of the task loss (1; distillation's 1 - distill.alpha).
    Work between tasks (filling a replay buffer, a Fisher pass, freezing a teacher) is not part of a step:
    lifelong/run.py calls its hooks' start_task and end_task around the epochs of each task.
    """

    task_weight: float = 1.0

    def extra_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None

    def extra_loss(self, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        return None


NO_HOOKS = StepHooks()


@dataclass(frozen=True)
class StepRules:
    """How train_one_epoch treats a step beyond the plain update: what a non-finite loss does ("stop" raises
    NonFiniteLoss, "skip" skips the batch and counts it in stats.nonfinite), agree(flag), which makes every
    rank of a torchrun job take the same decision (so they all skip the same backward and DDP's all-reduce
    stays in step), and the training mode's StepHooks."""

    nonfinite: str = "stop"
    agree: Callable[[bool], bool] = bool
    hooks: StepHooks = NO_HOOKS


PLAIN_STEPS = StepRules()


def forward_batch(
    model: nn.Module,
    batch: dict,
    finish: Callable | None,
    loss_fn: nn.Module,
    ctx: StepContext,
    hooks: StepHooks,
    mix: Callable | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, logits, labels) of one training batch, with the hooks' extra images and loss term.

    mix: a loader's batch_mix (Mixup/CutMix), applied to the finished batch with the batch's seed; the loss
    then takes its soft targets, while the returned labels stay the hard ones (for the accuracy counts)."""
    images, labels = batch["images"], batch["labels"]
    finish = batch.get("finish", finish)  # data.augment_on=device: the batch's own crops, then normalisation
    extra = hooks.extra_batch(len(labels))
    if extra is not None:
        if finish is None or images.dtype != torch.uint8:
            raise ValueError("StepHooks.extra_batch needs a loader built with uint8_batches=True")
        images, labels = torch.cat([images, extra[0]]), torch.cat([labels, extra[1]])
    images = ctx.to_device(images, finish)
    labels = labels.to(ctx.device, non_blocking=True)
    targets = labels
    if mix is not None:
        images, targets = mix(images, labels, batch.get("seed"))
    with ctx.autocast():
        logits = model(images)
        loss = loss_fn(logits, targets)
        if hooks.task_weight != 1.0:
            loss = hooks.task_weight * loss
        term = hooks.extra_loss(images, logits)
        if term is not None:
            loss = loss + term
    return loss, logits, labels


def train_one_epoch(
    model: nn.Module,
    loader,
    opt: Optimization,
    loss_fn: nn.Module,
    ctx: StepContext,
    stats: EpochStats,
    after_step: Callable[[EpochStats], bool],
    rules: StepRules = PLAIN_STEPS,
) -> bool:
    """Train over loader (the rest of the epoch when resuming); stats accumulates in place.

    after_step(stats) runs after every optimizer step (logging, checkpoints) and returns True to stop early.
    rules: a NaN/Inf loss's fate, the ranks' agreement on it, the hooks (see StepRules).
    loader: batches as dicts {images, labels, bad}; a FinishingLoader built with uint8_batches=True is
    finished on the device with its device_finish, and one with a batch_mix has it applied after that.
    Returns True when the epoch ran to its end, False when after_step stopped it.
    """
    model.train()
    remaining, micro = len(loader), 0
    finish = getattr(
        loader, "device_finish", None
    )  # plain iterables of batches (tests, benches) come finished
    mix = getattr(loader, "batch_mix", None)
    start, seconds0 = time.perf_counter(), stats.seconds
    tick = start
    for i, batch in enumerate(loader):
        stats.data_wait_s += time.perf_counter() - tick
        stats.bad += batch["bad"]
        stats.batches += 1
        if batch["images"] is not None:
            loss, logits, labels = forward_batch(model, batch, finish, loss_fn, ctx, rules.hooks, mix)
            if rules.agree(not bool(torch.isfinite(loss.detach()))):
                if rules.nonfinite != "skip":
                    raise NonFiniteLoss(stats.steps + 1, float(loss.detach()))
                stats.nonfinite += 1
            else:
                opt.backward(loss)
                stats.add(loss, logits, labels)
                micro += 1
        # Group boundaries count batches from the epoch's start, so a resumed epoch groups them the same way.
        if micro and (stats.batches % opt.accum_steps == 0 or i == remaining - 1):
            opt.step(model)
            micro = 0
            stats.steps += 1
            stats.seconds = seconds0 + time.perf_counter() - start
            if after_step(stats):
                return False
        tick = time.perf_counter()
    stats.seconds = seconds0 + time.perf_counter() - start
    return True


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader,
    loss_fn: nn.Module | None,
    ctx: StepContext,
    confusion: torch.Tensor | None = None,
    stop: Callable[[], bool] | None = None,
    logits_out: list | None = None,
) -> EpochStats:
    """Loss, top-1 and top-5 over loader in eval mode; confusion (int64 CxC, rows true, columns predicted),
    when given, accumulates the predictions too. stop() is asked after every batch: when it says True the pass
    ends there with stats.interrupted set (Ctrl-C during a long validation saves and exits promptly).
    logits_out, when given, gets (fp32 logits, labels) of every batch appended, on the CPU (the calibration
    fit at the end of training, engine/calibrate.py)."""
    model.eval()
    stats = EpochStats()
    start = tick = time.perf_counter()
    for batch in loader:
        stats.data_wait_s += time.perf_counter() - tick
        stats.bad += batch["bad"]
        if batch["images"] is not None:
            images = ctx.to_device(batch["images"], getattr(loader, "device_finish", None))
            labels = batch["labels"].to(ctx.device)
            with ctx.autocast():
                logits = model(images).float()
            loss = loss_fn(logits, labels) if loss_fn is not None else torch.zeros(())
            stats.add(loss, logits, labels)
            if logits_out is not None:
                logits_out.append((logits.cpu(), labels.cpu()))
            if confusion is not None and labels.ndim == 1:  # multi-label (multi-hot labels): no confusion
                cells = labels.cpu() * confusion.shape[1] + logits.argmax(dim=1).cpu()
                confusion.view(-1).index_add_(0, cells, torch.ones_like(cells))
        if stop is not None and stop():
            stats.interrupted = True
            break
        tick = time.perf_counter()
    stats.seconds = time.perf_counter() - start
    return stats
