"""train.time_budget (`--time 20m`): fit the whole schedule to a wall-clock budget instead of cutting it
short.

A few training steps are timed at the start (on a throwaway copy of the model and optimizer, with every RNG
put back afterwards, so the run itself is the same as `--epochs N` with the N chosen), and a couple of
validation batches; from these the number of epochs is chosen so that warmup, cosine decay and every
validation (the last one included) end within the budget. The chosen number is written to config.yaml as
train.epochs and saved with every checkpoint: a resumed run keeps it and measures nothing.

Under progressive resizing (data.progressive) the steps are timed at the final size and each epoch's step
time is that scaled by its share of the final size's pixels (a ResNet's work per image grows with the pixel
count); the schedule itself depends on the number of epochs, so the choice searches over it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data.sampler import progressive_sizes
from ..utils.atomic import write_atomic
from .checkpoint import RunState, capture_rng, capture_state, restore_rng
from .loop import (
    NO_HOOKS,
    EpochStats,
    Optimization,
    StepContext,
    StepHooks,
    StepRules,
    evaluate,
    train_one_epoch,
)

WARMUP_STEPS = 2  # untimed optimizer steps first (loader start, first-call overheads, optimizer state)
MEASURE_STEPS = 5  # then timed ones (over more than one pass of a short loader)
VAL_BATCHES = 2  # timed validation batches, after one untimed batch
MAX_EPOCHS = 1_000_000  # the range of train.epochs


def pixel_shares(epochs: int, image_size: int, progressive: float) -> list[float]:
    """Each epoch's pixels per image as a share of the final size's, under data.progressive (all 1 when
    off)."""
    if progressive <= 0:
        return [1.0] * epochs
    return [(size / image_size) ** 2 for size in progressive_sizes(epochs, image_size, progressive)]


def schedule_seconds(
    epochs: int,
    step_s: float,
    steps_per_epoch: int,
    val_s: float,
    overhead_s: float = 0.0,
    image_size: int = 0,
    progressive: float = 0.0,
) -> float:
    """The predicted time of `epochs` epochs: steps at step_s (the final size's) scaled by each epoch's pixel
    share, plus one validation and one checkpoint per epoch."""
    share = sum(pixel_shares(epochs, image_size, progressive)) if progressive > 0 else epochs
    return step_s * steps_per_epoch * share + epochs * (val_s + overhead_s)


def epochs_for_budget(
    budget_s: float,
    step_s: float,
    steps_per_epoch: int,
    val_s: float,
    overhead_s: float = 0.0,
    image_size: int = 0,
    progressive: float = 0.0,
) -> int:
    """The number of whole epochs whose training (steps_per_epoch steps of step_s, scaled by each epoch's
    pixel share under data.progressive), validation (val_s each) and end-of-epoch checkpoint (overhead_s) come
    closest to budget_s without passing it by more than 10%; at least 1."""
    if not step_s * steps_per_epoch + val_s + overhead_s > 0:
        raise ValueError(
            f"an epoch must take some time, got {step_s * steps_per_epoch + val_s + overhead_s!r} s"
        )

    def total(epochs: int) -> float:
        return schedule_seconds(epochs, step_s, steps_per_epoch, val_s, overhead_s, image_size, progressive)

    fits, over = 0, MAX_EPOCHS + 1  # binary search: the most epochs that fit (total grows with the epochs)
    while over - fits > 1:
        middle = (fits + over) // 2
        fits, over = (middle, over) if total(middle) <= budget_s else (fits, middle)
    if fits == 0:
        return 1
    if (
        fits < MAX_EPOCHS
        and total(fits + 1) - budget_s <= budget_s - total(fits)
        and total(fits + 1) <= 1.1 * budget_s
    ):
        return fits + 1  # one more epoch ends nearer the budget, and at most 10% past it
    return fits


@dataclass
class BudgetChoice:
    """What was measured and what was chosen (printed in one line, logged to metrics.jsonl)."""

    budget_s: float
    step_s: float
    val_s: float
    steps_per_epoch: int
    epochs: int
    overhead_s: float = 0.0  # the checkpoint written after each epoch
    setup_s: float = 0.0  # spent before training (data, model, this measurement), out of the budget
    pixel_share: float = 1.0  # progressive resizing: the epochs' mean share of the final size's pixels

    @property
    def predicted_s(self) -> float:
        return self.setup_s + self.epochs * (
            self.step_s * self.steps_per_epoch * self.pixel_share + self.val_s + self.overhead_s
        )

    def line(self) -> str:
        text = (
            f"time budget {format_seconds(self.budget_s)}: measured {self.step_s:.3g} s/step, "
            f"{self.val_s:.3g} s of validation and {self.overhead_s:.2g} s of checkpoint per epoch, "
            f"{self.setup_s:.3g} s of setup; chose {self.epochs} epochs x {self.steps_per_epoch} steps "
            f"(predicted {format_seconds(self.predicted_s)} in all)"
        )
        if self.pixel_share < 1:
            text += (
                f"; progressive resizing: the steps were timed at the final size and an epoch trains on "
                f"{self.pixel_share:.0%} of its pixels on average"
            )
        if self.predicted_s > 1.1 * self.budget_s:
            text += "; warning: one epoch alone is longer than the budget"
        return text

    def record(self) -> dict:
        return {
            "budget_s": self.budget_s,
            "step_s": self.step_s,
            "val_s": self.val_s,
            "overhead_s": self.overhead_s,
            "setup_s": self.setup_s,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "pixel_share": self.pixel_share,
            "predicted_s": round(self.predicted_s, 2),
        }


def format_seconds(seconds: float) -> str:
    """90 -> '1m30s', 5400 -> '1h30m', 12.3 -> '12.3s'."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def mean_interval(ticks: list[float], start: float) -> float:
    """The mean time between ticks (the first one is a warm-up); with one tick, the time it took from
    start."""
    if len(ticks) >= 2:
        return (ticks[-1] - ticks[0]) / (len(ticks) - 1)
    return ticks[0] - start if ticks else 0.0


def measure_speed(
    model: nn.Module,
    train_loader,
    val_loader,
    loss_fn: nn.Module,
    ctx: StepContext,
    build_opt: Callable[[nn.Module], Optimization],
    probe_dir: Path | None,
    hooks: StepHooks = NO_HOOKS,
) -> tuple[float, float, float]:
    """(seconds per optimizer step, seconds per validation pass, seconds per checkpoint), timed on a copy of
    model with its own optimizer (build_opt); the checkpoint as a file in probe_dir (None: not timed, 0).
    hooks: what the run's steps add (a distillation teacher's pass). model, its optimizer-to-be and every RNG
    are as they were afterwards."""
    rng, probe = capture_rng(), copy.deepcopy(model)
    opt, ticks, rules = build_opt(probe), [], StepRules(nonfinite="skip", hooks=hooks)  # NaN: no stop

    def after_step(stats: EpochStats) -> bool:
        ticks.append(time.perf_counter())
        return len(ticks) >= WARMUP_STEPS + MEASURE_STEPS

    start = time.perf_counter()
    for _ in range(WARMUP_STEPS + MEASURE_STEPS):  # passes: a tiny data set may have one step per epoch
        if not train_one_epoch(probe, train_loader, opt, loss_fn, ctx, EpochStats(), after_step, rules):
            break
    step_s, ticks = mean_interval(ticks[WARMUP_STEPS - 1 :], start), []

    def stop() -> bool:
        ticks.append(time.perf_counter())
        return len(ticks) > VAL_BATCHES

    start = time.perf_counter()
    evaluate(probe, val_loader, loss_fn, ctx, stop=stop)
    val_s = mean_interval(ticks, start) * len(val_loader)
    save_s = time_checkpoint(probe, opt, probe_dir) if probe_dir is not None else 0.0
    restore_rng(rng)
    return step_s, val_s, save_s


def time_checkpoint(model: nn.Module, opt: Optimization, probe_dir: Path) -> float:
    """Seconds to write (atomically, fsynced) a checkpoint of model and opt to probe_dir, deleted again."""
    path = probe_dir / ".time-budget-probe.pt"
    start = time.perf_counter()
    write_atomic(path, lambda f: torch.save(capture_state(RunState(), model, opt, 1), f))
    seconds = time.perf_counter() - start
    path.unlink(missing_ok=True)
    return seconds
