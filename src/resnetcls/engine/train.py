"""train(cfg, out_dir): the whole training flow, top to bottom.

Under torchrun every rank runs this same flow (engine/distributed.py joins the process group); only rank 0
(distributed.is_main) prints, logs and writes checkpoints and model directories.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..atomic import write_text_atomic
from ..config import Config, config_to_dict, dump_yaml, load_yaml, result_affecting_changes, validate_config
from ..data.cache import resolve_cache_dir
from ..data.loader import build_loader, known_bad_files
from ..data.sampler import ResumableSampler
from ..data.sources import load_splits, write_split_csv
from ..data.transforms import build_eval_batch_transform, build_train_transform, make_preprocess
from ..errors import UserError
from ..hardware import pick_device, precision_name, resolve_amp
from ..modelfile import save_model_dir
from ..models import create_model
from ..models.pretrained import load_pretrained
from . import distributed
from .checkpoint import (RunState, capture_state, environment_info, list_checkpoints, load_latest,
                         prune_checkpoints, restore_state, save_checkpoint)
from .log import RunLogger
from .loop import EpochStats, NonFiniteLoss, Optimization, StepContext, train_one_epoch
from .optim import build_ema, build_loss, build_optimizer, build_scheduler

METRICS = ("val_top1", "val_top5", "val_loss")


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived and a resumable checkpoint was saved (the CLI exits with 130)."""


