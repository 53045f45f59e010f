"""Multi-label classification: images that hold several classes at once (a CSV `label` of `cup;spoon`, or one
0/1 column per class), each class answered by its own sigmoid and decision threshold.

A leaf (torch only), so that the data layer (which reads the label sets), the engine (which fits the
thresholds at the end of training), the model directory (which stores them as model.json's "multi_label"
record), eval, predict, serve and the exporters share one definition:

- the targets of a batch are multi-hot rows (N, C) of 0/1 floats (`multi_hot`);
- a class is answered when its sigmoid probability reaches its threshold (`decide`); the thresholds are fitted
  per class on the validation images, each maximising that class's F1 (`fit_thresholds`; THRESHOLD_RULE
  says so in the record);
- the metrics are those of the multi-label literature and of scikit-learn's definitions: average precision
  per class (the mean of the precision at each positive's rank, no interpolation) and its mean over classes
  with a positive (mAP), micro and macro F1 at the thresholds, and the exact-match ratio (every class of an
  image right).
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError

DEFAULT_SEPARATOR = ";"  # data.label_separator: `cup;spoon` in a CSV's label column
DEFAULT_THRESHOLD = 0.5  # a class with no positive (or no negative) validation image keeps this one
THRESHOLD_RULE = "per class, the threshold that maximises its F1 on the validation images"


def multi_hot(label_sets: list[tuple[int, ...]] | list[list[int]], num_classes: int) -> torch.Tensor:
    """Label sets (class indices per image) -> (N, C) float 0/1 targets."""
    targets = torch.zeros(len(label_sets), num_classes)
    for row, labels in enumerate(label_sets):
        targets[row, list(labels)] = 1.0
    return targets


def parse_label_set(text: str, separator: str, where: str) -> list[str]:
    """`cup;spoon` -> ["cup", "spoon"] (stripped, in order, without repeats); an empty part is an error
    naming `where` (file:line)."""
    parts = [part.strip() for part in text.split(separator)]
    if any(not part for part in parts):
        raise UserError(f"{where}: label {text!r} has an empty label between separators {separator!r}")
    return list(dict.fromkeys(parts))


def decide(probs: torch.Tensor, thresholds: torch.Tensor | list[float]) -> torch.Tensor:
    """(N, C) probabilities -> (N, C) bool: the classes whose probability reaches their threshold."""
    return probs >= torch.as_tensor(thresholds, dtype=probs.dtype, device=probs.device)


def _best_f1_threshold(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """The threshold between two neighbouring scores that maximises F1 for one class (ties: the lowest
    threshold among the best, i.e. the one accepting the most)."""
    order = torch.argsort(scores, descending=True)
    sorted_scores, hits = scores[order].double(), positive[order].double()
    true_pos = torch.cumsum(hits, 0)
    predicted = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    f1 = 2 * true_pos / (predicted + hits.sum())
    # Only cut where the next score differs: equal scores are answered alike.
    distinct = torch.ones(len(scores), dtype=torch.bool)
    distinct[:-1] = sorted_scores[:-1] > sorted_scores[1:]
    f1 = torch.where(distinct, f1, torch.full_like(f1, -1.0))
    best = int(torch.argmax(f1))
    if best + 1 < len(scores):  # halfway to the next score down: margin on both sides
        return float((sorted_scores[best] + sorted_scores[best + 1]) / 2)
    return float(sorted_scores[best]) / 2


def fit_thresholds(probs: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per-class thresholds maximising each class's F1 on (N, C) probabilities against 0/1 targets; a class
    without both a positive and a negative image keeps DEFAULT_THRESHOLD."""
    thresholds = []
    for cls in range(probs.shape[1]):
        positive = targets[:, cls] > 0.5
        if bool(positive.all()) or not bool(positive.any()):
            thresholds.append(DEFAULT_THRESHOLD)
        else:
            thresholds.append(round(_best_f1_threshold(probs[:, cls].float(), positive), 6))
    return thresholds


def average_precision(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """One class's average precision: the mean, over its positive images, of the precision among the images
    scoring at least as high (ties ranked together); NaN without a positive."""
    positive = positive.bool()
    if not bool(positive.any()):
        return float("nan")
    scores = scores.double()
    # For each positive: images scoring >= its score, and the positives among them.
    ranked = (scores.unsqueeze(0) >= scores[positive].unsqueeze(1)).double()
    precision = (ranked * positive.double()).sum(1) / ranked.sum(1)
    return float(precision.mean())


def _f1(true_pos: float, false_pos: float, false_neg: float) -> float:
    denominator = 2 * true_pos + false_pos + false_neg
    return 2 * true_pos / denominator if denominator else float("nan")


def per_class_table(probs: torch.Tensor, targets: torch.Tensor, thresholds: list[float]) -> list[dict]:
    """One row a class: threshold, AP, precision, recall, F1 at the threshold, positives (support)."""
    answered, positive = decide(probs, thresholds), targets > 0.5
    rows = []
    for cls in range(probs.shape[1]):
        true_pos = float((answered[:, cls] & positive[:, cls]).sum())
        false_pos = float((answered[:, cls] & ~positive[:, cls]).sum())
        false_neg = float((~answered[:, cls] & positive[:, cls]).sum())
        rows.append(
            {
                "threshold": thresholds[cls],
                "ap": average_precision(probs[:, cls], positive[:, cls]),
                "precision": true_pos / (true_pos + false_pos) if true_pos + false_pos else float("nan"),
                "recall": true_pos / (true_pos + false_neg) if true_pos + false_neg else float("nan"),
                "f1": _f1(true_pos, false_pos, false_neg),
                "support": int(positive[:, cls].sum()),
            }
        )
    return rows


def multilabel_metrics(probs: torch.Tensor, targets: torch.Tensor, thresholds: list[float]) -> dict:
    """mAP (over classes with a positive image), micro/macro F1 at the thresholds, exact-match ratio, the
    mean number of labels per image (true and answered) and the per-class rows."""
    rows = per_class_table(probs, targets, thresholds)
    answered, positive = decide(probs, thresholds), targets > 0.5
    aps = [row["ap"] for row in rows if not math.isnan(row["ap"])]
    f1s = [row["f1"] for row in rows if not math.isnan(row["f1"])]
    true_pos = float((answered & positive).sum())
    return {
        "map": sum(aps) / len(aps) if aps else float("nan"),
        "micro_f1": _f1(true_pos, float((answered & ~positive).sum()), float((~answered & positive).sum())),
        "macro_f1": sum(f1s) / len(f1s) if f1s else float("nan"),
        "exact_match": float((answered == positive).all(1).double().mean()) if len(probs) else float("nan"),
        "labels_per_image": float(positive.sum(1).double().mean()) if len(probs) else float("nan"),
        "answered_per_image": float(answered.sum(1).double().mean()) if len(probs) else float("nan"),
        "per_class": rows,
    }


def pr_curve(scores: torch.Tensor, positive: torch.Tensor) -> tuple[list[float], list[float]]:
    """One class's precision-recall curve (recall rising), a point at each distinct score."""
    order = torch.argsort(scores.double(), descending=True)
    hits = positive.bool()[order].double()
    true_pos = torch.cumsum(hits, 0)
    precision = true_pos / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    recall = true_pos / max(float(hits.sum()), 1.0)
    return precision.tolist(), recall.tolist()


def cooccurrence(label_sets: list[tuple[int, ...]] | list[list[int]], num_classes: int) -> torch.Tensor:
    """(C, C) counts: images holding both classes (the diagonal: images holding the class)."""
    targets = multi_hot(label_sets, num_classes)
    return (targets.T @ targets).long()
