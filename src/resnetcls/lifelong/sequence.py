"""A lifelong run's task sequence being trained (TaskSequence): what is fixed (config, tasks, loaders, model)
and where it stands (the accuracy matrix R so far, b, train seconds per task, the engine's RunState); built
from the tasks, restored from a checkpoint, and evaluated on every task's test split."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config, config_to_dict
from ..data.loader import known_bad_files
from ..data.sampler import ResumableSampler
from ..data.sources import Samples
from ..engine.checkpoint import Checkpointer, RunState
from ..engine.log import RunLogger
from ..engine.loop import StepContext, evaluate
from ..engine.prepare import DataPipeline, build_context, build_model
from ..engine.runner import note_bad_images
from .hooks import StrategyHooks, grow_head
from .ncm import prototype_classifier
from .tasks import Task, known_classes


def warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def joint_task(tasks: list[Task]) -> Task:
    """All tasks' training images as one task (the joint upper bound)."""
    train = Samples(
        [path for task in tasks for path in task.train.paths],
        [label for task in tasks for label in task.train.labels],
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
        """Epochs trained so far over the whole sequence, counting the current one (metrics.jsonl's
        epoch)."""
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

        return Checkpointer(
            self.run_dir,
            self.cfg.ckpt,
            self.cfg.train.batch_size,
            config_to_dict(self.cfg),
            self.env,
            self.model,
            opt,
            extra,
        )


def build_sequence(
    cfg: Config, run_dir: Path, env: dict, tasks: list[Task], classes: list[str]
) -> TaskSequence:
    """Loaders for every task (uint8 batches: replayed images join them before normalisation), checked for
    bad images before any training (data.on_bad=fail names them all), and the model with its first head."""
    train, data = cfg.train, cfg.data
    schedule = [joint_task(tasks)] if cfg.lifelong.strategy == "joint" else tasks
    ctx = build_context(train)
    pipeline = DataPipeline(data, train.batch_size, uint8_batches=True)
    samplers = [
        ResumableSampler(task.train.labels, data.sampler, train.seed + i) for i, task in enumerate(schedule)
    ]
    train_loaders = [
        pipeline.train_loader(task.train, sampler, train.seed + i)
        for i, (task, sampler) in enumerate(zip(schedule, samplers))
    ]
    test_loaders = [pipeline.eval_loader(task.test) for task in tasks]
    known_bad_files(data.on_bad, *train_loaders, *test_loaders)
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
        StrategyHooks(cfg.lifelong, train.seed),
    )
    seq.model = build_model(cfg.model, train, seq.head_size(0), ctx)
    return seq


def restore_sequence(seq: TaskSequence, state: dict, meta: dict) -> None:
    """Continue from a checkpoint: at a task boundary, or (a step checkpoint) inside a task."""
    extra = state["extra"]
    grow_head(seq.model, extra["num_classes"])
    seq.model.load_state_dict(state["model"])
    seq.hooks.load_state_dict(extra["strategy"], seq.model)
    seq.R, seq.b, seq.seconds = [list(r) for r in extra["R"]], list(extra["b"]), list(extra["task_seconds"])
    seq.task = extra["task"]
    # the epoch too (inside a task): the logger keeps the records of the task's epochs finished before the
    # kill
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


def seen_accuracy(seq: TaskSequence, row: list[float]) -> float:
    """Mean accuracy over the tasks trained so far (all of them for joint)."""
    seen = len(row) if seq.cfg.lifelong.strategy == "joint" else seq.task + 1
    return sum(row[:seen]) / seen


def evaluate_tasks(seq: TaskSequence, logger: RunLogger | None) -> tuple[list[float], float, int]:
    """Top-1 on every task's test split (ncm: by the nearest prototype, once there are prototypes); also the
    model's own seconds (without data waiting) and images."""
    row, seconds, images = [], 0.0, 0
    with prototype_classifier(seq.model, seq.hooks.prototypes) as model:
        for loader in seq.test_loaders:
            stats = evaluate(model, loader, None, seq.ctx)
            if logger is not None:
                note_bad_images(seq.run, stats.bad, logger)
            row.append(stats.top1)
            seconds, images = seconds + stats.seconds - stats.data_wait_s, images + stats.images
    return row, seconds, images


def batch1_latency_ms(seq: TaskSequence, repeats: int = 7) -> float:
    """The model's time for one image (batch 1, eval mode, the run's precision and memory format): the median
    of `repeats` timed forward passes after two warm-up passes (ncm: through its prototype head)."""
    size = seq.pipeline.preprocess["image_size"]
    image = seq.ctx.to_device(torch.zeros(1, 3, size, size))
    times = []
    with prototype_classifier(seq.model, seq.hooks.prototypes) as model, torch.inference_mode():
        was_training = model.training
        model.eval()
        for i in range(repeats + 2):
            start = time.perf_counter()
            with seq.ctx.autocast():
                model(image)
            if image.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - start)
        model.train(was_training)
    return 1000 * statistics.median(times)