class StopRequest:
    """SIGINT/SIGTERM set a flag that the loop checks after every step; a second SIGINT stops at once."""

    def __init__(self) -> None:
        self.requested, self.previous = False, {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def warn(text: str) -> None:
    if distributed.is_main():  # every rank sees the same warnings; one copy is enough
        print(text, file=sys.stderr, flush=True)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
    torch.use_deterministic_algorithms(deterministic)  # both ways: a later run in this process may differ
    torch.backends.cudnn.benchmark = not deterministic


def arch_args(cfg: Config) -> dict:
    """The ResNet constructor arguments recorded in model.json."""
    m = cfg.model
    return {"stem": m.stem, "stride_on_1x1": m.stride_on_1x1, "zero_init_residual": m.zero_init_residual,
            "width": m.width}


def saved_run_config(run_dir: str | Path) -> dict:
    """A run directory's resolved config (for `train --resume RUN_DIR` without DATA)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml); give DATA to start a new run")
    return load_yaml(path)


def find_resume(resume: str | None, run_dir: Path, cfg: Config, force: bool) -> tuple[dict, dict] | None:
    """The checkpoint to continue from (None: a new run). Refuses a changed result-affecting config."""
    ckpt_dir = run_dir / "checkpoints"
    if resume is None:
        if ckpt_dir.is_dir() and any(ckpt_dir.glob("step-*.json")):
            raise UserError(f"{run_dir}: already holds checkpoints of an earlier run; continue it with "
                            f"--resume auto, or choose another --out")
        return None
    found = load_latest(ckpt_dir, warn)
    if found is None:
        if resume != "auto":
            raise UserError(f"{run_dir}: no complete checkpoint in {ckpt_dir} to resume from")
        warn(f"no checkpoint in {ckpt_dir}: starting a new run")
        return None
    changes = result_affecting_changes(found[1]["config"], cfg)
    if changes and not force:
        raise UserError(f"{run_dir}: refusing to resume with settings that change the result ("
                        + "; ".join(changes) + "); use the run's settings, or --force to resume anyway")
    for change in changes:
        warn(f"warning: resuming with a changed setting (--force): {change}")
    return found


def build_data(cfg: Config):
    """Sources -> decoded cache -> uint8 transforms -> loaders. The training order depends only on
    (seed, epoch) via the sampler. Bad files: skipped and counted, or (data.on_bad=fail) all named here,
    before training starts."""
    d, t = cfg.data, cfg.train
    splits = load_splits(d.train, d.val, d.val_fraction, t.seed, d.split_by, d.batches)
    if len(splits.classes) < 2:  # one class would train to a meaningless 100%
        raise UserError(f"{d.train}: only one class ({splits.classes[0]!r}); a classifier needs at least two")
    preprocess = make_preprocess(d.image_size, d.resize_size, d.augment, d.interpolation, d.mean, d.std)
    cache_dir = resolve_cache_dir(d.cache_dir) if d.cache else None
    world = distributed.world_from_env()  # under torchrun each rank reads its own share, batch_size each
    sampler = ResumableSampler(splits.train.labels, d.sampler, t.seed, world.rank, world.size)
    train_loader = build_loader(splits.train, build_train_transform(preprocess, d.augment, d.min_crop_scale,
                                                                    d.color_jitter, d.cache_size),
                                t.batch_size, shuffle=False, num_workers=d.num_workers, seed=t.seed,
                                drop_last=len(sampler) > t.batch_size, sampler=sampler,
                                cache_dir=cache_dir, on_bad=d.on_bad, start_method=d.worker_start,
                                cache_max_gb=d.cache_max_gb)
    # Validation: indices rank, rank + world, ...: every image on exactly one rank, no padding repeats.
    val_loader = build_loader(splits.val, build_eval_batch_transform(preprocess, d.cache_size), t.batch_size,
                              shuffle=False, num_workers=d.num_workers, cache_dir=cache_dir, on_bad=d.on_bad,
                              sampler=range(world.rank, len(splits.val), world.size), start_method=d.worker_start,
                              cache_max_gb=d.cache_max_gb)
    known_bad_files(d.on_bad, train_loader, val_loader)
    return splits, preprocess, sampler, train_loader, val_loader


def build_training(cfg: Config, num_classes: int, steps_per_epoch: int, train_labels: list[int],
                   device_name: str | None = None):
    """Device, precision (one code path: autocast and GradScaler with enabled=), model, optimisation, loss.
    device_name overrides train.device (torchrun: this rank's cuda:LOCAL_RANK)."""
    t = cfg.train
    device = pick_device(device_name or t.device)
    ctx = StepContext(device, resolve_amp(t.amp, device), t.channels_last)
    model = create_model(cfg.model.name, num_classes, **arch_args(cfg))
    if t.pretrained:
        load_pretrained(model, t.pretrained, cfg.model.name)  # logs what it loaded to stderr
    if t.sync_bn and distributed.world_from_env().distributed:
        if device.type != "cuda":
            raise UserError("train.sync_bn=true: PyTorch's SyncBatchNorm runs on CUDA only; "
                            "use --set train.sync_bn=false on CPU")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # before the EMA copy and the optimizer
    model = model.to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    opt = Optimization(optimizer, build_scheduler(optimizer, cfg.sched, steps_per_epoch, t.epochs),
                       torch.amp.GradScaler(device.type, enabled=ctx.amp_dtype == torch.float16),
                       build_ema(model, t.ema_decay), max(1, t.grad_accum_steps), t.grad_clip_norm)
    loss_fn = build_loss(cfg.loss, num_classes, train_labels).to(device)
    return ctx, model, opt, loss_fn


class Checkpointer:
    """Saves the run's state (atomically, keep-last-K + best) with its config and environment."""

    def __init__(self, run_dir: Path, cfg: Config, env: dict, model, opt: Optimization) -> None:
        self.dir, self.cfg, self.env, self.model, self.opt = run_dir / "checkpoints", cfg, env, model, opt

    def save(self, run: RunState, metrics: dict | None = None) -> Path | None:
        if not distributed.is_main():
            return None
        info = {"epoch": run.epoch, "step_in_epoch": run.stats.steps, "global_step": run.global_step,
                "metrics": metrics, "config": config_to_dict(self.cfg), "env": self.env,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        state = capture_state(run, self.model, self.opt, self.cfg.train.batch_size)
        path = save_checkpoint(self.dir, {**state, "config": info["config"], "env": self.env}, info)
        prune_checkpoints(self.dir, self.cfg.ckpt.keep_last, self.cfg.ckpt.metric)
        return path


def train(cfg: Config, out_dir: str | Path, resume: str | None = None, force: bool = False) -> dict:
    """Train cfg.model on cfg.data; write the run directory; return the end-of-run summary.

    resume: None (a new run), "auto" (the newest complete checkpoint in out_dir, if any) or a run directory.
    Under torchrun (RANK/WORLD_SIZE set) each process trains its share with DistributedDataParallel.
    """
    world, device_name = distributed.setup(cfg.train.device, cfg.train.dist_timeout_s)
    try:
        return _train(cfg, out_dir, resume, force, world, device_name)
    finally:
        distributed.cleanup()


def _train(cfg: Config, out_dir: str | Path, resume: str | None, force: bool, world: distributed.World,
           device_name: str) -> dict:
    t, writes = cfg.train, world.is_main
    if not cfg.data.train:
        raise UserError("train: DATA is required (or --resume RUN_DIR to continue a run)")
    validate_config(cfg)  # ranges, before anything is written
    if cfg.ckpt.metric not in METRICS:
        raise UserError(f"ckpt.metric={cfg.ckpt.metric!r}: expected one of {', '.join(METRICS)}")
    # Recorded as absolute paths, so `train --resume RUN_DIR` without DATA works from any working directory.
    cfg.data.train, cfg.data.val = (str(Path(p).absolute()) if p else p for p in (cfg.data.train, cfg.data.val))
    run_dir = Path(out_dir if resume in (None, "auto") else resume)
    resumed = find_resume(resume, run_dir, cfg, force)
    env = environment_info()
    if writes:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", dump_yaml(cfg))
        write_text_atomic(run_dir / "environment.json", json.dumps(env, indent=2) + "\n")
    seed_everything(t.seed, t.deterministic)

    splits, preprocess, sampler, train_loader, val_loader = build_data(cfg)
    classes, steps_per_epoch = splits.classes, math.ceil(len(train_loader) / max(1, t.grad_accum_steps))
    ctx, model, opt, loss_fn = build_training(cfg, len(classes), steps_per_epoch, splits.train.labels,
                                              device_name)
    normalise_on_device(ctx, train_loader, val_loader)
    step_model = model
    if world.distributed:  # gradients all-reduced (averaged) in backward; rank 0's initial weights broadcast
        step_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=False)
    step_model = torch.compile(step_model) if t.compile else step_model
    # Checkpoints, EMA and model directories hold the unwrapped module (no "module." prefixes).
    eval_model = opt.ema.module if opt.ema is not None else model  # with EMA, the average is what we ship
    save_model = lambda name, metrics: writes and save_model_dir(
        run_dir / name, eval_model, cfg.model.name, arch_args(cfg), classes, preprocess, metrics)

    run = RunState()
    if resumed is not None:
        run = restore_state(resumed[0], model, opt)
        warn(f"resuming {run_dir} at epoch {run.epoch} step {run.stats.steps}/{steps_per_epoch} "
             f"(global step {run.global_step}) from {resumed[1]['file']}")
    logger = RunLogger(run_dir, cfg.log.tensorboard, run.global_step if resumed else None, writes, run.epoch)
    logger.info(f"resnetcls {__version__}: {cfg.model.name}, {len(classes)} classes, "
                f"{len(splits.train)} train / {len(splits.val)} val images, {ctx.device.type} "
                f"{precision_name(ctx.amp_dtype)}{' channels_last' if t.channels_last else ''}"
                f"{' compiled' if t.compile else ''}, {steps_per_epoch} steps/epoch"
                + (f", {world.size} processes x batch {t.batch_size}" if world.distributed else ""))
    if writes:
        write_split_csv(splits, run_dir / "split.csv")
        logger.info(f"split written to {run_dir / 'split.csv'}")
    for kind, paths in splits.ignored.items():
        if paths:
            logger.info(f"note: ignored {len(paths)} {kind.replace('_', ' ')} file(s) in DATA, e.g. {paths[0]}")
    ckpt = Checkpointer(run_dir, cfg, env, model, opt)
    metrics = resumed[1].get("metrics") if resumed else None  # a finished run resumed has nothing to train
    started = time.perf_counter()
    with StopRequest() as stop:
        while run.epoch <= t.epochs:
            epoch = run.epoch
            sampler.set_epoch(epoch, run.stats.batches * t.batch_size)
            if not run_epoch(cfg, run, step_model, train_loader, opt, loss_fn, ctx, logger, ckpt, stop,
                             steps_per_epoch):
                stop_run(logger, f"interrupted at epoch {epoch} step {run.stats.steps}: saved {ckpt.save(run)}",
                         run_dir)
            va, confusion = distributed.evaluate_sharded(eval_model, val_loader, loss_fn, ctx, len(classes),
                                                         stop=lambda: stop.requested)
            if va.interrupted:  # the epoch's training is complete: a resume goes straight to its validation
                stop_run(logger, f"interrupted during validation of epoch {epoch}: saved {ckpt.save(run)}",
                         run_dir)
            metrics = end_of_epoch(run, va, opt.lr, cfg.ckpt.metric, logger, t.epochs, confusion)
            if run.best_epoch == epoch:
                save_model("best", metrics)
            run.epoch, run.stats = epoch + 1, EpochStats()
            ckpt.save(run, metrics)
            if distributed.any_rank(stop.requested) and run.epoch <= t.epochs:
                stop_run(logger, f"interrupted after epoch {epoch}", run_dir)
    save_model("final", metrics)
    distributed.barrier()  # every rank reads best/ in finish() only once rank 0 has written it
    summary = finish(run, metrics, cfg.ckpt.metric, time.perf_counter() - started, run_dir, ctx, logger)
    return summary


def stop_run(logger: RunLogger, text: str, run_dir: Path) -> None:
    """Say where the run stopped and how to continue, flush the logs (TensorBoard), exit with 130."""
    logger.info(f"{text}; continue with --resume {run_dir}")
    logger.close()
    raise TrainingInterrupted(str(run_dir))


def normalise_on_device(ctx: StepContext, *loaders) -> None:
    """On a GPU the loaders ship uint8 batches and the normalisation runs on the device (loop's to_device):
    measured 2672 vs 1659 images/s for ResNet-50 on an H100 (bench/gpu_train_throughput.py --quick)."""
    if ctx.device.type == "cuda":
        for loader in loaders:
            loader.device_finish, loader.finish = loader.finish, None


def run_epoch(cfg: Config, run: RunState, model, loader, opt: Optimization, loss_fn, ctx: StepContext,
              logger: RunLogger, ckpt: Checkpointer, stop: StopRequest, steps_per_epoch: int) -> bool:
    """Train the rest of run.epoch with the progress bar, step logging and step checkpoints.
    False when a stop was requested (the state is then at a clean step boundary)."""
    bar = logger.progress(run.epoch, cfg.train.epochs, steps_per_epoch, run.stats.steps)

    def after_step(stats: EpochStats) -> bool:
        run.global_step += 1
        bar.update(stats.loss, opt.lr, stats.images_per_s, stats.data_wait_share)
        if cfg.log.every_steps and run.global_step % cfg.log.every_steps == 0:
            logger.log({"kind": "train", "epoch": run.epoch, **train_record(stats, opt.lr)}, run.global_step)
        if cfg.ckpt.every_steps and run.global_step % cfg.ckpt.every_steps == 0:
            ckpt.save(run)
        return distributed.any_rank(stop.requested)  # all ranks stop at the same step, or none does

    try:
        return train_one_epoch(model, loader, opt, loss_fn, ctx, run.stats, after_step, cfg.train.nonfinite,
                               distributed.any_rank)
    except NonFiniteLoss as e:
        saved = list_checkpoints(ckpt.dir)
        last = f"the last good checkpoint is {saved[-1][0].with_suffix('.pt')}" if saved else "no checkpoint yet"
        logger.close()
        raise UserError(f"train: non-finite loss ({e.value}) at epoch {run.epoch} step {e.step_in_epoch} (global "
                        f"step {run.global_step + 1}); stopped before applying it, {last}; lower optim.lr, set "
                        f"train.grad_clip_norm, or --set train.nonfinite=skip to skip such batches") from None
    finally:
        bar.close()


def train_record(stats: EpochStats, lr: float) -> dict:
    return {"train/loss": stats.loss, "train/top1": stats.top1, "train/lr": lr,
            "train/images_per_s": stats.images_per_s, "train/data_wait_share": stats.data_wait_share}


def end_of_epoch(run: RunState, va: EpochStats, lr: float, metric: str, logger: RunLogger, epochs: int,
                 confusion: torch.Tensor | None = None) -> dict:
    """Log the epoch (metrics.jsonl, TensorBoard, one stderr line), warn about new bad images, track best.
    confusion: the validation confusion matrix (rows true, columns predicted), logged as val_confusion."""
    tr, epoch = run.stats, run.epoch
    for path, reason in tr.bad + va.bad:
        if path not in run.bad_files:
            run.bad_files[path] = reason
            logger.info(f"warning: skipped bad image {path}: {reason}")
    if tr.nonfinite:
        logger.info(f"warning: skipped {tr.nonfinite} batch(es) with a non-finite loss in epoch {epoch} "
                    f"(train.nonfinite=skip)")
    run.train_images, run.train_seconds = run.train_images + tr.images, run.train_seconds + tr.seconds
    logger.log({"kind": "epoch", "epoch": epoch, **train_record(tr, lr), "val/loss": va.loss,
                "val/top1": va.top1, "val/top5": va.top5, "bad_images": len(run.bad_files),
                "nonfinite_skipped": tr.nonfinite,
                **({"val_confusion": confusion.tolist()} if confusion is not None else {})}, run.global_step)
    logger.info(f"epoch {epoch}/{epochs}  train loss {tr.loss:.4f}  val loss {va.loss:.4f}  "
                f"val top1 {va.top1:.2%}  top5 {va.top5:.2%}  lr {lr:.2e}  {tr.images_per_s:.0f} img/s  "
                f"data wait {tr.data_wait_share:.0%}  {tr.seconds:.0f}s")
    metrics = {"epoch": epoch, "val_top1": va.top1, "val_top5": va.top5, "val_loss": va.loss}
    value = metrics[metric]
    if run.best_value is None or (value < run.best_value if metric == "val_loss" else value > run.best_value):
        run.best_value, run.best_epoch = value, epoch
    return metrics


def finish(run: RunState, metrics: dict, metric: str, seconds: float, run_dir: Path, ctx: StepContext,
           logger: RunLogger) -> dict:
    """The end-of-run summary: logged to metrics.jsonl, printed, returned."""
    best = run_dir / "best" / "model.json"
    best_metrics = json.loads(best.read_text())["metrics"] if best.is_file() else metrics
    summary = {"best_epoch": run.best_epoch, "best_metric": metric, "best_value": run.best_value,
               "best_val_top1": best_metrics["val_top1"], "final_val_top1": metrics["val_top1"],
               "seconds": round(seconds, 1), "bad_images": len(run.bad_files), "bad_files": run.bad_files,
               "train_images_per_s": round(run.train_images / max(run.train_seconds, 1e-9), 1),
               "run_dir": str(run_dir), "best_model": str(run_dir / "best"),
               "precision": precision_name(ctx.amp_dtype), "torch": str(torch.__version__)}
    logger.log({"kind": "summary", **summary}, run.global_step)
    logger.info(f"done in {summary['seconds']}s ({summary['train_images_per_s']} train img/s): best val top1 "
                f"{summary['best_val_top1']:.2%} at epoch {run.best_epoch}; model in {run_dir / 'best'}; "
                f"logs in {run_dir / 'metrics.jsonl'} and {run_dir / 'tb'}"
                + (f"; {len(run.bad_files)} bad images skipped" if run.bad_files else ""))
    logger.close()
    return summary
