"""train(cfg, out_dir): the whole training flow, top to bottom: prepare the run, build, loop, finish.

Under torchrun every rank runs this same flow (engine/distributed.py joins the process group); only rank 0
(distributed.is_main) prints, logs and writes checkpoints and model directories. The caller (cli.cmd_train,
demo.py) writes the report from what train() returns.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..config import (
    Config,
    DataConfig,
    ExplicitSettings,
    LogConfig,
    TrainConfig,
    config_to_dict,
    dump_yaml,
    parse_duration,
)
from ..data.augment import resolve_augment_on
from ..data.cache import DecodedStore
from ..data.loader import known_bad_files
from ..data.neardup import (
    leak_check_from_counts,
    leak_warning,
    near_reference,
    store_signatures,
    threshold_counts,
)
from ..data.sampler import ResumableSampler, progressive_size, progressive_sizes
from ..data.sources import Samples, Splits, load_splits, write_split_csv
from ..errors import UserError
from ..records.modelfile import save_model_dir
from ..utils.atomic import write_text_atomic
from ..utils.hardware import precision_name
from . import distributed
from .autobatch import auto_batch_size
from .budget import BudgetChoice, epochs_for_budget, measure_speed, pixel_shares
from .calibrate import calibrate_run
from .checkpoint import Checkpointer, RunState, restore_state
from .log import RunLogger, confusion_field
from .loop import EpochStats, StepContext
from .lrfind import LRCurve, auto_lr, write_curve
from .optim import build_loss, build_optimization
from .prepare import (
    DataPipeline,
    PreparedRun,
    arch_args,
    build_context,
    build_model,
    prepare_run,
    saved_run_config,
    warn,
    wrap_model,
)
from .recipe import RecipeChoice, auto_recipe
from .runner import (
    StepPlan,
    StopRequest,
    TrainingInterrupted,
    note_bad_images,
    run_epoch,
    stop_run,
    train_record,
)

OnEpoch = Callable[[int, dict], bool]  # (epoch, its metrics) -> stop the run here

__all__ = ["OnEpoch", "TrainResult", "TrainingInterrupted", "saved_run_config", "train"]


@dataclass
class TrainResult:
    """What a caller of train() needs: where the run is, its end-of-run summary, and the validation samples
    (the report evaluates the best model on them) and training samples (it shows a batch of them augmented)."""

    run_dir: Path
    summary: dict
    val_samples: Samples
    train_samples: Samples | None = None


@dataclass
class TrainData:
    """The data of a run: its splits, the pipeline that built the loaders, the resumable training order."""

    splits: Splits
    pipeline: DataPipeline
    sampler: ResumableSampler
    train_loader: object
    val_loader: object


# Validation logits kept per shipped model for the calibration fit: at most this many values on a rank (64 MB of
# fp32, e.g. 16k images x 1000 classes); beyond it calibration loads the model back and evaluates it again.
MAX_KEPT_LOGITS = 2**24


@dataclass
class ShippedModels:
    """Writes best/ and final/ (save(name, metrics)) and keeps the validation logits of the epoch each was written
    from, so calibration needs no second pass over the validation split (engine/calibrate.py): the same weights,
    loader and precision. keep_logits=False (too many images x classes) keeps none."""

    save: Callable[[str, dict], object]
    keep_logits: bool
    logits: dict[str, list] = field(default_factory=dict)  # "best"/"final" -> this rank's [(logits, labels)]

    def new_shard(self) -> list | None:
        """What the epoch's validation appends its logits to (None: not kept)."""
        return [] if self.keep_logits else None

    def validated(self, best: bool, metrics: dict, logits: list | None) -> None:
        """An epoch validated: a new best is written now; the latest epoch's logits are final/'s (final/ is written
        from the same weights once the loop ends)."""
        for name in ("best", "final") if best else ("final",):
            if logits is None:
                self.logits.pop(name, None)
            else:
                self.logits[name] = logits
        if best:
            self.save("best", metrics)

    def finish(
        self,
        metrics: dict,
        run_dir: Path,
        e,
        val_loader,
        ctx: StepContext,
        logger: RunLogger,
        writes: bool,
        step: int,
        num_classes: int,
    ) -> None:
        """Write final/, then fit and store the calibration of best/ and final/ (every rank calls it)."""
        self.save("final", metrics)
        distributed.barrier()  # every rank reads best/ and final/ only once rank 0 has written them
        calibrate_run(run_dir, e, val_loader, ctx, logger, writes, step, self.logits, num_classes)
        distributed.barrier()  # ... and their calibrated model.json


