"""`resnetcls lifelong`: train over a sequence of tasks and measure forgetting and transfer.

Top to bottom: tasks -> model (engine.train.build_training) -> accuracy on every task before training (b)
-> for each task: grow the head if the task brings classes, train its epochs with the strategy's hooks,
evaluate on every task's test split (one row of R), checkpoint -> R.csv/R.json/R.png, metrics.json, final/.
`joint` trains once on the union of the tasks (the upper bound) and gives one row.

The optimizer and schedule restart at every task (as in Avalanche's default), so a checkpoint at a task
boundary (model, strategy state, R so far) is all a resume needs; each task seeds every RNG with
seed + task index, so a resumed run reproduces the uninterrupted one.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ..atomic import csv_text, write_text_atomic
from ..config import Config, config_to_dict, dump_yaml
from ..data.cache import resolve_cache_dir
from ..data.loader import build_loader
from ..data.sampler import ResumableSampler
from ..data.sources import Samples
from ..data.transforms import build_eval_batch_transform, build_train_transform, make_preprocess
from ..engine.checkpoint import environment_info, prune_checkpoints, save_checkpoint
from ..engine.loop import EpochStats, Optimization, StepContext, evaluate
from ..engine.optim import build_loss, build_optimizer, build_scheduler
from ..engine.train import arch_args, build_training, find_resume, seed_everything
from ..errors import UserError
from ..modelfile import save_model_dir
from .hooks import STRATEGIES, StrategyHooks, grow_head
from .metrics import continual_metrics
from .tasks import Task, build_tasks, known_classes


def warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Data:
    """Loaders for the tasks: uint8 training batches (the step loop finishes them, after mixing in replayed
    images), evaluation batches per task test split, all through the decoded cache."""

    def __init__(self, cfg: Config) -> None:
        d = cfg.data
        self.cfg = cfg
        self.preprocess = make_preprocess(d.image_size, d.resize_size, d.augment, d.interpolation, d.mean, d.std)
        self.train_tf = build_train_transform(self.preprocess, d.augment, d.min_crop_scale, d.color_jitter,
                                              d.cache_size)
        self.eval_tf = build_eval_batch_transform(self.preprocess, d.cache_size)
        self.cache_dir = resolve_cache_dir(d.cache_dir) if d.cache else None

    def train_loader(self, samples: Samples, seed: int, epoch: int):
        b = self.cfg.train.batch_size
        sampler = ResumableSampler(samples.labels, self.cfg.data.sampler, seed)
        sampler.set_epoch(epoch)
        loader = build_loader(samples, self.train_tf, b, shuffle=False, num_workers=self.cfg.data.num_workers,
                              seed=seed, drop_last=len(samples) > b, sampler=sampler, cache_dir=self.cache_dir,
                              on_bad=self.cfg.data.on_bad)
        loader.finish = None  # keep uint8: replayed uint8 images join the batch before normalisation
        return loader

    def eval_loader(self, samples: Samples, finish: bool = True):
        loader = build_loader(samples, self.eval_tf, self.cfg.train.batch_size, shuffle=False,
                              num_workers=self.cfg.data.num_workers, cache_dir=self.cache_dir,
                              on_bad=self.cfg.data.on_bad)
        if not finish:
            loader.finish = None
        return loader


def make_optimization(cfg: Config, model, steps_per_epoch: int, ctx: StepContext) -> Optimization:
    """A fresh optimizer and schedule for one task (the head may have grown since the last one)."""
    optimizer = build_optimizer(model, cfg.optim)
    return Optimization(optimizer, build_scheduler(optimizer, cfg.sched, steps_per_epoch, cfg.train.epochs),
                        torch.amp.GradScaler(ctx.device.type, enabled=ctx.amp_dtype == torch.float16),
                        None, 1, cfg.train.grad_clip_norm)


def train_epoch(model, loader, finish, opt: Optimization, loss_fn, ctx: StepContext, hooks: StrategyHooks
                ) -> EpochStats:
    """One epoch of the lifelong step: batch (+ replayed images) -> loss (+ the strategy's term) -> step.
    One precision path: autocast/GradScaler with enabled=, as in engine/loop.py."""
    model.train()
    stats, start = EpochStats(), time.perf_counter()
    for batch in loader:
        stats.bad += batch["bad"]
        if batch["images"] is None:
            continue
        raw, labels = batch["images"], batch["labels"]
        replayed = hooks.replay(len(labels))
        if replayed is not None:
            raw, labels = torch.cat([raw, replayed[0]]), torch.cat([labels, replayed[1]])
        images, labels = ctx.to_device(finish(raw)), labels.to(ctx.device)
        with ctx.autocast():
            logits = model(images)
            loss = loss_fn(logits, labels)
            extra = hooks.extra_loss(model, images, logits)
            if extra is not None:
                loss = loss + extra
        opt.backward(loss)
        opt.step(model)
        stats.add(loss, logits, labels)
        stats.steps += 1
    stats.seconds = time.perf_counter() - start
    return stats


def evaluate_tasks(model, loaders: list, ctx: StepContext) -> tuple[list[float], float, int]:
    """Top-1 on every task's test split; also the model's own seconds (without data waiting) and images."""
    row, seconds, images = [], 0.0, 0
    for loader in loaders:
        stats = evaluate(model, loader, None, ctx)
        row.append(stats.top1)
        seconds, images = seconds + stats.seconds - stats.data_wait_s, images + stats.images
    return row, seconds, images


def train_task(cfg: Config, index: int, task: Task, model, ctx: StepContext, data: Data,
               hooks: StrategyHooks) -> float:
    """Train one task (all its epochs) and run the strategy's end-of-task work; returns train seconds."""
    t = cfg.train
    seed = t.seed + index
    num_classes = model.fc.out_features
    loss_fn = build_loss(cfg.loss, num_classes, task.train.labels).to(ctx.device)
    steps = len(task.train) // t.batch_size if len(task.train) > t.batch_size else 1  # drop_last, as loaded
    opt = make_optimization(cfg, model, steps, ctx)
    hooks.start_task(index, model)
    started = time.perf_counter()
    for epoch in range(1, t.epochs + 1):
        stats = train_epoch(model, data.train_loader(task.train, seed, epoch), data.train_tf.finish, opt,
                            loss_fn, ctx, hooks)
        warn(f"  {task.name} epoch {epoch}/{t.epochs}: loss {stats.loss:.4f} top1 {stats.top1:.2%} "
             f"({stats.images} images incl. replay, {stats.seconds:.1f}s)")
    seconds = time.perf_counter() - started
    stored = lambda: ((b["images"], b["labels"]) for b in data.eval_loader(task.train, finish=False)
                      if b["images"] is not None)
    normalised = lambda: ((ctx.to_device(b["images"]), b["labels"].to(ctx.device))
                          for b in data.eval_loader(task.train) if b["images"] is not None)
    hooks.end_task(model, stored, normalised, loss_fn)
    return seconds


def check_config(cfg: Config) -> None:
    lc, t = cfg.lifelong, cfg.train
    if lc.strategy not in STRATEGIES:
        raise UserError(f"lifelong.strategy={lc.strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if t.epochs < 1 or t.batch_size < 1:
        raise UserError(f"train.epochs={t.epochs}, train.batch_size={t.batch_size}: both must be at least 1")
    if lc.strategy == "replay" and lc.buffer_size < 1:
        raise UserError(f"lifelong.buffer_size={lc.buffer_size}: replay needs at least 1 image")
    if not cfg.data.train and not lc.datasets:
        raise UserError("lifelong: DATA is required")


def joint_task(tasks: list[Task]) -> Task:
    """All tasks' training images as one task (the joint upper bound)."""
    train = Samples([p for t in tasks for p in t.train.paths], [l for t in tasks for l in t.train.labels],
                    tasks[0].train.classes)
    return Task("joint", train, tasks[0].test)


def run_lifelong(cfg: Config, out_dir: str | Path, resume: str | None = None, force: bool = False,
                 joint: str | None = None, stop_after: int = 0) -> dict | None:
    """Run the task sequence into out_dir; return metrics.json's content (None when stopped early by
    stop_after: continue with resume="auto")."""
    check_config(cfg)
    lc, t = cfg.lifelong, cfg.train
    if not cfg.data.train:
        cfg.data.train = lc.datasets[0]
    run_dir = Path(out_dir if resume in (None, "auto") else resume)
    resumed = find_resume(resume, run_dir, cfg, force)
    tasks, classes = build_tasks(cfg)  # bad task settings fail before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", dump_yaml(cfg))
    write_text_atomic(run_dir / "environment.json", json.dumps(environment_info(), indent=2) + "\n")
    seed_everything(t.seed, t.deterministic)
    schedule = [joint_task(tasks)] if lc.strategy == "joint" else tasks
    first_classes = len(classes) if lc.strategy == "joint" else known_classes(tasks, 0)
    ctx, model, _, _ = build_training(cfg, first_classes, 1, tasks[0].train.labels)
    data, hooks = Data(cfg), StrategyHooks(lc, t.seed)
    test_loaders = [data.eval_loader(task.test) for task in tasks]
    warn(f"lifelong: {lc.strategy}, {len(tasks)} tasks ({', '.join(f'{x.name}: {len(x.train)}/{len(x.test)}' for x in tasks)}"
         f" train/test images), {len(classes)} classes, {cfg.model.name} on {ctx.device.type}")
    if resumed is not None:
        state = resumed[0]
        grow_head(model, state["num_classes"])
        model.load_state_dict(state["model"])
        hooks.load_state_dict(state["strategy"], model)
        R, b, seconds = [list(r) for r in state["R"]], list(state["b"]), list(state["task_seconds"])
        warn(f"resuming {run_dir} after task {len(R)}/{len(schedule)} from {resumed[1]['file']}")
    else:
        b, _, _ = evaluate_tasks(model, test_loaders, ctx)
        R, seconds = [], []
    trained = 0
    for index in range(len(R), len(schedule)):
        seed_everything(t.seed + index, t.deterministic)
        task = schedule[index]
        grow_head(model, len(classes) if lc.strategy == "joint" else known_classes(tasks, index))
        warn(f"task {index + 1}/{len(schedule)} {task.name}: {len(task.train)} train images")
        seconds.append(round(train_task(cfg, index, task, model, ctx, data, hooks), 3))
        row, _, _ = evaluate_tasks(model, test_loaders, ctx)
        R.append(row)
        warn(f"  accuracy on every task: {' '.join(f'{a:.3f}' for a in row)}")
        save_task_checkpoint(run_dir, cfg, model, hooks, R, b, seconds)
        trained += 1
        if stop_after and trained >= stop_after and index + 1 < len(schedule):
            warn(f"stopped after task {index + 1} (--stop-after {stop_after}); continue with --resume auto")
            return None
    return finish(cfg, run_dir, tasks, classes, model, ctx, data, hooks, test_loaders, R, b, seconds, joint)


def save_task_checkpoint(run_dir: Path, cfg: Config, model, hooks: StrategyHooks, R, b, seconds) -> None:
    """Atomic checkpoint at a task boundary (engine/checkpoint.py's format: tensors and plain values only)."""
    state = {"global_step": len(R), "model": model.state_dict(), "num_classes": model.fc.out_features,
             "strategy": hooks.state_dict(), "R": R, "b": b, "task_seconds": seconds}
    save_checkpoint(run_dir / "checkpoints", state, {"tasks_done": len(R), "config": config_to_dict(cfg),
                                                     "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    prune_checkpoints(run_dir / "checkpoints", cfg.ckpt.keep_last, cfg.ckpt.metric)


def summarize(R: list[list[float]], b: list[float], strategy: str, joint: str | None) -> dict:
    """continual_metrics for a sequence (square R); mean accuracy for joint (one row); gap to a joint run."""
    if strategy == "joint":
        out = {"tasks": len(R[0]), "ACC": sum(R[-1]) / len(R[-1]), "per_task": R[-1]}
    else:
        out = continual_metrics(R, b)
    if joint:
        path = Path(joint) / "metrics.json"
        if not path.is_file():
            raise UserError(f"--joint {joint}: no metrics.json (run `resnetcls lifelong ... --strategy joint` "
                            f"--out {joint} first)")
        ref = json.loads(path.read_text(encoding="utf-8"))
        out["joint_ACC"], out["gap_to_joint"] = ref["ACC"], ref["ACC"] - out["ACC"]
    return out


def finish(cfg: Config, run_dir: Path, tasks, classes, model, ctx, data, hooks, test_loaders, R, b, seconds,
           joint) -> dict:
    """R.csv/R.json/R.png, metrics.json (metrics, sizes, times), the final model directory."""
    from ..figures import accuracy_matrix_heatmap
    _, model_s, images = evaluate_tasks(model, test_loaders, ctx)  # timed pass: inference ms/image
    names = [task.name for task in tasks]
    metrics = summarize(R, b, cfg.lifelong.strategy, joint)
    n_params = sum(p.numel() for p in model.parameters())
    state_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    metrics.update({"strategy": cfg.lifelong.strategy, "task_names": names, "R": R, "b": b,
                    "train_seconds_per_task": seconds, "train_seconds": round(sum(seconds), 3),
                    **hooks.buffer_stats(), "model_params": n_params, "model_mb": round(state_bytes / 1e6, 3),
                    "inference_ms_per_image": round(1000 * model_s / max(images, 1), 4),
                    "device": ctx.device.type, "classes": len(classes)})
    rows = [("before", b)] + [(names[i] if cfg.lifelong.strategy != "joint" else "joint", r)
                              for i, r in enumerate(R)]
    write_text_atomic(run_dir / "R.csv", csv_text([["after", *names]]
                                                  + [[name, *[f"{a:.6f}" for a in row]] for name, row in rows]))
    write_text_atomic(run_dir / "R.json", json.dumps({"tasks": names, "b": b, "R": R}, indent=1) + "\n")
    accuracy_matrix_heatmap(R, b, names, [n for n, _ in rows[1:]], run_dir / "R.png",
                            f"{cfg.lifelong.strategy}: accuracy after each task")
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    save_model_dir(run_dir / "final", model, cfg.model.name, arch_args(cfg), classes, data.preprocess,
                   {"ACC": metrics["ACC"]})
    gap = f", gap to joint {metrics['gap_to_joint']:+.3f}" if "gap_to_joint" in metrics else ""
    warn(f"done: ACC {metrics['ACC']:.3f}"
         + (f", BWT {metrics['BWT']:+.3f}, FWT {metrics['FWT']:+.3f}" if metrics.get("BWT") is not None else "")
         + f"{gap}; R, metrics.json and final/ in {run_dir}")
    return metrics
