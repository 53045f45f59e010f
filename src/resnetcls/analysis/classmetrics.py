"""The per-class numbers of a confusion matrix (rows: true classes, columns: predicted): precision, recall,
F1 and support per class, the worst class (lowest recall among those in the data), and the most confused
pairs. `resnetcls eval` (analysis/evaluate.py) reports them."""

from __future__ import annotations

import numpy as np


def per_class_table(confusion: np.ndarray, classes: list[str]) -> dict:
    """Precision, recall, F1 and support per class; recall/F1 are None for a class absent from the data."""
    tp = np.diag(confusion).astype(float)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    table = {}
    for i, name in enumerate(classes):
        precision = tp[i] / predicted[i] if predicted[i] else 0.0
        recall = tp[i] / support[i] if support[i] else None
        f1 = (
            None
            if recall is None
            else (2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        )
        table[name] = {
            "precision": float(precision),
            "recall": recall if recall is None else float(recall),
            "f1": f1 if f1 is None else float(f1),
            "support": int(support[i]),
        }
    return table


def worst_class(per_class: dict) -> dict:
    """{"worst_class": the class with the lowest recall among those in the data (the first in class order on
    a tie), "worst_class_recall": its recall}; None for both when no class is in the data."""
    present = [(row["recall"], index, name) for index, (name, row) in enumerate(per_class.items())]
    present = [item for item in present if item[0] is not None]
    if not present:
        return {"worst_class": None, "worst_class_recall": None}
    recall, _, name = min(present)
    return {"worst_class": name, "worst_class_recall": recall}


def most_confused(confusion: np.ndarray, classes: list[str], k: int = 20) -> list[dict]:
    """The k largest off-diagonal cells (true class predicted as another), largest first."""
    cells = np.flatnonzero(confusion)  # at most one per image: no second C x C array
    cells = cells[cells % (len(confusion) + 1) != 0]  # off the diagonal
    cells = cells[np.lexsort((cells, -confusion.flat[cells]))][:k]  # by count, ties in class order
    rows, cols = np.unravel_index(cells, confusion.shape)
    return [
        {"true": classes[i], "pred": classes[j], "count": int(confusion[i, j])} for i, j in zip(rows, cols)
    ]
