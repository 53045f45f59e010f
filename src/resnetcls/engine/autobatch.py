"""`train --batch-size auto`: a batch size measured on this device with real training steps of the run's
recipe (model, precision, memory format, loss, optimizer) on random inputs of the run's image size. The data
loader is not part of either measurement (per image it costs the same at every batch size).

- On a CPU: the batch with the most training images per second among a few candidates, each timed over a few
  optimizer steps. A CPU has memory to spare for any of them; what differs is how well each keeps the cores
  busy.
- On a GPU (CUDA): the largest batch that fits its memory, found by trying (doubling, then bisecting, an
  out-of-memory step counting as "does not fit" after its memory is freed), minus a safety margin for what the
  probe does not hold (the EMA copy, the uint8 batch being finished, allocator fragmentation). Where that is
  below the recipe's train.batch_size, gradient accumulation keeps the recipe's effective batch. The search
  itself (plan_gpu_batch) is a pure function of a fits(batch) probe, so it is tested without a GPU.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import Config
from ..data.sources import Splits
from ..errors import UserError
from ..utils.hardware import precision_name
from .loop import StepContext
from .optim import build_loss, build_optimizer
from .prepare import build_context, build_model, seed_everything

CANDIDATES = (16, 32, 64, 128)
WARMUP_STEPS, TIMED_STEPS = 1, 3
GPU_START_BATCH = 16  # the GPU search doubles from here (and bisects below it when even this fails)
MAX_BATCH = 4096  # beyond this a bigger batch buys no speed; the search stops here however much memory
SAFETY = 0.9  # take 90% of the largest batch that fitted, rounded down to a multiple of 8
BISECT_TOLERANCE = 32  # bisect until the gap is 1/32 of the fit: finer than the margin, and fewer big steps


@dataclass
class StepRecipe:
    """What one probe step needs: the run's model, optimizer and loss, on its device, at its image size."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: torch.nn.Module
    ctx: StepContext
    image_size: int
    num_classes: int

    def step(self, batch: int) -> None:
        """One optimizer step on a random batch: forward in the run's precision, backward, step. The
        gradients are released however it ends (an out-of-memory step must not keep them alive)."""
        fmt = torch.channels_last if self.ctx.channels_last else torch.contiguous_format
        try:
            images = torch.randn(batch, 3, self.image_size, self.image_size, device=self.ctx.device)
            images = images.contiguous(memory_format=fmt)
            labels = torch.randint(0, self.num_classes, (batch,), device=self.ctx.device)
            self.model.train()
            with self.ctx.autocast():
                loss = self.loss_fn(self.model(images), labels)
            loss.backward()
            self.optimizer.step()
        finally:
            self.optimizer.zero_grad(set_to_none=True)


@dataclass(frozen=True)
class BatchPlan:
    """The GPU's choice: the batch and accumulation to train with, and what the search found."""

    batch_size: int
    grad_accum_steps: int
    largest_fit: int  # the largest batch that fitted in memory (the cap itself when memory never ran short)
    capped: bool  # the cap (training-set size or MAX_BATCH) fitted: the batch is not memory-bound


def candidate_batches(train_images: int) -> list[int]:
    """The candidates a training set of train_images can fill (always at least the smallest)."""
    return [b for b in CANDIDATES if b <= max(CANDIDATES[0], train_images)]


def fastest_batch(images_per_s: dict[int, float]) -> int:
    """The batch with the most images per second; a tie goes to the smaller batch (more steps per epoch)."""
    return max(sorted(images_per_s), key=lambda b: images_per_s[b])


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs kernels asynchronously; a timer would see only the
    launch)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batch(recipe: StepRecipe, batch: int) -> float:
    """Training images per second at this batch size over TIMED_STEPS steps, after WARMUP_STEPS."""
    for step in range(WARMUP_STEPS + TIMED_STEPS):
        if step == WARMUP_STEPS:
            synchronize(recipe.ctx.device)
            start = time.perf_counter()
        recipe.step(batch)
    synchronize(recipe.ctx.device)
    return batch * TIMED_STEPS / max(time.perf_counter() - start, 1e-9)


