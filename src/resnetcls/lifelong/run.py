"""`resnetcls lifelong`: train over a sequence of tasks and measure forgetting and transfer.

Top to bottom: tasks -> the run directory (engine.prepare.prepare_run, as `train`) -> loaders, model
(engine.prepare) -> accuracy on every task before training (b) -> for each task: grow the head if the task brings
classes, a fresh optimisation (engine.optim.build_optimization), its epochs through the engine's step loop
(engine.runner.run_epoch, the strategy's StepHooks), the strategy's end-of-task work, evaluation on every
task's test split (one row of R), a checkpoint -> R.csv/R.json/R.png, metrics.json, final/.
`joint` trains once on the union of the tasks (the upper bound) and gives one row.

So every train.*, log.*, ckpt.* and data.* setting means what it means for `train`: accumulation, EMA
(at the end of each task the weight average becomes the model: it is what R measures, what the strategy
remembers and what the next task starts from), compile, on_bad, step logs, TensorBoard, step checkpoints, and
the interrupt path (SIGINT/SIGTERM: saved, exit 130). The optimizer and schedule restart at every task (as in
Avalanche's default); each task seeds every RNG with seed + task index. Checkpoints are written at every task
boundary, at every epoch boundary inside a task and every ckpt.every_steps steps; those inside a task carry the
optimizer, schedule, scaler, EMA, the sampler's position, every RNG (engine.checkpoint.capture_state) and the
strategy's state (buffer, Fisher and anchor, LwF's teacher), so a run killed anywhere and resumed with
--resume auto reproduces the uninterrupted one bit for bit (CPU, train.deterministic=true).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, LifelongConfig, TrainConfig, config_to_dict, validate_config
from ..data.loader import known_bad_files
from ..data.sampler import ResumableSampler
from ..data.sources import Samples
from ..engine.checkpoint import Checkpointer, RunState, restore_state
from ..engine.log import RunLogger
from ..engine.loop import EpochStats, StepContext, evaluate
from ..engine.optim import build_loss, build_optimization
from ..engine.prepare import (
    DataPipeline,
    build_context,
    build_model,
    prepare_run,
    seed_everything,
    wrap_model,
)
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
from .hooks import StrategyHooks, grow_head
from .results import write_results
from .tasks import Task, build_tasks, known_classes


def warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def check_config(
    lc: LifelongConfig,
    data: str,
    t: TrainConfig | None = None,
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
        ("train.time_budget", t.time_budget if t else ""),
        ("train.patience", t.patience if t else 0),
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


def joint_task(tasks: list[Task]) -> Task:
    """All tasks' training images as one task (the joint upper bound)."""
    train = Samples(
        [p for t in tasks for p in t.train.paths],
        [l for t in tasks for l in t.train.labels],
        tasks[0].train.classes,
    )
    return Task("joint", train, tasks[0].test)


@dataclass
class TaskSequence:
    """A lifelong run being trained: what is fixed (config, tasks, loaders, model) and where it stands
    (R so far, b, train seconds per task, the task being trained, the engine's RunState)."""

    cfg: Config
    run_dir: Path
    env: dict
    tasks: list[Task]
    schedule: list[Task]  # what is trained: the tasks, or one joint task
    classes: list[str]
    ctx: StepContext
    pipeline: DataPipeline
    samplers: list  # one per scheduled task: its order depends only on (seed + index, epoch)
    train_loaders: list
    test_loaders: list
    model: object
    hooks: StrategyHooks
    R: list = field(default_factory=list)
    b: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    task: int = 0  # index into schedule of the task being (or next to be) trained
    run: RunState = field(default_factory=RunState)
    pending: dict | None = None  # a checkpoint from inside `task`, restored once its optimizer exists

    def head_size(self, index: int) -> int:
        joint = self.cfg.lifelong.strategy == "joint"
        return len(self.classes) if joint else known_classes(self.tasks, index)

    def global_epoch(self) -> int:
        """Epochs trained so far over the whole sequence, counting the current one (metrics.jsonl's epoch)."""
        return self.task * self.cfg.train.epochs + self.run.epoch

    def checkpointer(self, opt) -> Checkpointer:
        """Checkpoints with the sequence's state; opt=None between tasks (the next one starts afresh)."""

        def extra() -> tuple[dict, dict]:
            state = {
                "task": self.task,
                "in_task": opt is not None,
                "num_classes": self.model.fc.out_features,
                "strategy": self.hooks.state_dict(),
                "R": self.R,
                "b": self.b,
                "task_seconds": self.seconds,
            }
            return state, {"tasks_done": len(self.R)}

        t = self.cfg.train
        return Checkpointer(
            self.run_dir,
            self.cfg.ckpt,
            t.batch_size,
            config_to_dict(self.cfg),
            self.env,
            self.model,
            opt,
            extra,
        )


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
    trained = 0
    with StopRequest() as stop:
        while seq.task < len(seq.schedule):
            index, task = seq.task, seq.schedule[seq.task]
            warn(f"task {index + 1}/{len(seq.schedule)} {task.name}: {len(task.train)} train images")
            train_task(seq, logger, stop)
            row = evaluate_tasks(seq, logger)[0]
            seq.R.append(row)
            warn(f"  accuracy on every task: {' '.join(f'{a:.3f}' for a in row)}")
            closed = (
                seq.global_epoch() - 1
            )  # the last epoch of this task: numbered like its task_epoch record
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


