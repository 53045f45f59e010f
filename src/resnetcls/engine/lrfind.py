"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", section
3.3; fastai's lr_find): train the run's recipe (model, loss, optimizer, augmentation) for a few hundred steps
while the learning rate grows exponentially from start_lr to end_lr, record the smoothed loss, stop once it
diverges, and suggest a rate. The model's weights are thrown away: nothing but the curve is written.

`resnetcls lr-find` calls find_lr(); `resnetcls train --lr auto` has its plan (engine/plan.py) call auto_lr()
(a short, quiet sweep) before the run is prepared, so config.yaml records the rate that was chosen; train()
then writes the sweep's curve into the run directory with the same write_curve(), where the report shows it
(and a resume, which never sweeps again, leaves it alone).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import Config, validate_config
from ..data.sampler import ResumableSampler
from ..data.sources import Splits
from ..errors import UserError
from ..utils.atomic import write_text_atomic
from .loop import EpochStats, NonFiniteLoss, Optimization, train_one_epoch
from .optim import build_loss, build_optimizer
from .prepare import DataPipeline, build_context, build_model, resolve_splits, seed_everything

SMOOTHING = 0.9  # exponential moving average of the loss (debiased); ~10 steps of memory
DIVERGE_FACTOR = 4.0  # stop once the smoothed loss exceeds 4x the best seen
SKIP_START = 3  # the first smoothed points rest on too few steps to trust a slope there
AUTO_STEPS, AUTO_START_LR, AUTO_END_LR = 60, 1e-6, 1.0  # the short sweep of `train --lr auto`

RULE_STEEPEST = "steepest descent of the smoothed loss against log(lr), before its minimum"
RULE_MIN_TENTH = "the lr of the minimum smoothed loss / 10 (no descending stretch to take a slope on)"


