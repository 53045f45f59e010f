"""The end of training: fit the open-set score (utils/openset.py) of the shipped models and store it in their
model directory (open_set.safetensors and model.json's "open_set" record), so that predict answers "unknown"
for an image whose score falls below the threshold.

For best/ and final/, after their calibration (final/ reuses best/'s fit when its weights are the same file):

1. the pooled features and raw logits of at most TRAIN_PER_CLASS training images a class (TRAIN_MAX in all,
   drawn with train.seed), in the evaluation preprocessing (no augmentation) and at the run's precision ->
   fit_scorer(eval.open_set, ..., temperature = the model's calibrated temperature);
2. the validation images' scores -> their quantiles (kept, so predict can move the operating point) and the
   threshold that accepts the share eval.open_set_accept of them; with eval.open_set_unknown (train --unknown
   FOLDER: images of none of the classes), the threshold that maximises the balanced accuracy
   (known val images accepted + unknown images rejected) / 2 instead.

Under torchrun every rank computes its shard (indices rank::world_size) and the features are gathered to every
rank (gather_objects), as engine/calibrate.py gathers its logits; the fit is deterministic and only rank 0
writes. With fewer than MIN_VAL_IMAGES validation images nothing is fitted, and one line says why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import EvalConfig
from ..data.decode import is_image_file
from ..data.layouts import is_hidden
from ..data.sources import Samples, Splits
from ..errors import UserError
from ..records.modelfile import META, WEIGHTS, load_model_dir, read_meta, write_open_set
from ..utils.openset import (
    DEFAULT_SCORE,
    UNKNOWN,
    OpenSetScorer,
    fit_scorer,
    open_set_metrics,
    score_quantiles,
    threshold_for,
)
from . import distributed
from .calibrate import SHIPPED
from .log import RunLogger
from .loop import StepContext

TRAIN_PER_CLASS = 100  # training images a class whose features the score is fitted on, at most
TRAIN_MAX = 20_000  # ... and in all
MIN_VAL_IMAGES = 10  # fewer validation images set no threshold
NEVER_UNKNOWN = "predict never answers 'unknown' with this model"


def check_open_set(eval_cfg: EvalConfig, classes: list[str]) -> None:
    """The plan's refusals: a class named "unknown" (predict's answer for a rejected image) while open-set is
    on, and an --unknown FOLDER that is not a folder of images (or given with eval.open_set=off)."""
    if eval_cfg.open_set != "off" and UNKNOWN in classes:
        raise UserError(
            f"class {UNKNOWN!r} in DATA: predict answers {UNKNOWN!r} for an image of none of the classes, so "
            f"a class of that name could not be told apart; rename that class (e.g. to 'other'), or train "
            "without open-set rejection: --set eval.open_set=off"
        )
    folder = eval_cfg.open_set_unknown
    if not folder:
        return
    if eval_cfg.open_set == "off":
        raise UserError(
            f"--unknown {folder} (eval.open_set_unknown) sets the open-set threshold, but "
            "eval.open_set=off fits none; drop one of them"
        )
    if not Path(folder).is_dir():
        raise UserError(f"--unknown {folder} (eval.open_set_unknown): not a folder")
    if not unknown_files(folder):
        raise UserError(
            f"--unknown {folder} (eval.open_set_unknown): no image files in it or its sub-folders "
            "(.jpg, .png, .webp, ...)"
        )


def unknown_files(folder: str | Path) -> list[str]:
    """The image files (by extension) in folder and its sub-folders, hidden ones left out, sorted."""
    root = Path(folder)
    return sorted(
        str(path)
        for path in root.rglob("*")
        if path.is_file()
        and is_image_file(path)
        and not any(is_hidden(part) for part in path.relative_to(root).parents if part.name)
        and not is_hidden(path)
    )


def capped_indices(labels: list[int], num_classes: int, seed: int) -> list[int]:
    """At most TRAIN_PER_CLASS images a class (fewer with many classes: TRAIN_MAX in all), drawn with seed;
    sorted."""
    per_class = max(1, min(TRAIN_PER_CLASS, TRAIN_MAX // max(1, num_classes)))
    by_class: list[list[int]] = [[] for _ in range(num_classes)]
    for index, label in enumerate(labels):
        by_class[label].append(index)
    generator, chosen = torch.Generator().manual_seed(seed), []
    for rows in by_class:
        if len(rows) > per_class:
            rows = [rows[i] for i in torch.randperm(len(rows), generator=generator)[:per_class].tolist()]
        chosen += rows
    return sorted(chosen)


@dataclass
class OpenSetImages:
    """This rank's loaders of the fit: the capped training images (the score's statistics), the validation
    images (the threshold), the unknown images (train --unknown; None without); val_images: the whole
    validation split's size."""

    train: object
    val: object
    unknown: object | None
    val_images: int


