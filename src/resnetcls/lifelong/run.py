"""`resnetcls lifelong`: train over a sequence of tasks and measure forgetting and transfer.

Top to bottom: tasks -> the run directory (engine.prepare.prepare_run, as `train`) -> loaders, model
(engine.prepare, lifelong.sequence) -> accuracy on every task before training (b) -> for each task: grow the
head if the task brings classes, a fresh optimisation (engine.optim.build_optimization), its epochs through
the engine's step loop (engine.runner.run_epoch, the strategy's StepHooks), the strategy's end-of-task work,
evaluation on every task's test split (one row of R), a checkpoint -> R.csv/R.json/R.png, metrics.json,
final/. `joint` trains once on the union of the tasks (the upper bound) and gives one row.

So every train.*, log.*, ckpt.* and data.* setting means what it means for `train`: accumulation, EMA
(at the end of each task the weight average becomes the model: it is what R measures, what the strategy
remembers and what the next task starts from), compile, on_bad, step logs, TensorBoard, step checkpoints, and
the interrupt path (SIGINT/SIGTERM: saved, exit 130). The optimizer and schedule restart at every task (as in
Avalanche's default); each task seeds every RNG with seed + task index. Checkpoints are written at every task
boundary, at every epoch boundary inside a task and every ckpt.every_steps steps; those inside a task carry
the optimizer, schedule, scaler, EMA, the sampler's position, every RNG (engine.checkpoint.capture_state) and
the strategy's state (buffer, Fisher and anchor, LwF's teacher), so a run killed anywhere and resumed with
--resume auto reproduces the uninterrupted one bit for bit (CPU, train.deterministic=true).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from ..config import Config, LifelongConfig, TrainConfig, validate_config
from ..engine.checkpoint import RunState, restore_state
from ..engine.log import RunLogger
from ..engine.loop import EpochStats
from ..engine.optim import build_loss, build_optimization
from ..engine.prepare import prepare_run, seed_everything, wrap_model
from ..engine.runner import (
    EpochParts,
    StepPlan,
    StopRequest,
    note_bad_images,
    run_epoch,
    stop_run,
    train_record,
)
from ..errors import UserError
from .hooks import grow_head
from .ncm import prototype_classifier
from .results import LifelongResults, write_results
from .sequence import (
    TaskSequence,
    batch1_latency_ms,
    build_sequence,
    evaluate_tasks,
    restore_sequence,
    seen_accuracy,
    warn,
)
from .tasks import Task, build_tasks


def check_config(
    lc: LifelongConfig,
    data: str,
    train: TrainConfig | None = None,
    progressive: float = 0.0,
    trackers: dict[str, bool] | None = None,
) -> None:
    """What validate_config cannot know: replay needs a buffer, and some DATA; `train`'s time budget, early
    stopping and progressive resizing (data.progressive) are not lifelong's (its tasks run train.epochs each,
    and replayed images join each batch at the final size); MLflow/W&B tracking is train's only so far, and
    refused rather than silently ignored."""
    for key, on in (trackers or {}).items():
        if on:
            raise UserError(
                f"{key}=true: `lifelong` does not log to experiment trackers yet (only `train` does); "
                f"its metrics are in metrics.jsonl and TensorBoard"
            )
    for key, value in (
        ("train.time_budget", train.time_budget if train else ""),
        ("train.patience", train.patience if train else 0),
        ("data.progressive", progressive),
    ):
        if value not in ("", "0", 0):
            raise UserError(
                f"{key}={value!r}: `lifelong` trains train.epochs per task; unset it for lifelong"
            )
    if lc.strategy in ("replay", "derpp") and lc.buffer_size < 1:
        raise UserError(f"lifelong.buffer_size={lc.buffer_size}: replay needs at least 1 image")
    if not data and not lc.datasets:
        raise UserError("lifelong: DATA is required")


def run_lifelong(
    cfg: Config,
    out_dir: str | Path,
    resume: str | None = None,
    force: bool = False,
    joint: str | None = None,
    stop_after: int = 0,
) -> dict | None:
    """Run the task sequence into out_dir; return metrics.json's content (None when stopped early by
    stop_after: continue with resume="auto")."""
    seq, logger = start_sequence(cfg, out_dir, resume, force)
    trained = 0
    with StopRequest() as stop:
        while seq.task < len(seq.schedule):
            index, task = seq.task, seq.schedule[seq.task]
            warn(f"task {index + 1}/{len(seq.schedule)} {task.name}: {len(task.train)} train images")
            train_task(seq, logger, stop)
            log_task(seq, task, evaluate_tasks(seq, logger)[0], logger)
            seq.task, seq.run.epoch, seq.run.stats = index + 1, 1, EpochStats()
            saved = seq.checkpointer(None).save(seq.run)
            trained += 1
            if seq.task < len(seq.schedule) and stop.requested:
                stop_run(logger, f"interrupted after task {index + 1}: saved {saved}", seq.run_dir)
            if stop_after and trained >= stop_after and seq.task < len(seq.schedule):
                warn(
                    f"stopped after task {index + 1} (--stop-after {stop_after}); continue with --resume auto"
                )
                logger.close()
                return None
    return finish(seq, logger, joint)


def start_sequence(
    cfg: Config, out_dir: str | Path, resume: str | None, force: bool
) -> tuple[TaskSequence, RunLogger]:
    """Check the config, build the tasks (before anything is written), prepare the run directory, the
    sequence (or restore it from the checkpoint to resume) and its logger; a new run measures b first."""
    validate_config(cfg)
    check_config(
        cfg.lifelong,
        cfg.data.train,
        cfg.train,
        cfg.data.progressive,
        {"log.mlflow": cfg.log.mlflow, "log.wandb": cfg.log.wandb},
    )
    if not cfg.data.train:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train=cfg.lifelong.datasets[0]))
    tasks, classes = build_tasks(cfg.lifelong, cfg.data, cfg.train.seed)  # fails before anything is written
    prepared = prepare_run(cfg, out_dir, resume, force)
    seq = build_sequence(prepared.cfg, prepared.run_dir, prepared.env, tasks, classes)
    warn(
        f"lifelong: {cfg.lifelong.strategy}, {len(tasks)} tasks ("
        + ", ".join(f"{x.name}: {len(x.train)}/{len(x.test)}" for x in tasks)
        + f" train/test images), {len(classes)} classes, {cfg.model.name} on {seq.ctx.device.type}"
    )
    if prepared.resumed is not None:
        restore_sequence(seq, *prepared.resumed)
    logger = RunLogger(
        seq.run_dir,
        cfg.log.tensorboard,
        seq.run.global_step if prepared.resumed else None,
        resume_epoch=seq.global_epoch(),
    )
    if prepared.resumed is None:
        seq.b = evaluate_tasks(seq, logger)[0]
    return seq, logger


def log_task(seq: TaskSequence, task: Task, row: list[float], logger: RunLogger) -> None:
    """A trained task's row of R: appended to seq.R, one stderr line, its `task` record."""
    seq.R.append(row)
    warn(f"  accuracy on every task: {' '.join(f'{a:.3f}' for a in row)}")
    closed = seq.global_epoch() - 1  # the last epoch of this task: numbered like its task_epoch record
    logger.log(
        {
            "kind": "task",
            "epoch": closed,
            "task": task.name,
            "R_row": row,
            "lifelong/acc_all": sum(row) / len(row),
            "lifelong/acc_seen": seen_accuracy(seq, row),
        },
        seq.run.global_step,
    )


