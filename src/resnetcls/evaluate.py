"""`resnetcls eval`: metrics of a model directory on a DATA argument, written to metrics.json."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from .data.loader import build_loader
from .data.sources import load_eval_samples
from .errors import UserError
from .predict import Predictor


def compute_metrics(probs: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """Top-1/top-5, per-class recall and the confusion matrix (rows = true class, columns = predicted)."""
    n, num_classes = probs.shape
    pred = probs.argmax(dim=1)
    top5 = probs.topk(min(5, num_classes), dim=1).indices
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones(n, dtype=torch.long), accumulate=True)
    support = confusion.sum(dim=1)
    return {
        "images": n,
        "top1": float((pred == labels).float().mean()),
        "top5": float((top5 == labels[:, None]).any(dim=1).float().mean()),
        "per_class": {c: {"support": int(support[i]),
                          "recall": float(confusion[i, i] / support[i]) if support[i] else None}
                      for i, c in enumerate(classes)},
        "confusion_matrix": confusion.tolist(),
        "classes": classes,
    }


def evaluate_model(model: str | os.PathLike, data: str, out_dir: str | os.PathLike | None = None,
                   batch_size: int = 64, num_workers: int = -1) -> dict:
    """Evaluate MODEL on DATA; write OUT/metrics.json (default: next to the model, in eval/)."""
    predictor = Predictor(model)
    samples, split = load_eval_samples(data, predictor.classes)
    if not len(samples):
        raise UserError(f"{data}: no images to evaluate")
    loader = build_loader(samples, predictor.transform, batch_size, shuffle=False, num_workers=num_workers)
    all_probs, all_labels, bad = [], [], []
    for batch in loader:
        bad += batch["bad"]
        if batch["images"] is not None:
            all_probs.append(predictor.probabilities(batch["images"]))
            all_labels.append(batch["labels"])
    for path, reason in bad:
        print(f"warning: skipped bad image {path}: {reason}", file=sys.stderr)
    if not all_probs:
        raise UserError(f"{data}: none of the {len(samples)} images could be decoded")
    metrics = compute_metrics(torch.cat(all_probs), torch.cat(all_labels), predictor.classes)
    metrics.update({"model": str(predictor.loaded.path), "data": str(data), "split": split,
                    "bad_images": [{"path": p, "reason": r} for p, r in bad]})
    out = Path(out_dir) if out_dir else predictor.loaded.path.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    metrics["out"] = str(out)
    return metrics
