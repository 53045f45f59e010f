"""Multi-label training (data whose images hold several classes, data/csvlabels.py; the definitions are
utils/multilabel.py's): what the plan sets for it, the validation mAP of each epoch, and the per-class
decision thresholds fitted on the validation split at the end, stored as model.json's "multi_label" record
of best/ and final/.

- The plan (multi_label_choices): the loss is a sigmoid per class, BCE summed over classes (loss.name=bce;
  softmax cross-entropy makes the classes compete for one answer, so ce is replaced, and said), best/ is the
  epoch with the highest validation mAP (ckpt.metric=val_map, unless val_loss was asked for), and the
  open-set score is off (eval.open_set=off: "none of the classes" is already an answer of a multi-label
  model). The temperature calibration is skipped too (a multi-label model's probabilities are the
  sigmoids, T = 1 recorded as not calibrated).
- Every epoch's validation keeps its probabilities (gathered from every rank under torchrun, as the
  calibration fit gathers its logits) for the mAP, logged as val/map and used as ckpt.metric val_map.
- At the end, the thresholds of best/ and final/ are fitted on the probabilities of the epoch each was
  written from (a model whose epoch came before a resume is loaded back and evaluated once).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import Config
from ..data.sources import Splits
from ..errors import UserError
from ..records.modelfile import META, WEIGHTS, load_model_dir, read_meta, write_meta_record
from ..utils.multilabel import THRESHOLD_RULE, fit_thresholds, multilabel_metrics
from . import distributed
from .log import RunLogger
from .loop import StepContext, evaluate

SHIPPED = ("best", "final")
ACCURACY_METRICS = ("val_top1", "val_top5")  # replaced by val_map for multi-label data


def is_multi_label(splits: Splits) -> bool:
    return splits.train.label_sets is not None


def multi_label_choices(cfg: Config, splits: Splits) -> tuple[dict, list[str]]:
    """The config keys multi-label data needs (see the module docstring) and the lines that say so; ({}, [])
    for single-label data, where ckpt.metric=val_map is refused."""
    if not is_multi_label(splits):
        if cfg.ckpt.metric == "val_map":
            raise UserError(
                f"ckpt.metric=val_map: the mean average precision of multi-label data, and "
                f"{cfg.data.train} is single-label; use val_top1, val_top5 or val_loss"
            )
        return {}, []
    if cfg.distill.teacher:
        raise UserError(
            f"--teacher {cfg.distill.teacher}: distillation matches the teacher's softmax, and "
            f"{cfg.data.train} is multi-label (a sigmoid per class); train without --teacher"
        )
    chosen, lines = {}, []
    if cfg.loss.name != "bce":
        chosen["loss.name"] = "bce"
        lines.append(
            f"multi-label: loss.name=bce (a sigmoid per class) instead of {cfg.loss.name} (softmax answers "
            "one class)"
        )
    if cfg.ckpt.metric in ACCURACY_METRICS:
        chosen["ckpt.metric"] = "val_map"
        lines.append("multi-label: best/ is the epoch with the highest val mAP (ckpt.metric=val_map)")
    if cfg.eval.open_set != "off":
        chosen["eval.open_set"] = "off"
        lines.append("multi-label: open-set score off (an image may already hold none of the classes)")
    return chosen, lines


def gathered_probs(batches: list, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's [(logits, multi-hot targets), ...] (loop.evaluate's logits_out) -> (N, C) sigmoid
    probabilities and (N, C) targets of the whole validation split, every rank's shard. Every rank must
    call it."""
    empty = torch.zeros(0, num_classes)
    mine = (
        torch.cat([b[0] for b in batches]).float() if batches else empty,
        torch.cat([b[1] for b in batches]).float() if batches else empty,
    )
    shards = distributed.gather_objects(mine)
    return torch.sigmoid(torch.cat([s[0] for s in shards])), torch.cat([s[1] for s in shards])


def validation_map(batches: list, num_classes: int) -> float:
    """The mean average precision of an epoch's validation (every rank must call it)."""
    probs, targets = gathered_probs(batches, num_classes)
    return multilabel_metrics(probs, targets, [0.5] * num_classes)["map"]


def threshold_record(probs: torch.Tensor, targets: torch.Tensor, separator: str) -> dict:
    """model.json's "multi_label" record: per-class thresholds maximising F1 on these validation images."""
    return {
        "thresholds": fit_thresholds(probs, targets),
        "separator": separator,
        "rule": THRESHOLD_RULE,
        "fitted_on": "val",
        "images": len(probs),
    }


def model_dir_probs(model_dir: Path, loader, ctx: StepContext, num_classes: int):
    """Load a written model directory and evaluate it on loader: gathered (probabilities, targets)."""
    loaded = load_model_dir(model_dir, ctx.device)
    batches: list = []
    evaluate(loaded.model, loader, None, ctx, logits_out=batches)
    return gathered_probs(batches, num_classes)


def fit_run_thresholds(
    run_dir: Path,
    separator: str,
    val_loader,
    ctx: StepContext,
    logger: RunLogger,
    kept: dict[str, list],
    num_classes: int,
    step: int,
) -> dict | None:
    """Fit and store the thresholds of RUN_DIR/best and RUN_DIR/final; log best's; return best's record
    (None: no best/). kept: {"best"/"final": this rank's validation (logits, targets) of the epoch that model
    was written from}. Every rank must call it, with the same names kept."""
    records: dict[str, tuple[str, dict, dict]] = {}  # name -> (weights' sha256, record, metrics)
    for name in SHIPPED:
        model_dir = run_dir / name
        if not (model_dir / META).is_file():
            continue
        weights = read_meta(model_dir)["sha256"][WEIGHTS]
        same = [(record, metrics) for digest, record, metrics in records.values() if digest == weights]
        if same:
            record, metrics = same[0]
        else:
            if name in kept:
                probs, targets = gathered_probs(kept[name], num_classes)
            else:
                probs, targets = model_dir_probs(model_dir, val_loader, ctx, num_classes)
            record = threshold_record(probs, targets, separator)
            metrics = multilabel_metrics(probs, targets, record["thresholds"])
        records[name] = (weights, record, metrics)
        if distributed.is_main():  # rank 0 writes
            write_meta_record(model_dir, "multi_label", record)
    distributed.barrier()  # every rank returns once best/ and final/ hold their thresholds
    if "best" not in records:
        return None
    _, record, metrics = records["best"]
    logger.info(threshold_line(record, metrics))
    logger.log({"kind": "multi_label", "model": "best", **summary_fields(record, metrics)}, step)
    return record


def summary_fields(record: dict, metrics: dict) -> dict:
    """The thresholds and the validation metrics at them (without the per-class rows)."""
    return {
        "thresholds": record["thresholds"],
        "images": record["images"],
        **{k: v for k, v in metrics.items() if k != "per_class"},
    }


def threshold_line(record: dict, metrics: dict) -> str:
    """The console line of best/'s thresholds."""
    low, high = min(record["thresholds"]), max(record["thresholds"])
    return (
        f"multi-label thresholds: one per class ({low:.2f}-{high:.2f}), each maximising its F1 on "
        f"{record['images']} val images: mAP {metrics['map']:.4f}, micro F1 {metrics['micro_f1']:.4f}, "
        f"macro F1 {metrics['macro_f1']:.4f}, exact match {metrics['exact_match']:.2%}"
    )