def build_data(d: DataConfig, t: TrainConfig, ctx: StepContext) -> TrainData:
    """Sources -> decoded cache -> uint8 transforms -> loaders. The training order depends only on
    (seed, epoch) via the sampler. Bad files: skipped and counted, or (data.on_bad=fail) all named here,
    before training starts."""
    splits = load_splits(d.train, d.val, d.val_fraction, t.seed, d.split_by, d.batches)
    if len(splits.classes) < 2:  # one class would train to a meaningless 100%
        raise UserError(f"{d.train}: only one class ({splits.classes[0]!r}); a classifier needs at least two")
    pipeline = DataPipeline(
        d,
        t.batch_size,
        uint8_batches=ctx.device.type == "cuda",
        device_augment=resolve_augment_on(d.augment_on, ctx.device),
    )
    world = distributed.world_from_env()  # under torchrun each rank reads its own share, batch_size each
    sampler = ResumableSampler(splits.train.labels, d.sampler, t.seed, world.rank, world.size)
    train_loader = pipeline.train_loader(splits.train, sampler, t.seed)
    # Validation: indices rank, rank + world, ...: every image on exactly one rank, no padding repeats.
    val_loader = pipeline.eval_loader(splits.val, range(world.rank, len(splits.val), world.size))
    known_bad_files(d.on_bad, train_loader, val_loader)
    distributed.wait_for_data()  # cache builds may outlast train.dist_timeout_s
    if d.leak_check:  # after that wait: its collectives then wait only for the other ranks' equal share
        warn_near_duplicates(train_loader, val_loader, len(splits.val), world)
    return TrainData(splits, pipeline, sampler, train_loader, val_loader)


def warn_near_duplicates(train_loader, val_loader, val_images: int, world: distributed.World) -> None:
    """One warning line when many val images have a near-duplicate in train (data/neardup.py). Hashes the
    decoded uint8 cache the loaders already built (no second decode); without a cache (data.cache=false) it
    would decode everything again, so it is skipped.

    Under torchrun the check is sharded, so no rank waits on another for longer than their shares differ: each
    rank hashes every world-th train and val image, the train signatures (16 bytes an image) are gathered on
    every rank, each rank searches its own val share against all of train, and the counts are summed. Every
    rank thus does 1/world of the hashing and searching; had rank 0 done it all, the others would wait at their
    next collective (the DDP handshake) for the whole check and die there once it outlasted
    train.dist_timeout_s."""
    stores = [getattr(loader.dataset, "store", None) for loader in (train_loader, val_loader)]
    if not all(isinstance(store, DecodedStore) for store in stores):
        return
    train_store, val_store = stores
    shares = distributed.gather_objects(
        store_signatures(train_store, range(world.rank, len(train_store), world.size))
    )
    train = tuple(np.concatenate([share[k] for share in shares]) for k in (0, 1))
    val = store_signatures(val_store, range(world.rank, len(val_store), world.size), flipped=True)
    counts = threshold_counts(near_reference(val[:2], train), near_reference(val[2:], train))
    summed = distributed.all_reduce_sum(torch.from_numpy(np.concatenate([counts.ravel(), [len(val[0])]])))
    *counts, searched = summed.tolist()
    check = leak_check_from_counts(np.reshape(counts, (2, -1)), searched, len(train[0]))
    text = leak_warning(check, val_images, len(train[0]))
    if text and world.is_main:
        warn(text)