def open_set_images(pipeline, splits: Splits, val_loader, eval_cfg: EvalConfig, seed: int) -> OpenSetImages:
    """The loaders of the fit, in the evaluation preprocessing (pipeline: engine/prepare.py's DataPipeline),
    each over this rank's shard; val_loader is the run's (already sharded). None where nothing will be fitted
    (eval.open_set=off, too few validation images)."""
    if eval_cfg.open_set == "off" or len(splits.val) < MIN_VAL_IMAGES:
        return OpenSetImages(None, val_loader, None, len(splits.val))
    world = distributed.world_from_env()
    capped = capped_indices(splits.train.labels, len(splits.classes), seed)
    train = pipeline.eval_loader(splits.train, capped[world.rank :: world.size])
    unknown = None
    if eval_cfg.open_set_unknown:
        paths = unknown_files(eval_cfg.open_set_unknown)
        samples = Samples(paths, [0] * len(paths), splits.classes)
        unknown = pipeline.eval_loader(samples, range(world.rank, len(paths), world.size))
    return OpenSetImages(train, val_loader, unknown, len(splits.val))


@torch.inference_mode()
def features_and_logits(model: torch.nn.Module, loader, ctx: StepContext) -> list:
    """[(fp32 pooled features, fp32 logits, labels), ...] of loader's batches on the CPU, in eval mode at
    ctx's precision (autocast, as loop.evaluate)."""
    model.eval()
    finish, batches = getattr(loader, "device_finish", None), []
    for batch in loader:
        if batch["images"] is None:
            continue
        images = ctx.to_device(batch["images"], finish)
        with ctx.autocast():
            features = model.forward_head(model.forward_features(images), pre_logits=True)
            logits = model.fc(features)
        batches.append((features.float().cpu(), logits.float().cpu(), batch["labels"].cpu()))
    return batches