def search_largest_batch(fits: Callable[[int], bool], limit: int, start: int = GPU_START_BATCH) -> int:
    """The largest batch in [1, limit] with fits(batch) (assumed monotone: what fits, fits at every smaller
    batch); 0 when not even 1 fits. Doubles from start until a batch fails or limit fits, then bisects between
    the largest fit and the smallest failure until the gap is within 1/BISECT_TOLERANCE of the fit."""
    good, bad, batch = 0, None, max(1, min(start, limit))
    while bad is None:
        if not fits(batch):
            bad = batch
        elif batch == limit:
            return batch
        else:
            good, batch = batch, min(2 * batch, limit)
    while bad - good > max(1, good // BISECT_TOLERANCE):
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return good


def with_margin(largest_fit: int) -> int:
    """SAFETY of the largest batch that fitted, rounded down to a multiple of 8 (at least 1)."""
    batch = int(largest_fit * SAFETY)
    return batch // 8 * 8 if batch >= 8 else max(1, batch)


def keep_effective_batch(fitting: int, batch_size: int, grad_accum_steps: int) -> tuple[int, int]:
    """(batch, accumulation steps) for a device that fits `fitting` images per step, for a recipe of
    batch_size x grad_accum_steps: the fitting batch where it is at least batch_size (accumulation as given);
    else the recipe's effective batch split into ceil(effective / fitting) steps of ceil(effective / steps)
    images."""
    if fitting >= batch_size:
        return fitting, grad_accum_steps
    effective = batch_size * max(1, grad_accum_steps)
    steps = math.ceil(effective / fitting)
    return math.ceil(effective / steps), steps


def plan_gpu_batch(
    fits: Callable[[int], bool], train_images: int, batch_size: int, grad_accum_steps: int, image_size: int
) -> BatchPlan:
    """The GPU's batch: the largest that fits (capped at the training set and MAX_BATCH), less the margin
    where memory was what limited it, with accumulation to keep the recipe's effective batch."""
    limit = max(1, min(train_images, MAX_BATCH))
    largest = search_largest_batch(fits, limit)
    if largest == 0:
        raise UserError(
            f"--batch-size auto: not even a batch of 1 fits in the GPU's memory at image size "
            f"{image_size} (data.image_size); lower --image-size, choose a smaller --model, or "
            f"free the GPU"
        )
    if largest == limit:  # the cap fitted: memory never ran short, so no margin and no accumulation
        return BatchPlan(limit, grad_accum_steps, largest, True)
    batch, steps = keep_effective_batch(with_margin(largest), batch_size, grad_accum_steps)
    return BatchPlan(batch, steps, largest, False)


def cuda_memory_probe(run_step: Callable[[int], None]) -> Callable[[int], bool]:
    """fits(batch) for a GPU: True when run_step(batch) completes, False when it runs out of memory; either
    way the step's memory is freed and the allocator's cache emptied, so the next try starts clean."""

    def fits(batch: int) -> bool:
        try:
            run_step(batch)
            return True
        except RuntimeError as e:  # torch.cuda.OutOfMemoryError, or cuDNN/cuBLAS failing to allocate
            if not isinstance(e, torch.cuda.OutOfMemoryError) and "out of memory" not in str(e):
                raise
            return False
        finally:
            gc.collect()  # the failed step's frames (and their tensors) may sit in reference cycles
            torch.cuda.empty_cache()

    return fits


@dataclass(frozen=True)
class BatchChoice:
    """What `--batch-size auto` chose (train.batch_size and train.grad_accum_steps) and the line that says
    why, with its measurements (engine/plan.py prints it as the choice is made)."""

    batch_size: int
    grad_accum_steps: int
    line: str


def pick_batch_size(cfg: Config, splits: Splits, device_name: str | None = None) -> BatchChoice:
    """train.batch_size chosen on this device for these splits: the fastest per image on a CPU, the largest
    that fits on a GPU, with train.grad_accum_steps where memory is short."""
    train_cfg = cfg.train
    ctx = build_context(train_cfg, device_name)
    if ctx.device.type not in ("cpu", "cuda"):
        raise UserError(
            f"--batch-size auto: measured on a CPU or a CUDA GPU only; on {ctx.device.type} give "
            f"--batch-size B"
        )
    seed_everything(train_cfg.seed, train_cfg.deterministic)
    recipe = build_recipe(cfg, ctx, max(2, len(splits.classes)))
    if ctx.device.type == "cuda":
        return fit_gpu_memory(recipe, len(splits.train), train_cfg.batch_size, train_cfg.grad_accum_steps)
    return fastest_on_cpu(recipe, len(splits.train), train_cfg.grad_accum_steps)


def build_recipe(cfg: Config, ctx: StepContext, num_classes: int) -> StepRecipe:
    """A fresh model of the run's recipe with its optimizer and loss (held only by the recipe, so the GPU
    search can free them)."""
    model = build_model(cfg.model, cfg.train, num_classes, ctx)
    return StepRecipe(
        model,
        build_optimizer(model, cfg.optim),
        build_loss(cfg.loss, num_classes).to(ctx.device),
        ctx,
        cfg.data.image_size,
        num_classes,
    )


def fastest_on_cpu(recipe: StepRecipe, train_images: int, grad_accum_steps: int) -> BatchChoice:
    """The candidate batch with the most training images per second on this CPU (the line names them all)."""
    candidates = candidate_batches(train_images)
    # Once untimed: the first steps in a process pay one-time costs (thread pool, kernel selection) that would
    # otherwise all land on the first candidate.
    time_batch(recipe, candidates[0])
    measured = {b: time_batch(recipe, b) for b in candidates}
    batch = fastest_batch(measured)
    line = (
        f"--batch-size auto: {batch} (the most train images/s on this CPU among "
        + ", ".join(f"{b}: {v:.0f}" for b, v in measured.items())
        + ")"
    )
    return BatchChoice(batch, grad_accum_steps, line)


def fit_gpu_memory(
    recipe: StepRecipe, train_images: int, batch_size: int, grad_accum_steps: int
) -> BatchChoice:
    """The batch and accumulation steps from plan_gpu_batch with real training steps as the probe; the probe's
    model and optimizer state are freed before the run builds its own."""
    ctx = recipe.ctx
    plan = plan_gpu_batch(
        cuda_memory_probe(recipe.step), train_images, batch_size, grad_accum_steps, recipe.image_size
    )
    recipe.model, recipe.optimizer = None, None
    gc.collect()
    torch.cuda.empty_cache()
    how = (
        f"the whole training set / the cap of {MAX_BATCH} fitted"
        if plan.capped
        else f"{SAFETY:.0%} of {plan.largest_fit}, the largest that fitted, to a multiple of 8"
    )
    accumulation = (
        f" x {plan.grad_accum_steps} accumulation steps = {plan.batch_size * plan.grad_accum_steps}"
        f" per optimizer step (the recipe's {batch_size} x {grad_accum_steps} did not fit)"
        if plan.grad_accum_steps != grad_accum_steps
        else ""
    )
    line = (
        f"--batch-size auto: {plan.batch_size}{accumulation} ({how}; "
        f"{torch.cuda.get_device_name(ctx.device)}, image size {recipe.image_size}, "
        f"{precision_name(ctx.amp_dtype)}{' channels_last' if ctx.channels_last else ''})"
    )
    return BatchChoice(plan.batch_size, plan.grad_accum_steps, line)