def build_sequence(
    cfg: Config, run_dir: Path, env: dict, tasks: list[Task], classes: list[str]
) -> TaskSequence:
    """Loaders for every task (uint8 batches: replayed images join them before normalisation), checked for
    bad images before any training (data.on_bad=fail names them all), and the model with its first head."""
    t, d = cfg.train, cfg.data
    schedule = [joint_task(tasks)] if cfg.lifelong.strategy == "joint" else tasks
    ctx = build_context(t)
    pipeline = DataPipeline(d, t.batch_size, uint8_batches=True)
    samplers = [ResumableSampler(task.train.labels, d.sampler, t.seed + i) for i, task in enumerate(schedule)]
    train_loaders = [
        pipeline.train_loader(task.train, sampler, t.seed + i)
        for i, (task, sampler) in enumerate(zip(schedule, samplers))
    ]
    test_loaders = [pipeline.eval_loader(task.test) for task in tasks]
    known_bad_files(d.on_bad, *train_loaders, *test_loaders)
    seq = TaskSequence(
        cfg,
        run_dir,
        env,
        tasks,
        schedule,
        classes,
        ctx,
        pipeline,
        samplers,
        train_loaders,
        test_loaders,
        None,
        StrategyHooks(cfg.lifelong, t.seed),
    )
    seq.model = build_model(cfg.model, t, seq.head_size(0), ctx)
    return seq


def restore_sequence(seq: TaskSequence, state: dict, meta: dict) -> None:
    """Continue from a checkpoint: at a task boundary, or (a step checkpoint) inside a task."""
    extra = state["extra"]
    grow_head(seq.model, extra["num_classes"])
    seq.model.load_state_dict(state["model"])
    seq.hooks.load_state_dict(extra["strategy"], seq.model)
    seq.R, seq.b, seq.seconds = [list(r) for r in extra["R"]], list(extra["b"]), list(extra["task_seconds"])
    seq.task = extra["task"]
    # the epoch too (inside a task): the logger keeps the records of the task's epochs finished before the kill
    seq.run = RunState(
        epoch=state["epoch"] if extra["in_task"] else 1,
        global_step=state["global_step"],
        bad_files=dict(state["bad_files"]),
    )
    if extra["in_task"]:
        seq.pending = state
    where = (
        f"inside task {seq.task + 1} at epoch {state['epoch']} step {state['step_in_epoch']}"
        if extra["in_task"]
        else f"after task {seq.task}/{len(seq.schedule)}"
    )
    warn(f"resuming {seq.run_dir} {where} from {meta['file']}")


