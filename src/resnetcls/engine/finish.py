"""The end of an epoch and of a training run: the epoch's record, line and best so far (end_of_epoch),
train.patience, the shipped models (best/ when an epoch improves, final/ at the end, then their calibration:
engine/calibrate.py) and the end-of-run summary."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config, EvalConfig, TrainConfig, parse_duration
from ..records.modelfile import META, write_calibration
from ..utils.calibration import not_calibrated
from ..utils.hardware import precision_name
from . import distributed
from .calibrate import SHIPPED, calibrate_run
from .checkpoint import RunState
from .log import RunLogger, confusion_field
from .loop import EpochStats, StepContext
from .runner import note_bad_images, train_record

# Validation logits kept per shipped model for the calibration fit: at most this many values on a rank (64 MB
# of fp32, e.g. 16k images x 1000 classes); beyond it calibration loads the model back and evaluates it again.
MAX_KEPT_LOGITS = 2**24


@dataclass
class ShippedModels:
    """Writes best/ and final/ (save(name, metrics)) and keeps the validation logits of the epoch each was
    written from, so calibration needs no second pass over the validation split (engine/calibrate.py): the
    same weights, loader and precision. keep_logits=False (too many images x classes) keeps none."""

    save: Callable[[str, dict], object]
    keep_logits: bool
    logits: dict[str, list] = field(default_factory=dict)  # "best"/"final" -> this rank's [(logits, labels)]
    # multi-label: fits and stores the thresholds of best/ and final/ from the kept logits (and the number of
    # classes, the step), in place of the calibration (engine/multilabel.py's fit_run_thresholds, its first
    # arguments bound)
    fit_thresholds: Callable[[dict[str, list], int, int], object] | None = None

    def new_shard(self) -> list | None:
        """What the epoch's validation appends its logits to (None: not kept)."""
        return [] if self.keep_logits else None

    def validated(self, best: bool, metrics: dict, logits: list | None) -> None:
        """An epoch validated: a new best is written now; the latest epoch's logits are final/'s (final/ is
        written from the same weights once the loop ends)."""
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
        eval_cfg: EvalConfig,
        val_loader,
        ctx: StepContext,
        logger: RunLogger,
        step: int,
        num_classes: int,
    ) -> None:
        """Write final/, then fit and store the calibration of best/ and final/ (every rank calls it)."""
        self.save("final", metrics)
        distributed.barrier()  # every rank reads best/ and final/ only once rank 0 has written them
        if self.fit_thresholds is not None:
            skip_calibration(run_dir, logger, "multi-label: the probabilities are the sigmoids")
            self.fit_thresholds(self.logits, num_classes, step)
            return
        calibrate_run(run_dir, eval_cfg, val_loader, ctx, logger, step, self.logits, num_classes)
        distributed.barrier()  # ... and their calibrated model.json


def skip_calibration(run_dir: Path, logger: RunLogger, reason: str) -> None:
    """Record T = 1, not calibrated, with the reason, in best/ and final/ (rank 0 writes); one line."""
    fit = not_calibrated(reason)
    for name in SHIPPED:
        if (run_dir / name / META).is_file() and distributed.is_main():
            write_calibration(run_dir / name, fit.record("val"))
    logger.info(fit.line())


def patience_ran_out(state: RunState, patience: int) -> bool:
    """True when the last `patience` finished epochs did not improve on the best (train.patience; 0 = off)."""
    return patience > 0 and state.best_epoch > 0 and (state.epoch - 1) - state.best_epoch >= patience


def note_early_stop(state: RunState, train_cfg: TrainConfig, metric: str, logger: RunLogger) -> None:
    """One line when train.patience ended the run before train.epochs."""
    if state.epoch <= train_cfg.epochs and patience_ran_out(state, train_cfg.patience):
        logger.info(
            f"stopping early: {metric} has not improved for {state.epoch - 1 - state.best_epoch} epochs "
            f"(best {state.best_value:.4f} at epoch {state.best_epoch})"
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
            **({"val/map": va.map} if va.map is not None else {}),
            "bad_images": len(run.bad_files),
            "nonfinite_skipped": tr.nonfinite,
            **({"train_size": train_size} if train_size else {}),
            **confusion_field(confusion),
        },
        run.global_step,
    )
    logger.info(
        f"epoch {epoch}/{epochs}  train loss {tr.loss:.4f}  val loss {va.loss:.4f}  "
        + (f"val mAP {va.map:.4f}  " if va.map is not None else "")
        + f"val top1 {va.top1:.2%}  top5 {va.top5:.2%}  lr {lr:.2e}  {tr.images_per_s:.0f} img/s  "
        f"data wait {tr.data_wait_share:.0%}  {tr.seconds:.0f}s"
        + (f"  train size {train_size}px" if train_size else "")
    )
    metrics = {"epoch": epoch, "val_top1": va.top1, "val_top5": va.top5, "val_loss": va.loss}
    if va.map is not None:  # multi-label (engine/multilabel.py)
        metrics["val_map"] = va.map
    value = metrics[metric]
    if run.best_value is None or (value < run.best_value if metric == "val_loss" else value > run.best_value):
        run.best_value, run.best_epoch = value, epoch
    return metrics


def summarize(
    run: RunState,
    metrics: dict,
    seconds: float,
    run_dir: Path,
    ctx: StepContext,
    logger: RunLogger,
    cfg: Config,
    open_set: dict | None = None,
) -> dict:
    """The end-of-run summary (after the early-stopping note, if any): logged to metrics.jsonl, printed,
    returned. open_set: best/'s open-set record (engine/openset.py), None when there is none."""
    metric, train_cfg = cfg.ckpt.metric, cfg.train
    note_early_stop(run, train_cfg, metric, logger)
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
        "epochs": train_cfg.epochs,
        "epochs_run": run.epoch - 1,
        "time_budget_s": parse_duration(train_cfg.time_budget),
        "stopped_early": run.epoch <= train_cfg.epochs,
        "open_set": open_set,
        **({"best_val_map": best_metrics.get("val_map")} if "val_map" in metrics else {}),
    }
    logger.log({"kind": "summary", **summary}, run.global_step)
    logger.info(
        f"done in {summary['seconds']}s ({summary['train_images_per_s']} train img/s): best "
        + (f"val mAP {best_metrics['val_map']:.4f}, " if "val_map" in best_metrics else "")
        + f"val top1 {summary['best_val_top1']:.2%} at epoch {run.best_epoch}; model in {run_dir / 'best'}; "
        f"logs in {run_dir / 'metrics.jsonl'} and {run_dir / 'tb'}"
        + (f"; {len(run.bad_files)} bad images skipped" if run.bad_files else "")
    )
    logger.close()
    return summary
