"""The end of training: fit the calibration temperature of the shipped models on the validation split and
store it in their model.json (calibration.py has the fit; predict, eval, serve and the exports apply it).

Each of best/ and final/ is loaded back from disk (what ships is what is fitted) and evaluated once on the
validation split in the run's precision; final/ reuses best/'s fit when its weights are the same file.
Under torchrun every rank evaluates its shard (indices rank::world_size) and the logits are gathered to every
rank (gather_objects), so the fit sees each validation image exactly once, as one process would; the fit is
deterministic and only rank 0 writes.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..calibration import TemperatureFit, fit_temperature, not_calibrated
from ..config import EvalConfig
from ..modelfile import META, WEIGHTS, load_model_dir, read_meta, write_calibration
from . import distributed
from .log import RunLogger
from .loop import StepContext, evaluate

SHIPPED = ("best", "final")


def val_logits(model: torch.nn.Module, loader, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) fp32 logits and N labels of the whole validation split: this rank's shard, then every rank's."""
    batches: list = []
    evaluate(model, loader, None, ctx, logits_out=batches)
    num_classes = model.fc.out_features
    mine = (torch.cat([b[0] for b in batches]) if batches else torch.zeros(0, num_classes),
            torch.cat([b[1] for b in batches]) if batches else torch.zeros(0, dtype=torch.long))
    shards = distributed.gather_objects(mine)
    return torch.cat([s[0] for s in shards]), torch.cat([s[1] for s in shards])


def fit_model_dir(model_dir: Path, loader, ctx: StepContext) -> TemperatureFit:
    """Load a written model directory onto ctx's device and fit its temperature on loader's images."""
    loaded = load_model_dir(model_dir, ctx.device)
    logits, labels = val_logits(loaded.model, loader, ctx)
    return fit_temperature(logits, labels)


def calibrate_run(run_dir: Path, e: EvalConfig, val_loader, ctx: StepContext, logger: RunLogger, writes: bool,
                  step: int) -> TemperatureFit | None:
    """Fit and store the temperature of RUN_DIR/best and RUN_DIR/final (eval.calibrate); print best's line.

    eval.calibrate=false records T = 1 as not calibrated, without a pass over the data. Returns best's fit
    (None when the run has no best/). Every rank must call it (the logits are gathered)."""
    fits: dict[str, tuple[str, TemperatureFit]] = {}  # name -> (weights' sha256, its fit)
    for name in SHIPPED:
        model_dir = run_dir / name
        if not (model_dir / META).is_file():
            continue
        weights = read_meta(model_dir)["sha256"][WEIGHTS]
        same = [done for digest, done in fits.values() if digest == weights]
        if same:
            fit = same[0]
        elif e.calibrate:
            fit = fit_model_dir(model_dir, val_loader, ctx)
        else:
            fit = not_calibrated("eval.calibrate=false")
        fits[name] = (weights, fit)
        if writes:
            write_calibration(model_dir, fit.record("val"))
    if "best" not in fits:
        return None
    best = fits["best"][1]
    logger.info(best.line())
    logger.log({"kind": "calibration", "model": "best", **best.record("val")}, step)
    return best