def train_task(seq: TaskSequence, logger: RunLogger, stop: StopRequest) -> None:
    """Train schedule[seq.task] for train.epochs epochs (or their rest, resumed) and do the strategy's
    end-of-task work; the task's train seconds go to seq.seconds."""
    cfg, train, index = seq.cfg, seq.cfg.train, seq.task
    task, loader, model = seq.schedule[index], seq.train_loaders[index], seq.model
    if seq.pending is None:
        seed_everything(train.seed + index, train.deterministic)
        seq.run = RunState(global_step=seq.run.global_step, bad_files=seq.run.bad_files)
    grow_head(model, seq.head_size(index))
    steps_per_epoch = math.ceil(len(loader) / max(1, train.grad_accum_steps))
    opt = build_optimization(model, cfg.optim, cfg.sched, train, steps_per_epoch, seq.ctx)
    loss_fn = build_loss(cfg.loss, model.fc.out_features, task.train.labels).to(seq.ctx.device)
    if seq.pending is None:
        seq.hooks.start_task(index, model)
    else:  # a step checkpoint inside this task: its optimizer, schedule, EMA, sampler position and RNGs
        seq.run, seq.pending = restore_state(seq.pending, model, opt), None
    step_model = wrap_model(model, seq.ctx, False, train.compile)
    ckpt = seq.checkpointer(opt)
    plan = StepPlan(train.epochs, steps_per_epoch, cfg.log.every_steps, cfg.ckpt.every_steps, train.nonfinite)
    run = seq.run
    while run.epoch <= train.epochs:
        seq.samplers[index].set_epoch(run.epoch, run.stats.batches * train.batch_size)
        parts = EpochParts(
            step_model, opt, loss_fn, seq.ctx, logger, ckpt, stop, plan, seq.hooks, {"task": task.name}
        )
        if not run_epoch(run, loader, parts):
            stop_run(
                logger,
                f"interrupted in task {index + 1} at epoch {run.epoch} step {run.stats.steps}: "
                f"saved {ckpt.save(run)}",
                seq.run_dir,
            )
        end_of_task_epoch(seq, task, opt.lr, logger)
        if run.epoch <= train.epochs:
            # an epoch boundary inside the task (the last one is the task's checkpoint)
            ckpt.save(run)
    end_task(seq, task, opt, loss_fn)


