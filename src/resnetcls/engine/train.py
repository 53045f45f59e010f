"""train(cfg, out_dir): the whole training flow, top to bottom: plan, prepare the run, epochs, finish.

1. plan (engine/plan.py): every refusal the flags, config and data's file list allow, then every automatic
   choice; nothing is written yet, and a refused plan leaves no run directory.
2. prepare the run (open_training): config.yaml written once from the plan's config, environment.json,
   seeding, then the data, model, optimisation, logger and checkpointer, built once into a TrainingRun that
   the rest of the flow shares; the opening lines log the plan's decisions.
3. epochs (train_epochs): each trained, validated and checkpointed, until train.epochs, train.patience or a
   stop request (saved, exit 130).
4. finish (engine/finish.py): final/, the calibration of best/ and final/, their open-set score
   (engine/openset.py), the summary.

Under torchrun every rank runs this same flow (engine/distributed.py joins the process group); only rank 0
(distributed.is_main) prints, logs and writes checkpoints and model directories. The caller (cli.cmd_train,
demo.py) writes the report from what train() returns.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from .. import __version__
from ..config import Config, ExplicitSettings, config_to_dict
from ..data.cache import DecodedStore
from ..data.sampler import progressive_size
from ..data.sources import Samples, write_split_csv
from ..errors import UserError
from ..records.modelfile import save_model_dir
from ..utils.hardware import precision_name
from . import distributed
from .checkpoint import Checkpointer, RunState, restore_state
from .distill import build_distill_hooks, checkpoint_record
from .finish import MAX_KEPT_LOGITS, ShippedModels, end_of_epoch, patience_ran_out, summarize
from .log import RunLogger, console_log
from .loop import EpochStats, StepContext
from .lrfind import write_curve
from .multilabel import fit_run_thresholds, is_multi_label, validation_map
from .openset import fit_open_set, open_set_images
from .optim import build_loss, build_optimization
from .plan import Plan, TrainRequest, make_plan
from .prepare import (
    PreparedRun,
    TrainData,
    arch_args,
    build_context,
    build_data,
    build_model,
    open_run,
    saved_run_config,
    warn,
    wrap_model,
)
from .race import RaceHooks, run_race
from .rundir import next_run_dir, open_run_folder
from .runner import EpochParts, StepPlan, StopRequest, TrainingInterrupted, run_epoch, stop_run

OnEpoch = Callable[[int, dict], bool]  # (epoch, its metrics) -> stop the run here

__all__ = ["OnEpoch", "TrainResult", "TrainingInterrupted", "saved_run_config", "train"]


@dataclass
class TrainResult:
    """What a caller of train() needs: where the run is, its end-of-run summary, and the validation samples
    (the report evaluates the best model on them) and training samples (it shows a batch of them
    augmented)."""

    run_dir: Path
    summary: dict
    val_samples: Samples
    train_samples: Samples | None = None


@dataclass
class TrainingRun:
    """A run being trained: its plan (the final config, the splits, the checkpoint resumed), this process's
    place in the job, its data, the model and the one that is shipped (the EMA average when there is one),
    where it stands (RunState), what each epoch trains with (the step model, optimisation, loss, device,
    logger, checkpointer, stop request: EpochParts) and the shipped models' writer."""

    plan: Plan
    world: distributed.World
    data: TrainData
    model: torch.nn.Module
    eval_model: torch.nn.Module
    state: RunState
    parts: EpochParts
    shipped: ShippedModels

    @property
    def cfg(self) -> Config:
        return self.plan.cfg

    @property
    def run_dir(self) -> Path:
        return self.plan.run_dir

    @property
    def num_classes(self) -> int:
        return len(self.plan.splits.classes)