def train(
    cfg: Config,
    out_dir: str | Path,
    resume: str | None = None,
    force: bool = False,
    lr_auto: bool = False,
    batch_auto: bool = False,
    explicit: ExplicitSettings | None = None,
    on_epoch: OnEpoch | None = None,
) -> TrainResult:
    """Train cfg.model on cfg.data; write the run directory; return it with the end-of-run summary.

    resume: None (a new run), "auto" (the newest complete checkpoint in out_dir, if any) or a run directory.
    Under torchrun (RANK/WORLD_SIZE set) each process trains its share with DistributedDataParallel.
    lr_auto: a short LR range test (engine/lrfind.py) sets optim.lr first, and its curve goes into the run
    directory (lr_find.json/.csv/.png); batch_auto: the fastest batch size on a CPU, the largest that fits on
    a GPU (engine/autobatch.py), before the LR test; config.yaml records both.
    explicit: what the user chose (config.explicit_settings); with no recipe choice among it, the auto recipe
    (engine/recipe.py) picks model, size, augmentation and epochs first. None (a caller that built its own
    config, such as the demo): cfg is used as it is.
    on_epoch(epoch, metrics) -> bool: called after each validated epoch (`tune` feeds its pruner with it);
    True ends the run there as an early stop (final/, calibration and summary as usual).
    """
    if not cfg.data.train:
        raise UserError("train: DATA is required (or --resume RUN_DIR to continue a run)")
    autos = [flag for flag, on in (("--batch-size auto", batch_auto), ("--lr auto", lr_auto)) if on]
    if autos and resume is not None:
        raise UserError(
            f"{autos[0]}: starts a new run; a resumed run keeps the value in its config.yaml "
            "(drop it, or give a number)"
        )
    world, device_name = distributed.setup(cfg.train.device, cfg.train.dist_timeout_s)
    try:
        if autos and world.distributed:  # each rank would measure on its own and could choose another value
            raise UserError(
                f"{autos[0]}: not under torchrun; measure once (e.g. `resnetcls lr-find`) and pass the number"
            )
        run_dir = Path(out_dir if resume in (None, "auto") else resume)
        cfg, recipe = auto_recipe(cfg, explicit, run_dir, resume, device_name)
        cfg = auto_batch_size(cfg, device_name) if batch_auto else cfg
        cfg, lr_curve = auto_lr(cfg, device_name) if lr_auto else (cfg, None)
        return _train(cfg, out_dir, resume, force, world, device_name, lr_curve, recipe, on_epoch)
    finally:
        distributed.cleanup()


