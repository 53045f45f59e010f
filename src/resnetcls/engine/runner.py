"""What every training mode (`train`, `lifelong`) does around loop.train_one_epoch: the one interrupt path
(SIGINT/SIGTERM -> a resumable checkpoint -> exit 130), the progress bar, step logs (log.every_steps), step
checkpoints (ckpt.every_steps), the non-finite-loss stop and the bad-image warnings."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from . import distributed
from .checkpoint import Checkpointer, RunState, list_checkpoints
from .log import RunLogger
from .loop import (
    NO_HOOKS,
    EpochStats,
    NonFiniteLoss,
    Optimization,
    StepContext,
    StepHooks,
    StepRules,
    train_one_epoch,
)


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived and a resumable checkpoint was saved (the CLI exits with 130)."""


class StopRequest:
    """SIGINT/SIGTERM set a flag that the loop checks after every step; a second SIGINT stops at once.
    resume_dir: the folder the stopped run's line says to resume (None: the run's own)."""

    def __init__(self, resume_dir: Path | None = None) -> None:
        self.requested, self.previous, self.resume_dir = False, {}, resume_dir

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def signalled(self) -> bool:
        """Whether SIGINT/SIGTERM asked for the stop (a race's rung also stops at its step target)."""
        return self.requested

    def at_target(self) -> bool:
        """Whether the stop is a race rung's end at its step target rather than an interrupt (never here)."""
        return False

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def stop_run(logger: RunLogger, text: str, run_dir: Path) -> None:
    """Say where the run stopped and how to continue, flush the logs (TensorBoard), exit with 130."""
    logger.info(f"{text}; continue with --resume {run_dir}")
    logger.close(interrupted=True)
    raise TrainingInterrupted(str(run_dir))


@dataclass
class StepPlan:
    """How often to log and checkpoint within an epoch, and what a non-finite loss does (plain values from
    log.every_steps, ckpt.every_steps and train.nonfinite; 0 = never)."""

    epochs: int
    steps_per_epoch: int
    log_every: int = 0
    ckpt_every: int = 0
    nonfinite: str = "stop"


@dataclass
class EpochParts:
    """What run_epoch trains with: the module the steps call and its optimisation, the loss and ctx (device,
    precision), where steps are logged and checkpointed, the stop request, how often (StepPlan), and what the
    training mode adds: its StepHooks and more fields for every step record (lifelong: the task)."""

    model: object
    opt: Optimization
    loss_fn: object
    ctx: StepContext
    logger: RunLogger
    ckpt: Checkpointer
    stop: StopRequest
    plan: StepPlan
    hooks: StepHooks = NO_HOOKS
    tags: dict | None = None


def run_epoch(run: RunState, loader, parts: EpochParts) -> bool:
    """Train the rest of run.epoch over loader with the progress bar, step logging and step checkpoints.
    False when a stop was requested (the state is then at a clean step boundary)."""
    opt, logger, plan = parts.opt, parts.logger, parts.plan
    bar = logger.progress(run.epoch, plan.epochs, plan.steps_per_epoch, run.stats.steps)

    def after_step(stats: EpochStats) -> bool:
        run.global_step += 1
        bar.update(stats.loss, opt.lr, stats.images_per_s, stats.data_wait_share)
        if plan.log_every and run.global_step % plan.log_every == 0:
            logger.log(
                {"kind": "train", "epoch": run.epoch, **(parts.tags or {}), **train_record(stats, opt.lr)},
                run.global_step,
            )
        if plan.ckpt_every and run.global_step % plan.ckpt_every == 0:
            parts.ckpt.save(run)
        return distributed.any_rank(parts.stop.requested)  # all ranks stop at the same step, or none does

    try:
        rules = StepRules(plan.nonfinite, distributed.any_rank, parts.hooks)
        return train_one_epoch(
            parts.model, loader, opt, parts.loss_fn, parts.ctx, run.stats, after_step, rules
        )
    except NonFiniteLoss as e:
        saved = list_checkpoints(parts.ckpt.dir)
        last = (
            f"the last good checkpoint is {saved[-1][0].with_suffix('.pt')}" if saved else "no checkpoint yet"
        )
        logger.close()
        raise UserError(
            f"train: non-finite loss ({e.value}) at epoch {run.epoch} step {e.step_in_epoch} (global "
            f"step {run.global_step + 1}); stopped before applying it, {last}; lower optim.lr, set "
            f"train.grad_clip_norm, or --set train.nonfinite=skip to skip such batches"
        ) from None
    finally:
        bar.close()


def train_record(stats: EpochStats, lr: float) -> dict:
    """The train/ scalars of a step or epoch record (metrics.jsonl and TensorBoard)."""
    return {
        "train/loss": stats.loss,
        "train/top1": stats.top1,
        "train/lr": lr,
        "train/images_per_s": stats.images_per_s,
        "train/data_wait_share": stats.data_wait_share,
    }


def note_bad_images(run: RunState, bad: list, logger: RunLogger) -> None:
    """Warn once about each bad image newly met (skipped with data.on_bad=skip) and remember it in run."""
    for path, reason in bad:
        if path not in run.bad_files:
            run.bad_files[path] = reason
            logger.info(f"warning: skipped bad image {path}: {reason}")