def end_task(seq: TaskSequence, task: Task, opt, loss_fn) -> None:
    """After a task's epochs: the EMA average (if any) becomes the model, the strategy's end-of-task work runs
    on the task's training images, and the task's train seconds go to seq.seconds."""
    model = seq.model
    if opt.ema is not None:  # the average is the task's result (see the module docstring)
        model.load_state_dict(opt.ema.module.state_dict())
    stored, ending = seq.pipeline.eval_loader(task.train), time.perf_counter()
    seq.hooks.end_task(
        model,
        lambda: ((b["images"], b["labels"]) for b in stored if b["images"] is not None),
        lambda: (
            (seq.ctx.to_device(b["images"], stored.device_finish), b["labels"].to(seq.ctx.device))
            for b in stored
            if b["images"] is not None
        ),
        loss_fn,
        lambda images: seq.ctx.to_device(images, stored.device_finish),
    )
    # the task's time: its epochs and the strategy's end-of-task work (buffer, Fisher pass, teacher), as
    # Avalanche's strategy.train() counts its after-experience plugins
    seq.seconds.append(round(seq.run.train_seconds + time.perf_counter() - ending, 3))


def end_of_task_epoch(seq: TaskSequence, task: Task, lr: float, logger: RunLogger) -> None:
    """Log a task's epoch (metrics.jsonl, TensorBoard, one stderr line), warn about new bad images."""
    run, train = seq.run, seq.cfg.train
    tr = run.stats
    note_bad_images(run, tr.bad, logger)
    if tr.nonfinite:
        logger.info(
            f"warning: skipped {tr.nonfinite} batch(es) with a non-finite loss (train.nonfinite=skip)"
        )
    logger.log(
        {
            "kind": "task_epoch",
            "epoch": seq.global_epoch(),
            "task": task.name,
            "task_epoch": run.epoch,
            **train_record(tr, lr),
            "bad_images": len(run.bad_files),
            "nonfinite_skipped": tr.nonfinite,
        },
        run.global_step,
    )
    warn(
        f"  {task.name} epoch {run.epoch}/{train.epochs}: loss {tr.loss:.4f} top1 {tr.top1:.2%} "
        f"({tr.images} images incl. replay, {tr.images_per_s:.0f} img/s, data wait {tr.data_wait_share:.0%}, "
        f"{tr.seconds:.1f}s)"
    )
    run.train_images, run.train_seconds = run.train_images + tr.images, run.train_seconds + tr.seconds
    run.epoch, run.stats = run.epoch + 1, EpochStats()


def finish(seq: TaskSequence, logger: RunLogger, joint: str | None) -> dict:
    """R.csv/R.json/R.png, metrics.json (metrics, sizes, times), the final model directory (ncm: with the
    prototype head, so that it predicts as R measured), the summary."""
    _, model_s, images = evaluate_tasks(seq, None)  # timed pass: inference ms/image
    with prototype_classifier(seq.model, seq.hooks.prototypes) as model:
        metrics = write_results(results_of(seq, model, model_s / max(images, 1)), seq.run_dir, joint)
    logger.log(
        {"kind": "summary", **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}},
        seq.run.global_step,
    )
    logger.close()
    gap = f", gap to joint {metrics['gap_to_joint']:+.3f}" if "gap_to_joint" in metrics else ""
    warn(
        f"done: ACC {metrics['ACC']:.3f}"
        + (
            f", BWT {metrics['BWT']:+.3f}, FWT {metrics['FWT']:+.3f}, over-all {metrics['overall']:.3f}"
            if metrics.get("BWT") is not None
            else ""
        )
        + f"{gap}; R, metrics.json and final/ in {seq.run_dir}"
        + (f"; {len(seq.run.bad_files)} bad images skipped" if seq.run.bad_files else "")
    )
    return metrics


def results_of(seq: TaskSequence, model, inference_s_per_image: float) -> LifelongResults:
    """What finish writes: the sequence's results with model (ncm: its prototype head in place) and the
    inference times (in evaluation batches, and batch 1)."""
    return LifelongResults(
        strategy=seq.cfg.lifelong.strategy,
        model_cfg=seq.cfg.model,
        names=[task.name for task in seq.tasks],
        classes=seq.classes,
        model=model,
        device=seq.ctx.device.type,
        preprocess=seq.pipeline.preprocess,
        buffer_stats=seq.hooks.buffer_stats(),
        R=seq.R,
        b=seq.b,
        seconds=seq.seconds,
        inference_s_per_image=inference_s_per_image,
        bad_images=len(seq.run.bad_files),
        inference_ms_batch1=batch1_latency_ms(seq),
    )