def _train(
    cfg: Config,
    out_dir: str | Path,
    resume: str | None,
    force: bool,
    world: distributed.World,
    device_name,
    lr_curve: LRCurve | None = None,
    recipe: RecipeChoice | None = None,
    on_epoch: OnEpoch | None = None,
):
    # Prepare the run: validate, find the checkpoint to resume, write config.yaml and environment.json, seed.
    run = prepare_run(cfg, out_dir, resume, force, world.is_main)
    cfg, run_dir, t, d, writes = run.cfg, run.run_dir, run.cfg.train, run.cfg.data, world.is_main
    if lr_curve is not None and writes:  # --lr auto's sweep, for the report (a resume never sweeps again)
        write_curve(lr_curve, run_dir)
    # Build: data, model, optimisation, loss.
    ctx = build_context(t, device_name)
    data = build_data(d, t, ctx)
    classes, steps_per_epoch = (
        data.splits.classes,
        math.ceil(len(data.train_loader) / max(1, t.grad_accum_steps)),
    )
    model = build_model(cfg.model, t, len(classes), ctx)
    loss_fn = build_loss(cfg.loss, len(classes), data.splits.train.labels).to(ctx.device)
    cfg, choice = fit_time_budget(run, model, data, loss_fn, ctx, steps_per_epoch, writes)
    t = cfg.train
    opt = build_optimization(model, cfg.optim, cfg.sched, t, steps_per_epoch, ctx)
    step_model = wrap_model(model, ctx, world.distributed, t.compile)
    eval_model = opt.ema.module if opt.ema is not None else model  # with EMA, the average is what we ship
    shipped = ShippedModels(
        lambda name, metrics: (
            writes
            and save_model_dir(
                run_dir / name,
                eval_model,
                cfg.model.name,
                arch_args(cfg.model),
                classes,
                data.pipeline.preprocess,
                metrics,
            )
        ),
        keep_logits=len(data.splits.val) * len(classes) <= MAX_KEPT_LOGITS,
    )
    state = RunState() if run.resumed is None else restore_state(run.resumed[0], model, opt)
    logger = start_logging(
        run_dir,
        state,
        run.resumed,
        data.splits,
        ctx,
        steps_per_epoch,
        world,
        t,
        cfg.log,
        cfg.model.name,
        choice,
        d,
        recipe,
    )
    log_cache_stores(logger, data, state.global_step)
    ckpt = Checkpointer(
        run_dir, cfg.ckpt, t.batch_size, config_to_dict(cfg), run.env, model, opt, enabled=writes
    )
    plan = StepPlan(t.epochs, steps_per_epoch, cfg.log.every_steps, cfg.ckpt.every_steps, t.nonfinite)
    metrics = run.resumed[1].get("metrics") if run.resumed else None  # a finished run has nothing to train
    started, asked_stop = time.perf_counter(), False
    # Loop: epochs, each validated and checkpointed, until t.epochs or train.patience epochs without progress.
    # A stop request (SIGINT/SIGTERM) ends it at the next step: saved, then exit 130 (the one interrupt path).
    with StopRequest() as stop:
        while state.epoch <= t.epochs and not patience_ran_out(state, t.patience) and not asked_stop:
            epoch, where, logits = state.epoch, None, shipped.new_shard()
            size = progressive_size(
                epoch, t.epochs, d.image_size, d.progressive
            )  # a function of epoch: resumable
            data.sampler.set_epoch(epoch, state.stats.batches * t.batch_size, size)
            if not run_epoch(
                state, step_model, data.train_loader, opt, loss_fn, ctx, logger, ckpt, stop, plan
            ):
                where = f"at epoch {epoch} step {state.stats.steps}"
            else:
                va, confusion = distributed.evaluate_sharded(
                    eval_model,
                    data.val_loader,
                    loss_fn,
                    ctx,
                    len(classes),
                    stop=lambda: stop.requested,
                    logits_out=logits,
                )
                # Interrupted validation: the epoch's training is complete, a resume goes straight to validation.
                where = f"during validation of epoch {epoch}" if va.interrupted else None
            ended = where is None
            if ended:
                metrics = end_of_epoch(
                    state,
                    va,
                    opt.lr,
                    cfg.ckpt.metric,
                    logger,
                    t.epochs,
                    confusion,
                    size if d.progressive > 0 else None,
                )
                shipped.validated(state.best_epoch == epoch, metrics, logits)
                asked_stop = on_epoch is not None and bool(on_epoch(epoch, metrics))  # tune's pruner
                state.epoch, state.stats = epoch + 1, EpochStats()
                if distributed.any_rank(stop.requested) and state.epoch <= t.epochs:
                    where = f"after epoch {epoch}"
            saved = ckpt.save(state, metrics if ended else None)  # an epoch's metrics rank its end checkpoint
            if where is not None:
                stop_run(logger, f"interrupted {where}: saved {saved}", run_dir)
    # Finish: the final model, the calibration temperature of both (fitted on val), the summary.
    shipped.finish(
        metrics, run_dir, cfg.eval, data.val_loader, ctx, logger, writes, state.global_step, len(classes)
    )
    summary = finish(state, metrics, cfg.ckpt.metric, time.perf_counter() - started, run_dir, ctx, logger, t)
    return TrainResult(run_dir, summary, data.splits.val, data.splits.train)


def fit_time_budget(
    run: PreparedRun,
    model: torch.nn.Module,
    data: TrainData,
    loss_fn: torch.nn.Module,
    ctx: StepContext,
    steps_per_epoch: int,
    writes: bool,
) -> tuple[Config, BudgetChoice | None]:
    """With train.time_budget on a new run: measure the speed, choose train.epochs to fit the budget, record it
    in config.yaml (and so in every checkpoint). A resumed run keeps the total it chose (prepare_run)."""
    cfg, budget_s = run.cfg, parse_duration(run.cfg.train.time_budget)
    if not budget_s or run.resumed is not None:
        return cfg, None
    build_opt = lambda probe: build_optimization(probe, cfg.optim, cfg.sched, cfg.train, steps_per_epoch, ctx)
    measured = measure_speed(
        model, data.train_loader, data.val_loader, loss_fn, ctx, build_opt, run.run_dir if writes else None
    )
    step_s, val_s, save_s = distributed.gather_objects(measured)[0]  # every rank takes rank 0's figures
    setup_s = time.perf_counter() - run.started  # the budget counts from the start of the run
    d = cfg.data  # progressive resizing: steps timed at the final size, each epoch scaled by its pixels
    epochs = epochs_for_budget(
        max(0.0, budget_s - setup_s), step_s, steps_per_epoch, val_s, save_s, d.image_size, d.progressive
    )
    shares = pixel_shares(epochs, d.image_size, d.progressive)
    choice = BudgetChoice(
        budget_s, step_s, val_s, steps_per_epoch, epochs, save_s, setup_s, sum(shares) / epochs
    )
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=choice.epochs))
    if writes:
        write_text_atomic(run.run_dir / "config.yaml", dump_yaml(cfg))
    return cfg, choice