def gathered(batches: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's batches (features_and_logits) -> (features, logits, labels) of every rank's shard. Every
    rank must call it."""
    shards = [shard for shard in distributed.gather_objects(batches) if shard]
    if not shards:
        return torch.zeros(0, 0), torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return tuple(torch.cat([b[part] for shard in shards for b in shard]) for part in range(3))


def score_name(eval_cfg: EvalConfig) -> str:
    """eval.open_set with "auto" resolved (utils/openset.py's DEFAULT_SCORE)."""
    return DEFAULT_SCORE if eval_cfg.open_set == "auto" else eval_cfg.open_set


def balanced_threshold(known: torch.Tensor, unknown: torch.Tensor) -> float:
    """The threshold that maximises the balanced accuracy, (known accepted + unknown rejected) / 2, where a
    score at or above it is accepted; among equal ones the lowest, set midway into the gap below it."""
    known, unknown = known.double().sort().values, unknown.double().sort().values
    candidates = torch.cat([known, unknown]).unique()  # sorted
    accepted = 1 - torch.searchsorted(known, candidates).double() / len(known)
    rejected = torch.searchsorted(unknown, candidates).double() / len(unknown)
    best = int(torch.argmax(accepted + rejected))  # the first of equal maxima: the lowest threshold
    if best == 0:
        return float(candidates[0])
    return float((candidates[best] + candidates[best - 1]) / 2)


@dataclass
class OpenSetFit:
    """One model's fit: its scorer (None: not fitted), model.json's record, the seconds it took."""

    scorer: OpenSetScorer | None
    record: dict
    seconds: float = 0.0

    def line(self) -> str:
        """The line train prints for best/."""
        record = self.record
        if self.scorer is None:
            return f"open set: not fitted ({record['note']}); {NEVER_UNKNOWN}"
        head = (
            f"open set: {record['score']} score fitted on {record['train_images']:,} training images (at "
            f"most {TRAIN_PER_CLASS} a class); threshold {record['threshold']:.4g}"
        )
        tail = f" ({self.seconds:.1f} s): predict answers '{UNKNOWN}' below it"
        if record["fitted_on"] == "val":
            return f"{head} accepts {record['val_accepted']:.1%} of {record['images']:,} val images{tail}"
        return (
            f"{head} (the best balanced accuracy between {record['images']:,} val and "
            f"{record['unknown_images']:,} unknown images) accepts {record['val_accepted']:.1%} of the val "
            f"images and rejects {record['unknown_rejected']:.1%} of the unknown ones{tail}"
        )


def not_fitted(note: str) -> OpenSetFit:
    return OpenSetFit(None, {"fitted": False, "note": note})


def fit_model(model: torch.nn.Module, temperature: float, images: OpenSetImages, eval_cfg, ctx) -> OpenSetFit:
    """The open-set fit of one model (see the module docstring). Every rank must call it."""
    started = time.perf_counter()
    features, logits, labels = gathered(features_and_logits(model, images.train, ctx))
    if not len(labels):
        return not_fitted("no training image could be read")
    score = score_name(eval_cfg)
    scorer = fit_scorer(score, features, labels, model.fc.out_features, temperature, seed=0)
    val_features, val_logits, _ = gathered(features_and_logits(model, images.val, ctx))
    if len(val_logits) < MIN_VAL_IMAGES:
        return not_fitted(f"{len(val_logits)} validation images; at least {MIN_VAL_IMAGES} are needed")
    known = scorer(val_features, val_logits)
    quantiles = score_quantiles(known)
    record = {"fitted_on": "val", "images": len(known), "train_images": len(labels), "quantiles": quantiles}
    unknown = None
    if images.unknown is not None:
        unknown_features, unknown_logits, _ = gathered(features_and_logits(model, images.unknown, ctx))
        unknown = scorer(unknown_features, unknown_logits) if len(unknown_logits) else None
    if unknown is None:
        threshold = threshold_for(quantiles, eval_cfg.open_set_accept)
        record.update(threshold=threshold, accept=eval_cfg.open_set_accept)
    else:
        threshold = balanced_threshold(known, unknown)
        measured = open_set_metrics(known, unknown, threshold)
        record.update(threshold=threshold, accept=measured["known_accepted"], fitted_on="val+unknown")
        record.update(unknown_images=len(unknown), unknown_rejected=measured["unknown_rejected"])
        record.update(auroc=measured["auroc"])
    record.update(score=score, val_accepted=float((known >= threshold).double().mean()))
    return OpenSetFit(scorer, record, time.perf_counter() - started)


def fit_model_dir(model_dir: Path, images: OpenSetImages, eval_cfg: EvalConfig, ctx) -> OpenSetFit:
    """Load a written (calibrated) model directory onto ctx's device and fit its open-set score."""
    loaded = load_model_dir(model_dir, ctx.device)
    return fit_model(loaded.model, loaded.temperature, images, eval_cfg, ctx)


def fit_open_set(
    run_dir: Path, eval_cfg: EvalConfig, images: OpenSetImages, ctx: StepContext, logger: RunLogger, step: int
) -> dict | None:
    """Fit and store the open-set score of RUN_DIR/best and RUN_DIR/final (eval.open_set); print best's line,
    log its record (kind "open_set") and return it for the summary (None when the run has no best/). Every
    rank must call it."""
    if eval_cfg.open_set == "off":
        best = not_fitted("eval.open_set=off")
    elif images.val_images < MIN_VAL_IMAGES:
        best = not_fitted(f"{images.val_images} validation images; at least {MIN_VAL_IMAGES} are needed")
    else:
        best = fit_shipped(run_dir, eval_cfg, images, ctx)
    if best is None:
        return None
    logger.info(best.line())
    logged = {k: v for k, v in best.record.items() if k != "quantiles"}
    logger.log({"kind": "open_set", "model": "best", **logged, "seconds": round(best.seconds, 2)}, step)
    return logged


def fit_shipped(run_dir: Path, eval_cfg: EvalConfig, images: OpenSetImages, ctx) -> OpenSetFit | None:
    """Fit best/ and final/ (the same fit for the same weights); rank 0 writes each. best/'s fit (None: no
    best/)."""
    fits: dict[str, OpenSetFit] = {}  # weights' sha256 -> its fit
    best = None
    for name in SHIPPED:
        model_dir = run_dir / name
        if not (model_dir / META).is_file():
            continue
        weights = read_meta(model_dir)["sha256"][WEIGHTS]
        if weights not in fits:
            fits[weights] = fit_model_dir(model_dir, images, eval_cfg, ctx)
        fit = fits[weights]
        best = fit if name == "best" else best
        if fit.scorer is not None and distributed.is_main():  # rank 0 writes
            write_open_set(model_dir, fit.scorer, stored_record(fit.record))
    distributed.barrier()  # every rank returns once the model directories hold their open-set record
    return best


def stored_record(record: dict) -> dict:
    """model.json's record: write_open_set adds the score, k and file."""
    return {k: v for k, v in record.items() if k not in ("score", "val_accepted")}