def train_task(seq: TaskSequence, logger: RunLogger, stop: StopRequest) -> None:
    """Train schedule[seq.task] for train.epochs epochs (or their rest, resumed) and do the strategy's end-of-task
    work; the task's train seconds go to seq.seconds."""
    cfg, t, index = seq.cfg, seq.cfg.train, seq.task
    task, loader, model = seq.schedule[index], seq.train_loaders[index], seq.model
    if seq.pending is None:
        seed_everything(t.seed + index, t.deterministic)
        seq.run = RunState(global_step=seq.run.global_step, bad_files=seq.run.bad_files)
    grow_head(model, seq.head_size(index))
    steps_per_epoch = math.ceil(len(loader) / max(1, t.grad_accum_steps))
    opt = build_optimization(model, cfg.optim, cfg.sched, t, steps_per_epoch, seq.ctx)
    loss_fn = build_loss(cfg.loss, model.fc.out_features, task.train.labels).to(seq.ctx.device)
    if seq.pending is None:
        seq.hooks.start_task(index, model)
    else:  # a step checkpoint inside this task: its optimizer, schedule, EMA, sampler position and RNGs
        seq.run, seq.pending = restore_state(seq.pending, model, opt), None
    step_model = wrap_model(model, seq.ctx, False, t.compile)
    ckpt = seq.checkpointer(opt)
    plan = StepPlan(t.epochs, steps_per_epoch, cfg.log.every_steps, cfg.ckpt.every_steps, t.nonfinite)
    run = seq.run
    while run.epoch <= t.epochs:
        seq.samplers[index].set_epoch(run.epoch, run.stats.batches * t.batch_size)
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
        if run.epoch <= t.epochs:  # an epoch boundary inside the task (the last one is the task's checkpoint)
            ckpt.save(run)
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
    )
    # the task's time: its epochs and the strategy's end-of-task work (buffer, Fisher pass, teacher), as Avalanche's
    # strategy.train() counts its after-experience plugins
    seq.seconds.append(round(run.train_seconds + time.perf_counter() - ending, 3))


def end_of_task_epoch(seq: TaskSequence, task: Task, lr: float, logger: RunLogger) -> None:
    """Log a task's epoch (metrics.jsonl, TensorBoard, one stderr line), warn about new bad images."""
    run, t = seq.run, seq.cfg.train
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
        f"  {task.name} epoch {run.epoch}/{t.epochs}: loss {tr.loss:.4f} top1 {tr.top1:.2%} "
        f"({tr.images} images incl. replay, {tr.images_per_s:.0f} img/s, data wait {tr.data_wait_share:.0%}, "
        f"{tr.seconds:.1f}s)"
    )
    run.train_images, run.train_seconds = run.train_images + tr.images, run.train_seconds + tr.seconds
    run.epoch, run.stats = run.epoch + 1, EpochStats()


def seen_accuracy(seq: TaskSequence, row: list[float]) -> float:
    """Mean accuracy over the tasks trained so far (all of them for joint)."""
    seen = len(row) if seq.cfg.lifelong.strategy == "joint" else seq.task + 1
    return sum(row[:seen]) / seen


def evaluate_tasks(seq: TaskSequence, logger: RunLogger | None) -> tuple[list[float], float, int]:
    """Top-1 on every task's test split; also the model's own seconds (without data waiting) and images."""
    row, seconds, images = [], 0.0, 0
    for loader in seq.test_loaders:
        stats = evaluate(seq.model, loader, None, seq.ctx)
        if logger is not None:
            note_bad_images(seq.run, stats.bad, logger)
        row.append(stats.top1)
        seconds, images = seconds + stats.seconds - stats.data_wait_s, images + stats.images
    return row, seconds, images


def finish(seq: TaskSequence, logger: RunLogger, joint: str | None) -> dict:
    """R.csv/R.json/R.png, metrics.json (metrics, sizes, times), the final model directory, the summary."""
    _, model_s, images = evaluate_tasks(seq, None)  # timed pass: inference ms/image
    metrics = write_results(
        seq.cfg.lifelong.strategy,
        seq.cfg.model,
        seq.run_dir,
        [task.name for task in seq.tasks],
        seq.classes,
        seq.model,
        seq.ctx.device.type,
        seq.pipeline.preprocess,
        seq.hooks.buffer_stats(),
        seq.R,
        seq.b,
        seq.seconds,
        model_s / max(images, 1),
        joint,
        len(seq.run.bad_files),
    )
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