def patience_ran_out(state: RunState, patience: int) -> bool:
    """True when the last `patience` finished epochs did not improve on the best (train.patience; 0 = off)."""
    return patience > 0 and state.best_epoch > 0 and (state.epoch - 1) - state.best_epoch >= patience


def note_early_stop(state: RunState, t: TrainConfig, metric: str, logger: RunLogger) -> None:
    if state.epoch <= t.epochs and patience_ran_out(state, t.patience):
        logger.info(
            f"stopping early: {metric} has not improved for {state.epoch - 1 - state.best_epoch} epochs "
            f"(best {state.best_value:.4f} at epoch {state.best_epoch})"
        )


def start_logging(
    run_dir: Path,
    state: RunState,
    resumed,
    splits: Splits,
    ctx: StepContext,
    steps_per_epoch: int,
    world: distributed.World,
    t: TrainConfig,
    log: LogConfig,
    model_name: str,
    choice: BudgetChoice | None = None,
    d: DataConfig | None = None,
    recipe: RecipeChoice | None = None,
) -> RunLogger:
    """The run's logger (continuing metrics.jsonl and TensorBoard where a resumed run stopped), the opening
    lines on stderr (the auto recipe's and the time budget's choices, the progressive resizing schedule of d),
    split.csv."""
    if resumed is not None:
        warn(
            f"resuming {run_dir} at epoch {state.epoch} step {state.stats.steps}/{steps_per_epoch} "
            f"(global step {state.global_step}) from {resumed[1]['file']}"
        )
    logger = RunLogger(
        run_dir,
        log.tensorboard,
        state.global_step if resumed else None,
        world.is_main,
        state.epoch,
        tracking=log,
        precision=precision_name(ctx.amp_dtype),
    )
    logger.info(
        f"resnetcls {__version__}: {model_name}, {len(splits.classes)} classes, "
        f"{len(splits.train)} train / {len(splits.val)} val images, {ctx.device.type} "
        f"{precision_name(ctx.amp_dtype)}{' channels_last' if t.channels_last else ''}"
        f"{' compiled' if t.compile else ''}, {steps_per_epoch} steps/epoch"
        + (f", {world.size} processes x batch {t.batch_size}" if world.distributed else "")
    )
    if recipe is not None:
        for line in recipe.lines():
            logger.info(line)
        logger.log({"kind": "recipe", **recipe.record()}, state.global_step)
    if choice is not None:
        logger.info(choice.line())
        logger.log({"kind": "time_budget", **choice.record()}, state.global_step)
    if d is not None and d.progressive > 0:
        logger.info(progressive_line(t.epochs, d.image_size, d.progressive))
    if world.is_main:
        write_split_csv(splits, run_dir / "split.csv")
        logger.info(f"split written to {run_dir / 'split.csv'}")
    for kind, paths in splits.ignored.items():
        if paths:
            logger.info(
                f"note: ignored {len(paths)} {kind.replace('_', ' ')} file(s) in DATA, e.g. {paths[0]}"
            )
    return logger


def log_cache_stores(logger: RunLogger, data: TrainData, step: int) -> None:
    """Which store each split reads (decoded or compressed, its folder, why compressed) as a "cache" record in
    metrics.jsonl; nothing with data.cache=false."""
    stores = {
        name: getattr(loader.dataset, "store", None)
        for name, loader in (("train", data.train_loader), ("val", data.val_loader))
    }
    record = {
        name: {
            "format": store.kind,
            "store": str(store.directory),
            **({"why": store.note} if store.note else {}),
        }
        for name, store in stores.items()
        if isinstance(store, DecodedStore)
    }
    if record:
        logger.log({"kind": "cache", **record}, step)


def progressive_line(epochs: int, image_size: int, progressive: float) -> str:
    """The opening line that states data.progressive's schedule once."""
    sizes = progressive_sizes(epochs, image_size, progressive)
    return (
        f"progressive resizing: {sizes[0]} -> {image_size} px, full size from epoch "
        f"{sizes.index(image_size) + 1} of {epochs} (validation always at {image_size} px)"
    )