def train(
    cfg: Config,
    out_dir: str | Path | None,
    resume: str | None = None,
    force: bool = False,
    lr_auto: bool = False,
    batch_auto: bool = False,
    explicit: ExplicitSettings | None = None,
    on_epoch: OnEpoch | None = None,
) -> TrainResult:
    """Train cfg.model on cfg.data; write the run directory; return it with the end-of-run summary.

    out_dir None with resume None: a new folder runs/train, runs/train-2, ... (engine/rundir.py), runs/latest
    pointed to it once the plan is accepted. The console lines go to stderr and RUN/train.log.
    resume: None (a new run), "auto" (the newest complete checkpoint in out_dir, if any) or a run directory.
    Under torchrun (RANK/WORLD_SIZE set) each process trains its share with DistributedDataParallel.
    lr_auto: a short LR range test (engine/lrfind.py) sets optim.lr first, and its curve goes into the run
    directory (lr_find.json/.csv/.png); batch_auto: the fastest batch size on a CPU, the largest that fits on
    a GPU (engine/autobatch.py), before the LR test; config.yaml records both.
    explicit: what the user chose (config.explicit_settings); the auto recipe (engine/recipe.py) keeps the
    recipe choices among it and picks the rest first. None (a caller that built its own
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
        named = out_dir is None and resume is None  # a new folder runs/train-N, runs/latest pointed to it
        # every rank takes rank 0's name: rank 0 makes the folder only once its plan is accepted
        run_dir = distributed.gather_objects(next_run_dir())[0] if named else Path(out_dir or resume)
        with console_log(world.is_main) as console:
            request = TrainRequest(cfg, run_dir, resume, force, lr_auto, batch_auto, explicit)
            plan = make_plan(request, device_name)
            if world.is_main:  # the plan is accepted: the run folder, runs/latest, RUN/train.log
                open_run_folder(plan.run_dir, named, console.say)
                console.attach(plan.run_dir / "train.log", resumed_file(plan))
            if plan.race is not None:  # the raced auto recipe: the winner's run continues in RUN
                plan = run_race(plan, RaceHooks(lambda made: open_training(made, world), race_epochs))
            run = open_training(plan, world)
            started = time.perf_counter()
            metrics = train_epochs(run, on_epoch)
            summary = finish_run(run, metrics, started)
        return TrainResult(run.run_dir, summary, run.plan.splits.val, run.plan.splits.train)
    finally:
        distributed.cleanup()


def race_epochs(run: TrainingRun) -> None:
    """A race candidate's epochs, until its rung's step target (its stop request)."""
    train_epochs(run, None)


def resumed_file(plan: Plan) -> str | None:
    """The checkpoint file a resumed plan continues from (None: a new run)."""
    return plan.resumed[1]["file"] if plan.resumed else None


def open_training(plan: Plan, world: distributed.World) -> TrainingRun:
    """Write config.yaml (the plan's config, once) and environment.json, seed every RNG, then build the data,
    model, loss and optimisation (restored from the checkpoint when resuming), the logger and the
    checkpointer."""
    cfg, writes = plan.cfg, world.is_main
    open_run(PreparedRun(cfg, plan.run_dir, plan.resumed, plan.env), writes)
    if (
        plan.lr_curve is not None and writes
    ):  # --lr auto's sweep, for the report (a resume never sweeps again)
        write_curve(plan.lr_curve, plan.run_dir)
    ctx = build_context(cfg.train, plan.device_name)
    data = build_data(cfg.data, cfg.train, ctx, plan.splits)
    steps_per_epoch = math.ceil(len(data.train_loader) / max(1, cfg.train.grad_accum_steps))
    classes = plan.splits.classes
    model = build_model(cfg.model, cfg.train, len(classes), ctx)
    train_samples = plan.splits.train
    loss_fn = build_loss(cfg.loss, len(classes), train_samples.labels, train_samples.label_sets).to(
        ctx.device
    )
    opt = build_optimization(model, cfg.optim, cfg.sched, cfg.train, steps_per_epoch, ctx)
    step_model = wrap_model(model, ctx, world.distributed, cfg.train.compile)
    eval_model = opt.ema.module if opt.ema is not None else model  # with EMA, the average is what we ship

    def save(name: str, metrics: dict):
        model_dir, preprocess = plan.run_dir / name, data.pipeline.preprocess
        return writes and save_model_dir(
            model_dir, eval_model, cfg.model.name, arch_args(cfg.model), classes, preprocess, metrics
        )

    multi = is_multi_label(plan.splits)  # engine/multilabel.py: every validation keeps its logits for the mAP
    shipped = ShippedModels(save, keep_logits=multi or len(plan.splits.val) * len(classes) <= MAX_KEPT_LOGITS)
    state = RunState() if plan.resumed is None else restore_state(plan.resumed[0], model, opt)
    logger = start_logging(plan, state, ctx, steps_per_epoch, world)
    log_cache_stores(logger, data, state.global_step)
    config, teacher = config_to_dict(cfg), plan.teacher  # the teacher's identity in every checkpoint
    ckpt = Checkpointer(
        plan.run_dir, cfg.ckpt, cfg.train.batch_size, config, plan.env, model, opt, checkpoint_record(teacher)
    )
    hooks = build_distill_hooks(teacher, cfg.distill, data.pipeline.preprocess, ctx)
    train_cfg = cfg.train
    step_plan = StepPlan(
        train_cfg.epochs, steps_per_epoch, cfg.log.every_steps, cfg.ckpt.every_steps, train_cfg.nonfinite
    )
    parts = EpochParts(step_model, opt, loss_fn, ctx, logger, ckpt, StopRequest(), step_plan, hooks)
    if multi:
        shipped.fit_thresholds = partial(
            fit_run_thresholds, plan.run_dir, cfg.data.label_separator, data.val_loader, ctx, logger
        )
    return TrainingRun(plan, world, data, model, eval_model, state, parts, shipped)


def train_epochs(run: TrainingRun, on_epoch: OnEpoch | None) -> dict | None:
    """Epochs, each validated and checkpointed, until train.epochs or train.patience epochs without progress;
    the last validated epoch's metrics (a finished run resumed has nothing to train: its checkpoint's).
    A stop request (SIGINT/SIGTERM) ends it at the next step: saved, then exit 130 (the one interrupt
    path)."""
    state, train_cfg, parts = run.state, run.cfg.train, run.parts
    metrics = run.plan.resumed[1].get("metrics") if run.plan.resumed else None
    asked_stop = False
    with parts.stop:
        while state.epoch <= train_cfg.epochs and not patience_ran_out(state, train_cfg.patience):
            epoch, logits = state.epoch, run.shipped.new_shard()
            where, validation = train_and_validate(run, logits)
            if where is None:
                va, confusion, size = validation
                metric, logger = run.cfg.ckpt.metric, parts.logger
                metrics = end_of_epoch(
                    state, va, parts.opt.lr, metric, logger, train_cfg.epochs, confusion, size
                )
                run.shipped.validated(state.best_epoch == epoch, metrics, logits)
                asked_stop = on_epoch is not None and bool(on_epoch(epoch, metrics))  # tune's pruner
                state.epoch, state.stats = epoch + 1, EpochStats()
                if distributed.any_rank(parts.stop.requested) and state.epoch <= train_cfg.epochs:
                    where = f"after epoch {epoch}"
            ended = validation is not None
            saved = parts.ckpt.save(state, metrics if ended else None)  # the epoch's metrics rank its end one
            if where is not None and not parts.stop.at_target():
                stop_run(
                    parts.logger, f"interrupted {where}: saved {saved}", parts.stop.resume_dir or run.run_dir
                )
            if asked_stop or where is not None:  # a race's rung ends at its step target (engine/race.py)
                break
    return metrics


def train_and_validate(run: TrainingRun, logits: list | None) -> tuple[str | None, tuple | None]:
    """Train the rest of the epoch and validate it: (where it was interrupted, None when it was not;
    (validation stats, confusion matrix, the epoch's training size under progressive resizing) or None when
    the epoch did not reach its end)."""
    state, cfg, parts = run.state, run.cfg, run.parts
    epoch, data_cfg = state.epoch, cfg.data
    size = progressive_size(epoch, cfg.train.epochs, data_cfg.image_size, data_cfg.progressive)
    run.data.sampler.set_epoch(epoch, state.stats.batches * cfg.train.batch_size, size)  # a function of epoch
    if not run_epoch(state, run.data.train_loader, parts):
        return f"at epoch {epoch} step {state.stats.steps}", None
    stop = parts.stop
    va, confusion = distributed.evaluate_sharded(
        run.eval_model,
        run.data.val_loader,
        parts.loss_fn,
        parts.ctx,
        run.num_classes,
        stop=stop.signalled,  # a race's rung ending at the epoch's last step still validates it
        logits_out=logits,
    )
    if va.interrupted:  # the epoch's training is complete: a resume goes straight to validation
        return f"during validation of epoch {epoch}", None
    if is_multi_label(run.plan.splits):
        va.map = validation_map(logits, run.num_classes)
    return None, (va, confusion, size if data_cfg.progressive > 0 else None)


def finish_run(run: TrainingRun, metrics: dict, started: float) -> dict:
    """The final model, the calibration temperature of both (fitted on val), their open-set score
    (engine/openset.py), the summary."""
    parts, state = run.parts, run.state
    run.shipped.finish(
        metrics,
        run.run_dir,
        run.cfg.eval,
        run.data.val_loader,
        parts.ctx,
        parts.logger,
        state.global_step,
        run.num_classes,
    )
    eval_cfg, data = run.cfg.eval, run.data
    images = open_set_images(data.pipeline, data.splits, data.val_loader, eval_cfg, run.cfg.train.seed)
    open_set = fit_open_set(run.run_dir, eval_cfg, images, parts.ctx, parts.logger, state.global_step)
    seconds = time.perf_counter() - started
    return summarize(state, metrics, seconds, run.run_dir, parts.ctx, parts.logger, run.cfg, open_set)


def start_logging(
    plan: Plan, state: RunState, ctx: StepContext, steps_per_epoch: int, world: distributed.World
) -> RunLogger:
    """The run's logger (continuing metrics.jsonl and TensorBoard where a resumed run stopped), the opening
    lines on stderr (the plan's decisions: the auto recipe's and the time budget's, the progressive resizing
    schedule), split.csv."""
    run_dir, log_cfg = plan.run_dir, plan.cfg.log
    if plan.resumed is not None:
        warn(
            f"resuming {run_dir} at epoch {state.epoch} step {state.stats.steps}/{steps_per_epoch} "
            f"(global step {state.global_step}) from {plan.resumed[1]['file']}"
        )
    logger = RunLogger(
        run_dir,
        log_cfg.tensorboard,
        state.global_step if plan.resumed else None,
        world.is_main,
        state.epoch,
        tracking=log_cfg,
        precision=precision_name(ctx.amp_dtype),
    )
    logger.info(opening_line(plan, ctx, steps_per_epoch, world))
    for made in plan.decisions:
        for line in made.lines if made.logged else []:
            logger.info(line)
        if made.record is not None:
            logger.log(made.record, state.global_step)
    splits = plan.splits
    if world.is_main:
        write_split_csv(splits, run_dir / "split.csv", plan.cfg.data.label_separator)
        logger.info(f"split written to {run_dir / 'split.csv'}")
    for kind, paths in splits.ignored.items():
        if paths:
            logger.info(
                f"note: ignored {len(paths)} {kind.replace('_', ' ')} file(s) in DATA, e.g. {paths[0]}"
            )
    return logger


def opening_line(plan: Plan, ctx: StepContext, steps_per_epoch: int, world: distributed.World) -> str:
    """What is trained on what, where, in which precision, in how many steps an epoch."""
    train_cfg, splits = plan.cfg.train, plan.splits
    return (
        f"resnetcls {__version__}: {plan.cfg.model.name}, {len(splits.classes)} classes, "
        f"{len(splits.train)} train / {len(splits.val)} val images, {ctx.device.type} "
        f"{precision_name(ctx.amp_dtype)}{' channels_last' if train_cfg.channels_last else ''}"
        f"{' compiled' if train_cfg.compile else ''}, {steps_per_epoch} steps/epoch"
        + (f", {world.size} processes x batch {train_cfg.batch_size}" if world.distributed else "")
    )


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
