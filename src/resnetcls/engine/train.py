"""train(cfg, out_dir): the whole training flow, top to bottom."""
from __future__ import annotations

import dataclasses
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..config import Config, dump_yaml
from ..data.cache import resolve_cache_dir
from ..data.loader import build_loader, known_bad_files
from ..data.sources import load_splits, write_split_csv
from ..data.transforms import build_eval_batch_transform, build_train_transform, make_preprocess
from ..errors import UserError
from ..hardware import pick_device, precision_name, resolve_amp
from ..modelfile import save_model_dir
from ..models import create_model
from ..models.pretrained import load_pretrained
from ..report import write_report
from .log import RunLogger
from .loop import StepContext, evaluate, train_one_epoch
from .optim import build_loss, build_optimizer, build_scheduler


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def arch_args(cfg: Config) -> dict:
    """The ResNet constructor arguments recorded in model.json."""
    m = cfg.model
    return {"stem": m.stem, "stride_on_1x1": m.stride_on_1x1, "zero_init_residual": m.zero_init_residual,
            "width": m.width}


def train(cfg: Config, out_dir: str | Path) -> dict:
    """Train cfg.model on cfg.data; write the run directory; return the end-of-run summary."""
    d, t = cfg.data, cfg.train
    if not d.train:
        raise UserError("train: DATA is required")
    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    seed_everything(t.seed)

    # Data: sources -> decoded cache -> uint8 transforms -> loaders. Bad files: skipped and counted, or
    # (data.on_bad=fail) all named before training starts.
    splits = load_splits(d.train, d.val, d.val_fraction, t.seed, d.split_by, d.batches)
    write_split_csv(splits, run_dir / "split.csv")
    classes = splits.classes
    preprocess = make_preprocess(d.image_size, d.resize_size, d.augment, d.interpolation, d.mean, d.std)
    cache_dir = resolve_cache_dir(d.cache_dir) if d.cache else None
    train_loader = build_loader(splits.train, build_train_transform(preprocess, d.augment, d.min_crop_scale,
                                                                    d.color_jitter, d.cache_size),
                                t.batch_size, shuffle=True, num_workers=d.num_workers, seed=t.seed,
                                drop_last=len(splits.train) > t.batch_size, cache_dir=cache_dir, on_bad=d.on_bad)
    val_loader = build_loader(splits.val, build_eval_batch_transform(preprocess, d.cache_size), t.batch_size,
                              shuffle=False, num_workers=d.num_workers, cache_dir=cache_dir, on_bad=d.on_bad)
    known_bad_files(d.on_bad, train_loader, val_loader)

    # Model, precision, optimisation.
    device = pick_device(t.device)
    ctx = StepContext(device, resolve_amp(t.amp, device), t.channels_last)
    model = create_model(cfg.model.name, len(classes), **arch_args(cfg))
    if t.pretrained:
        load_pretrained(model, t.pretrained, cfg.model.name)  # logs what it loaded to stderr
    model = model.to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.sched, len(train_loader), t.epochs)
    loss_fn = build_loss(cfg.loss, len(classes))
    scaler = torch.amp.GradScaler(device.type, enabled=ctx.amp_dtype == torch.float16)

    logger = RunLogger(run_dir, cfg.log.tensorboard)
    logger.info(f"resnetcls {__version__}: {cfg.model.name}, {len(classes)} classes, "
                f"{len(splits.train)} train / {len(splits.val)} val images, {device.type} "
                f"{precision_name(ctx.amp_dtype)}{' channels_last' if t.channels_last else ''}; "
                f"split written to {run_dir / 'split.csv'}")
    for kind, paths in splits.ignored.items():
        if paths:
            logger.info(f"note: ignored {len(paths)} {kind.replace('_', ' ')} file(s) in DATA, e.g. {paths[0]}")
    best_top1, best_epoch, bad_files, started = -1.0, 0, {}, time.perf_counter()
    for epoch in range(1, t.epochs + 1):
        tr = train_one_epoch(model, train_loader, optimizer, scheduler, loss_fn, ctx, scaler, t.grad_clip_norm)
        va = evaluate(model, val_loader, loss_fn, ctx)
        for path, reason in tr.bad + va.bad:
            if path not in bad_files:
                bad_files[path] = reason
                logger.info(f"warning: skipped bad image {path}: {reason}")
        step = epoch * len(train_loader)
        logger.log({"kind": "epoch", "epoch": epoch, "train/loss": tr.loss, "train/top1": tr.top1,
                    "train/lr": optimizer.param_groups[0]["lr"], "train/images_per_s": tr.images_per_s,
                    "train/data_wait_share": tr.data_wait_s / max(tr.seconds, 1e-9), "val/loss": va.loss,
                    "val/top1": va.top1, "val/top5": va.top5, "bad_images": len(bad_files)}, step)
        logger.info(f"epoch {epoch}/{t.epochs}  train loss {tr.loss:.4f}  val loss {va.loss:.4f}  "
                    f"val top1 {va.top1:.2%}  top5 {va.top5:.2%}  {tr.images_per_s:.0f} img/s  "
                    f"data wait {tr.data_wait_s / max(tr.seconds, 1e-9):.0%}")
        metrics = {"epoch": epoch, "val_top1": va.top1, "val_top5": va.top5, "val_loss": va.loss}
        if va.top1 > best_top1:
            best_top1, best_epoch = va.top1, epoch
            save_model_dir(run_dir / "best", model, cfg.model.name, arch_args(cfg), classes, preprocess, metrics)
    save_model_dir(run_dir / "final", model, cfg.model.name, arch_args(cfg), classes, preprocess, metrics)
    summary = {"best_epoch": best_epoch, "best_val_top1": best_top1, "final_val_top1": va.top1,
               "seconds": round(time.perf_counter() - started, 1), "bad_images": len(bad_files),
               "bad_files": bad_files,
               "run_dir": str(run_dir), "best_model": str(run_dir / "best"),
               "precision": precision_name(ctx.amp_dtype), "torch": torch.__version__,
               "python": platform.python_version()}
    logger.log({"kind": "summary", **summary}, t.epochs * len(train_loader))
    logger.info(f"done in {summary['seconds']}s: best val top1 {best_top1:.2%} at epoch {best_epoch}; "
                f"model in {run_dir / 'best'}; logs in {run_dir / 'metrics.jsonl'} and {run_dir / 'tb'}"
                + (f"; {len(bad_files)} bad images skipped" if bad_files else ""))
    logger.info(f"report: {write_report(run_dir, splits.val, d.num_workers)} (eval of best/ in {run_dir / 'eval'})")
    logger.close()
    return summary