def end_of_epoch(
    run: RunState,
    va: EpochStats,
    lr: float,
    metric: str,
    logger: RunLogger,
    epochs: int,
    confusion: torch.Tensor | None = None,
    train_size: int | None = None,
) -> dict:
    """Log the epoch (metrics.jsonl, TensorBoard, one stderr line), warn about new bad images, track best.
    confusion: the validation confusion matrix (rows true, columns predicted), logged as val_confusion up to
    limits.MATRIX_IN_JSON_MAX_CLASSES classes (log.confusion_field).
    train_size: the epoch's training size under progressive resizing (recorded and printed), else None."""
    tr, epoch = run.stats, run.epoch
    note_bad_images(run, tr.bad + va.bad, logger)
    if tr.nonfinite:
        logger.info(
            f"warning: skipped {tr.nonfinite} batch(es) with a non-finite loss in epoch {epoch} "
            f"(train.nonfinite=skip)"
        )
    run.train_images, run.train_seconds = run.train_images + tr.images, run.train_seconds + tr.seconds
    logger.log(
        {
            "kind": "epoch",
            "epoch": epoch,
            **train_record(tr, lr),
            "val/loss": va.loss,
            "val/top1": va.top1,
            "val/top5": va.top5,
            "bad_images": len(run.bad_files),
            "nonfinite_skipped": tr.nonfinite,
            **({"train_size": train_size} if train_size else {}),
            **confusion_field(confusion),
        },
        run.global_step,
    )
    logger.info(
        f"epoch {epoch}/{epochs}  train loss {tr.loss:.4f}  val loss {va.loss:.4f}  "
        f"val top1 {va.top1:.2%}  top5 {va.top5:.2%}  lr {lr:.2e}  {tr.images_per_s:.0f} img/s  "
        f"data wait {tr.data_wait_share:.0%}  {tr.seconds:.0f}s"
        + (f"  train size {train_size}px" if train_size else "")
    )
    metrics = {"epoch": epoch, "val_top1": va.top1, "val_top5": va.top5, "val_loss": va.loss}
    value = metrics[metric]
    if run.best_value is None or (value < run.best_value if metric == "val_loss" else value > run.best_value):
        run.best_value, run.best_epoch = value, epoch
    return metrics


def finish(
    run: RunState,
    metrics: dict,
    metric: str,
    seconds: float,
    run_dir: Path,
    ctx: StepContext,
    logger: RunLogger,
    t: TrainConfig,
) -> dict:
    """The end-of-run summary (after the early-stopping note, if any): logged to metrics.jsonl, printed,
    returned."""
    note_early_stop(run, t, metric, logger)
    best = run_dir / "best" / "model.json"
    best_metrics = json.loads(best.read_text())["metrics"] if best.is_file() else metrics
    summary = {
        "best_epoch": run.best_epoch,
        "best_metric": metric,
        "best_value": run.best_value,
        "best_val_top1": best_metrics["val_top1"],
        "final_val_top1": metrics["val_top1"],
        "seconds": round(seconds, 1),
        "bad_images": len(run.bad_files),
        "bad_files": run.bad_files,
        "train_images_per_s": round(run.train_images / max(run.train_seconds, 1e-9), 1),
        "run_dir": str(run_dir),
        "best_model": str(run_dir / "best"),
        "precision": precision_name(ctx.amp_dtype),
        "torch": str(torch.__version__),
        "epochs": t.epochs,
        "epochs_run": run.epoch - 1,
        "time_budget_s": parse_duration(t.time_budget),
        "stopped_early": run.epoch <= t.epochs,
    }
    logger.log({"kind": "summary", **summary}, run.global_step)
    logger.info(
        f"done in {summary['seconds']}s ({summary['train_images_per_s']} train img/s): best val top1 "
        f"{summary['best_val_top1']:.2%} at epoch {run.best_epoch}; model in {run_dir / 'best'}; "
        f"logs in {run_dir / 'metrics.jsonl'} and {run_dir / 'tb'}"
        + (f"; {len(run.bad_files)} bad images skipped" if run.bad_files else "")
    )
    logger.close()
    return summary
