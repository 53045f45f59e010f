"""`resnetcls eval`: every metric of a model directory on a DATA argument, as files a person can look at.

OUT/metrics.json holds every number; OUT/per_class.csv, OUT/confusion_matrix.csv, and the figures
confusion_matrix.png, reliability.png and most_confident_wrong.png show them. The last shows each image as
the model saw it beside its Grad-CAM overlay for the (wrong) predicted class: where the model found the
evidence that misled it (explain.py). Every number comes from the probabilities predict and serve give:
calibrated with model.json's temperature (calibration.py); metrics.json's "calibration" holds the
temperature and ECE/NLL before (raw softmax) and after.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .atomic import csv_text, write_text_atomic
from .calibration import calibrated_probabilities, calibration_error, nll
from .data.loader import build_loader
from .data.sources import Samples, load_eval_samples
from .errors import UserError
from .explain import Explainer
from .predict import Predictor
from .progress import progress_bar

FIGURES = {"confusion": "confusion_matrix.png", "reliability": "reliability.png",
           "wrong": "most_confident_wrong.png"}


def _per_class(confusion: np.ndarray, classes: list[str]) -> dict:
    """Precision, recall, F1 and support per class; recall/F1 are None for a class absent from the data."""
    tp = np.diag(confusion).astype(float)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    table = {}
    for i, name in enumerate(classes):
        precision = tp[i] / predicted[i] if predicted[i] else 0.0
        recall = tp[i] / support[i] if support[i] else None
        f1 = None if recall is None else (2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        table[name] = {"precision": float(precision), "recall": recall if recall is None else float(recall),
                       "f1": f1 if f1 is None else float(f1), "support": int(support[i])}
    return table


def compute_metrics(probs: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """All numbers of an evaluation. Rows of the confusion matrix are true classes, columns predicted.

    Balanced accuracy and the macro averages are taken over the classes present in the data, so a DATA
    holding a subset of the model's classes is judged on those (predictions into the others still count
    as errors).
    """
    n, num_classes = probs.shape
    confidence, pred = probs.max(dim=1)
    k = min(5, num_classes)
    top5 = probs.topk(k, dim=1).indices
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels.numpy(), pred.numpy()), 1)
    per_class = _per_class(confusion, classes)
    present = [c for c in classes if per_class[c]["support"]]
    ece, bins = calibration_error(confidence, pred == labels)
    pairs = [(int(confusion[i, j]), classes[i], classes[j]) for i, j in zip(*np.nonzero(confusion)) if i != j]
    nll = float(-torch.log(probs[torch.arange(n), labels].clamp_min(1e-12)).mean())
    return {
        "images": n,
        "top1": float((pred == labels).float().mean()),
        "top5": float((top5 == labels[:, None]).any(dim=1).float().mean()),
        "top5_k": k,
        "balanced_accuracy": float(np.mean([per_class[c]["recall"] for c in present])),
        "macro_precision": float(np.mean([per_class[c]["precision"] for c in present])),
        "macro_recall": float(np.mean([per_class[c]["recall"] for c in present])),
        "macro_f1": float(np.mean([per_class[c]["f1"] for c in present])),
        "macro_over": f"{len(present)} classes present in the data",
        "nll": nll,
        "ece": ece,
        "ece_bins": bins,
        "per_class": per_class,
        "most_confused": [{"true": t, "pred": p, "count": c} for c, t, p in sorted(pairs, reverse=True)[:20]],
        "confusion_matrix": confusion.tolist(),
        "classes": classes,
        "classes_in_data": present,
    }


def run_model(predictor: Predictor, samples: Samples, batch_size: int, num_workers: int):
    """(raw logits, labels, sample indices, bad images) over samples, in the model's preprocessing."""
    loader = build_loader(samples, predictor.transform, batch_size, shuffle=False, num_workers=num_workers)
    logits, labels, index, bad = [], [], [], []
    with progress_bar(len(samples.paths), "eval") as bar:
        for batch in loader:
            bad += batch["bad"]
            if batch["images"] is not None:
                logits.append(predictor.logits(batch["images"]))
                labels.append(torch.as_tensor(batch["labels"]))
                index.append(torch.as_tensor(batch["index"]))
            bar.update(len(batch["bad"]) + (len(batch["labels"]) if batch["images"] is not None else 0))
    if not logits:
        return None, None, None, bad
    return torch.cat(logits), torch.cat(labels), torch.cat(index), bad


def calibration_summary(logits: torch.Tensor, labels: torch.Tensor, predictor: Predictor, metrics: dict) -> dict:
    """The model's temperature and, on this data, ECE and NLL of the raw softmax (before) and of the calibrated
    probabilities every other number here is computed from (after), with the raw softmax's reliability bins."""
    confidence, pred = calibrated_probabilities(logits).max(dim=1)
    ece_before, bins_before = calibration_error(confidence, pred == labels)
    record = predictor.loaded.meta.get("calibration", {})
    return {"temperature": predictor.temperature, "calibrated": bool(record.get("calibrated", False)),
            "fitted_on": record.get("fitted_on"), "fitted_images": record.get("images"),
            "ece_before": ece_before, "ece_after": metrics["ece"], "nll_before": nll(logits, labels),
            "nll_after": nll(logits, labels, predictor.temperature), "ece_bins_before": bins_before}


