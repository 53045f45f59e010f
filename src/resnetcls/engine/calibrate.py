"""The end of training: fit the calibration temperature of the shipped models on the validation split and
store it in their model.json (calibration.py has the fit; predict, eval, serve and the exports apply it).

The fit of best/ and final/ uses the logits of the epoch validation each was written from (train keeps them,
engine/train.py ShippedModels: the same weights, the same loader, the run's precision), so no second pass over
the validation split runs; where they were not kept (a resumed run whose best epoch came before the resume, or
logits too large to keep), the model directory is loaded back from disk and evaluated once. final/ reuses
best/'s fit when its weights are the same file. Under torchrun every rank has its shard (indices
rank::world_size) and the logits are gathered to every rank (gather_objects), so the fit sees each validation
image exactly once, as one process would; the fit is deterministic and only rank 0 writes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import EvalConfig
from ..records.modelfile import META, WEIGHTS, load_model_dir, read_meta, write_calibration
from ..utils.calibration import TemperatureFit, fit_temperature, not_calibrated
from . import distributed
from .log import RunLogger
from .loop import StepContext, evaluate

SHIPPED = ("best", "final")


def gathered_logits(batches: list, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's [(logits, labels), ...] (loop.evaluate's logits_out) -> (N, C) fp32 logits and N labels of
    the whole validation split: every rank's shard. Every rank must call it."""
    mine = (
        torch.cat([b[0] for b in batches]) if batches else torch.zeros(0, num_classes),
        torch.cat([b[1] for b in batches]) if batches else torch.zeros(0, dtype=torch.long),
    )
    shards = distributed.gather_objects(mine)
    return torch.cat([s[0] for s in shards]), torch.cat([s[1] for s in shards])


def fit_model_dir(model_dir: Path, loader, ctx: StepContext) -> TemperatureFit:
    """Load a written model directory onto ctx's device and fit its temperature on loader's images."""
    loaded = load_model_dir(model_dir, ctx.device)
    batches: list = []
    evaluate(loaded.model, loader, None, ctx, logits_out=batches)
    return fit_temperature(*gathered_logits(batches, loaded.model.fc.out_features))


def calibrate_run(
    run_dir: Path,
    eval_cfg: EvalConfig,
    val_loader,
    ctx: StepContext,
    logger: RunLogger,
    step: int,
    kept: dict[str, list] | None = None,
    num_classes: int | None = None,
) -> TemperatureFit | None:
    """Fit and store the temperature of RUN_DIR/best and RUN_DIR/final (eval.calibrate); print best's line.

    kept: {"best"/"final": this rank's validation logits of the epoch that model was written from}
    (num_classes wide); a model without them is loaded back and evaluated. eval.calibrate=false records T = 1
    as not calibrated, without a pass over the data. Returns best's fit (None when the run has no best/).
    Every rank must call it (the logits are gathered), with the same names kept."""
    kept = kept or {}
    fits: dict[str, tuple[str, TemperatureFit]] = {}  # name -> (weights' sha256, its fit)
    for name in SHIPPED:
        model_dir = run_dir / name
        if not (model_dir / META).is_file():
            continue
        weights = read_meta(model_dir)["sha256"][WEIGHTS]
        same = [done for digest, done in fits.values() if digest == weights]
        if same:
            fit = same[0]
        elif eval_cfg.calibrate and name in kept:
            fit = fit_temperature(*gathered_logits(kept[name], num_classes))
        elif eval_cfg.calibrate:
            fit = fit_model_dir(model_dir, val_loader, ctx)
        else:
            fit = not_calibrated("eval.calibrate=false")
        fits[name] = (weights, fit)
        if distributed.is_main():  # rank 0 writes
            write_calibration(model_dir, fit.record("val"))
    if "best" not in fits:
        return None
    best = fits["best"][1]
    logger.info(best.line())
    logger.log({"kind": "calibration", "model": "best", **best.record("val")}, step)
    return best