@dataclass
class LRCurve:
    """One sweep: the rate, raw and smoothed loss of every optimizer step, and why it ended."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stopped: str = "end of the sweep"
    suggestion: float | None = None
    rule: str = ""
    min_loss_lr: float | None = None
    settings: dict = field(
        default_factory=dict
    )  # what was swept, with which recipe (lr_find.json records it)

    def to_dict(self) -> dict:
        return {
            "suggested_lr": self.suggestion,
            "rule": self.rule,
            "min_loss_lr": self.min_loss_lr,
            "stopped": self.stopped,
            "smoothing": SMOOTHING,
            "diverge_factor": DIVERGE_FACTOR,
            "points": [
                {"step": i, "lr": lr, "loss": loss, "smoothed_loss": s}
                for i, (lr, loss, s) in enumerate(zip(self.lrs, self.losses, self.smoothed))
            ],
        }


def check_sweep(steps: int, start_lr: float, end_lr: float) -> None:
    """Refuse a sweep that cannot produce a curve, naming the flag."""
    if steps < 5:
        raise UserError(f"--steps {steps}: expected at least 5 steps for a curve")
    if not (0 < start_lr < end_lr) or not math.isfinite(end_lr):
        raise UserError(f"--start-lr {start_lr:g} / --end-lr {end_lr:g}: expected 0 < start-lr < end-lr")


def sweep_lr(step: int, steps: int, start_lr: float, end_lr: float) -> float:
    """The rate of optimizer step `step` (0-based): exponential from start_lr (step 0) to end_lr (last)."""
    return start_lr * (end_lr / start_lr) ** (step / max(1, steps - 1))


def suggest(curve: LRCurve) -> None:
    """Fill curve.suggestion and curve.rule: the steepest negative slope of the smoothed loss over log10(lr)
    up to the minimum (fastai's 'steep'); min-loss lr / 10 where there is no descent to measure. The
    suggestion always lies within the swept rates."""
    lrs, smooth = np.array(curve.lrs), np.array(curve.smoothed)
    best = int(np.argmin(smooth))
    curve.min_loss_lr = float(lrs[best])
    lo = min(SKIP_START, max(0, best - 2))
    if best - lo >= 2:
        slopes = np.gradient(smooth[lo : best + 1], np.log10(lrs[lo : best + 1]))
        i = int(np.argmin(slopes))
        if slopes[i] < 0:
            curve.suggestion, curve.rule = float(lrs[lo + i]), RULE_STEEPEST
            return
    curve.suggestion, curve.rule = max(float(lrs[0]), curve.min_loss_lr / 10), RULE_MIN_TENTH


class SweepRecorder:
    """after_step for train_one_epoch: records each optimizer step's loss at its rate; True ends the sweep."""

    def __init__(self, curve: LRCurve, steps: int, start_lr: float, end_lr: float) -> None:
        self.curve, self.steps, self.start_lr, self.end_lr = curve, steps, start_lr, end_lr
        self.seen = (0.0, 0)  # (loss_sum, images) of the epoch's stats at the previous step
        self.avg = 0.0

    def new_epoch(self) -> None:
        self.seen = (0.0, 0)

    def __call__(self, stats: EpochStats) -> bool:
        loss = (stats.loss_sum - self.seen[0]) / max(1, stats.images - self.seen[1])
        self.seen = (stats.loss_sum, stats.images)
        c, k = self.curve, len(self.curve.lrs)
        self.avg = SMOOTHING * self.avg + (1 - SMOOTHING) * loss
        c.lrs.append(sweep_lr(k, self.steps, self.start_lr, self.end_lr))
        c.losses.append(loss)
        c.smoothed.append(self.avg / (1 - SMOOTHING ** (k + 1)))
        if k >= SKIP_START and c.smoothed[-1] > DIVERGE_FACTOR * min(c.smoothed):
            c.stopped = f"diverged at step {k} (smoothed loss above {DIVERGE_FACTOR:g}x its minimum)"
            return True
        return len(c.lrs) >= self.steps


def build_sweep(
    cfg: Config, steps: int, start_lr: float, end_lr: float, device_name: str | None, splits: Splits
):
    """The run's recipe on a fresh model: its loader, loss and optimizer, with the exponential schedule."""
    data_cfg, train_cfg = cfg.data, cfg.train
    seed_everything(train_cfg.seed, train_cfg.deterministic)
    ctx = build_context(train_cfg, device_name)
    pipeline = DataPipeline(data_cfg, train_cfg.batch_size, uint8_batches=ctx.device.type == "cuda")
    sampler = ResumableSampler(splits.train.labels, data_cfg.sampler, train_cfg.seed)
    loader = pipeline.train_loader(splits.train, sampler, train_cfg.seed)
    model = build_model(cfg.model, train_cfg, len(splits.classes), ctx)
    optimizer = build_optimizer(model, dataclasses.replace(cfg.optim, lr=start_lr))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: sweep_lr(min(s, steps - 1), steps, start_lr, end_lr) / start_lr
    )
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.amp_dtype == torch.float16)
    opt = Optimization(
        optimizer, schedule, scaler, None, max(1, train_cfg.grad_accum_steps), train_cfg.grad_clip_norm
    )
    loss_fn = build_loss(cfg.loss, len(splits.classes), splits.train.labels).to(ctx.device)
    return model, loader, sampler, opt, loss_fn, ctx