def most_confident_wrong(probs, labels, index, samples: Samples, classes: list[str], k: int) -> list[dict]:
    """The k wrong predictions with the highest predicted probability, most confident first."""
    confidence, pred = probs.max(dim=1)
    wrong = torch.nonzero(pred != labels).flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:k].tolist()
    return [{"path": samples.paths[int(index[i])], "true": classes[int(labels[i])],
             "pred": classes[int(pred[i])], "prob": float(confidence[i])} for i in order]


def write_tables(metrics: dict, out: Path) -> None:
    """per_class.csv and confusion_matrix.csv (first column: true class; header: predicted classes)."""
    classes = metrics["classes"]
    per_class = [["class", "precision", "recall", "f1", "support"]]
    for c in classes:
        row = metrics["per_class"][c]
        per_class.append([c] + ["" if row[k] is None else f"{row[k]:.6f}" for k in ("precision", "recall", "f1")]
                         + [row["support"]])
    write_text_atomic(out / "per_class.csv", csv_text(per_class))
    confusion = [["true \\ predicted"] + classes] + [[c] + row for c, row in zip(classes, metrics["confusion_matrix"])]
    write_text_atomic(out / "confusion_matrix.csv", csv_text(confusion))


def explain_wrong(predictor: Predictor, wrong: list[dict]) -> list[np.ndarray | None]:
    """Each wrong image's model input beside its Grad-CAM for the predicted class (None: unreadable now)."""
    explainer = Explainer(predictor.model, predictor.loaded.preprocess, predictor.device,
                          temperature=predictor.temperature)
    index = {name: i for i, name in enumerate(predictor.classes)}
    views = []
    for item in wrong:
        image = predictor.load(item["path"])
        views.append(None if isinstance(image, str) else explainer.explain(image, index[item["pred"]]).side_by_side())
    return views


def write_figures(metrics: dict, out: Path, wrong_views: list | None = None) -> dict:
    """The three eval PNGs; the heatmap shows the classes present in the data or predicted; wrong_views (from
    explain_wrong) go into the sheet of the most confidently wrong images."""
    from . import figures  # matplotlib is imported only when figures are drawn
    confusion = np.array(metrics["confusion_matrix"])
    keep = [i for i in range(len(metrics["classes"])) if confusion[i].sum() or confusion[:, i].sum()]
    figures.confusion_heatmap(confusion[np.ix_(keep, keep)], [metrics["classes"][i] for i in keep],
                              out / FIGURES["confusion"])
    figures.reliability_diagram(metrics["ece_bins"], metrics["ece"], out / FIGURES["reliability"],
                                metrics.get("calibration"))
    figures.contact_sheet(metrics["most_confident_wrong"], out / FIGURES["wrong"], views=wrong_views)
    return dict(FIGURES)


def evaluate_samples(predictor: Predictor, samples: Samples, out: Path, about: dict, batch_size: int = 64,
                     num_workers: int = -1, wrong_k: int = 18) -> dict:
    """Evaluate already-labelled samples (in the model's class order); write every output into out."""
    if not len(samples):
        raise UserError(f"{about.get('data', 'DATA')}: no images to evaluate")
    logits, labels, index, bad = run_model(predictor, samples, batch_size, num_workers)
    for path, reason in bad:
        print(f"warning: skipped bad image {path}: {reason}", file=sys.stderr)
    if logits is None:
        raise UserError(f"{about.get('data', 'DATA')}: none of the {len(samples)} images could be decoded")
    probs = calibrated_probabilities(logits, predictor.temperature)  # what predict and serve give
    metrics = compute_metrics(probs, labels, predictor.classes)
    metrics["calibration"] = calibration_summary(logits, labels, predictor, metrics)
    metrics["most_confident_wrong"] = most_confident_wrong(probs, labels, index, samples, predictor.classes,
                                                           wrong_k)
    metrics.update({"model": str(predictor.loaded.path), **about, "inference_precision": predictor.precision,
                    "bad_images": [{"path": p, "reason": r} for p, r in bad]})
    out.mkdir(parents=True, exist_ok=True)
    write_tables(metrics, out)
    metrics["figures"] = write_figures(metrics, out, explain_wrong(predictor, metrics["most_confident_wrong"]))
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    metrics["out"] = str(out)
    return metrics


def evaluate_model(model: str | os.PathLike, data: str, out_dir: str | os.PathLike | None = None,
                   batch_size: int = 64, num_workers: int = -1, precision: str = "auto") -> dict:
    """Evaluate MODEL on DATA; write OUT (default: eval/ next to the model, i.e. RUN_DIR/eval).

    DATA's classes may be a subset of the model's; classes the model does not know are an error naming them.
    precision is the Predictor's (auto: bf16 where the CPU/GPU has it natively; fp32 for bit-stable numbers).
    """
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: expected a whole number of at least 1")
    predictor = Predictor(model, precision=precision)
    samples, split = load_eval_samples(data, predictor.classes)
    out = Path(out_dir) if out_dir else predictor.loaded.path.parent / "eval"
    return evaluate_samples(predictor, samples, out, {"data": str(data), "split": split}, batch_size, num_workers)