def run_sweep(
    cfg: Config,
    steps: int,
    start_lr: float,
    end_lr: float,
    device_name: str | None = None,
    splits: Splits | None = None,
) -> LRCurve:
    """Train a throwaway copy of cfg's recipe over the sweep (the training data cycled as often as needed) and
    return the curve with its suggestion. splits: the data's, when the caller has resolved them already."""
    validate_config(cfg)
    check_sweep(steps, start_lr, end_lr)
    if not cfg.data.train:
        raise UserError("lr-find: DATA is required")
    if splits is None:
        splits = resolve_splits(cfg.data, cfg.train.seed)
    model, loader, sampler, opt, loss_fn, ctx = build_sweep(cfg, steps, start_lr, end_lr, device_name, splits)
    curve = LRCurve()
    record = SweepRecorder(curve, steps, start_lr, end_lr)
    epoch = 0
    while len(curve.lrs) < steps:
        epoch, before = epoch + 1, len(curve.lrs)
        sampler.set_epoch(epoch, 0)
        record.new_epoch()
        try:
            ended = train_one_epoch(model, loader, opt, loss_fn, ctx, EpochStats(), record)
        except NonFiniteLoss:
            curve.stopped = f"diverged at step {len(curve.lrs)} (a non-finite loss)"
            break
        if not ended or len(curve.lrs) == before:
            break  # the recorder ended the sweep (or the loader yielded no batch at all)
    if len(curve.lrs) < 2:
        raise UserError(
            f"lr-find: only {len(curve.lrs)} step(s) before the loss diverged; "
            f"lower --start-lr (it was {start_lr:g})"
        )
    suggest(curve)
    curve.settings = {
        "steps": steps,
        "start_lr": start_lr,
        "end_lr": end_lr,
        "model": cfg.model.name,
        "optimizer": cfg.optim.name,
        "batch_size": cfg.train.batch_size,
        "loss": cfg.loss.name,
        "image_size": cfg.data.image_size,
    }
    return curve


def write_curve(curve: LRCurve, out_dir: Path) -> dict[str, Path]:
    """lr_find.json (curve, suggestion, rule, settings), lr_find.csv and lr_find.png into out_dir."""
    from ..records.figures import lr_finder_curve  # matplotlib: only where a figure is drawn

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "lr_find.json", "csv": out_dir / "lr_find.csv", "png": out_dir / "lr_find.png"}
    write_text_atomic(
        paths["json"], json.dumps({**curve.to_dict(), "settings": curve.settings}, indent=2) + "\n"
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["step", "lr", "loss", "smoothed_loss"])
    writer.writerows(
        [i, lr, loss, s] for i, (lr, loss, s) in enumerate(zip(curve.lrs, curve.losses, curve.smoothed))
    )
    write_text_atomic(paths["csv"], buffer.getvalue())
    lr_finder_curve(curve.lrs, curve.losses, curve.smoothed, curve.suggestion, curve.rule, paths["png"])
    return paths


def find_lr(
    cfg: Config, out_dir: str | Path, steps: int = 100, start_lr: float = 1e-7, end_lr: float = 10.0
) -> LRCurve:
    """`resnetcls lr-find`: the sweep, its files in out_dir, the suggestion on stdout (progress on stderr)."""
    print(
        f"lr-find: {cfg.model.name}, {cfg.optim.name}, batch {cfg.train.batch_size}, lr {start_lr:g} -> "
        f"{end_lr:g} over {steps} steps",
        file=sys.stderr,
        flush=True,
    )
    curve = run_sweep(cfg, steps, start_lr, end_lr)
    paths = write_curve(curve, Path(out_dir))
    print(
        f"lr-find: {len(curve.lrs)} steps, {curve.stopped}; curve in {paths['json']}, {paths['csv']}, "
        f"plot {paths['png']}",
        file=sys.stderr,
    )
    print(
        f"suggested lr {curve.suggestion:.3g} (rule: {curve.rule}; minimum smoothed loss at lr "
        f"{curve.min_loss_lr:.3g})"
    )
    return curve


def auto_lr(cfg: Config, splits: Splits, device_name: str | None = None) -> tuple[float, LRCurve, str]:
    """`train --lr auto`: a short quiet sweep; its suggestion for optim.lr, the curve (for the caller to write
    into the run directory once it exists, write_curve) and the line that says so (engine/plan.py)."""
    curve = run_sweep(cfg, AUTO_STEPS, AUTO_START_LR, AUTO_END_LR, device_name, splits)
    lr = min(curve.suggestion, 10.0)  # optim.lr's range is (0, 10]
    line = (
        f"--lr auto: {lr:.3g} (LR range test, {len(curve.lrs)} steps {AUTO_START_LR:g} -> {AUTO_END_LR:g}; "
        f"rule: {curve.rule})"
    )
    return lr, curve, line
