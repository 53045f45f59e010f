"""analysis/classmetrics.py: per-class precision/recall/F1, the worst class and the most confused pairs of a
confusion matrix, as eval's metrics.json holds them."""

import numpy as np
import pytest

from resnetcls.analysis.classmetrics import most_confused, per_class_table, worst_class

# rows: true a, b, c, d (d absent from the data); columns: predicted
CONFUSION = np.array([[9, 1, 0, 0], [2, 2, 0, 0], [0, 1, 3, 0], [0, 0, 0, 0]])
CLASSES = ["a", "b", "c", "d"]


def test_the_per_class_table_has_precision_recall_f1_and_support_and_none_for_an_absent_class():
    table = per_class_table(CONFUSION, CLASSES)
    assert table["a"]["recall"] == pytest.approx(0.9) and table["a"]["precision"] == pytest.approx(9 / 11)
    assert table["b"]["support"] == 4 and table["b"]["f1"] == pytest.approx(2 * 0.5 * 0.5 / 1.0)
    assert table["d"] == {"precision": 0.0, "recall": None, "f1": None, "support": 0}


def test_the_worst_class_is_the_lowest_recall_among_the_classes_present_the_first_on_a_tie():
    assert worst_class(per_class_table(CONFUSION, CLASSES)) == {"worst_class": "b", "worst_class_recall": 0.5}
    tie = np.array([[1, 1], [1, 1]])
    assert worst_class(per_class_table(tie, ["x", "y"]))["worst_class"] == "x"
    nothing = per_class_table(np.zeros((2, 2), dtype=int), ["x", "y"])
    assert worst_class(nothing) == {"worst_class": None, "worst_class_recall": None}


def test_the_most_confused_pairs_come_largest_first_ties_in_class_order():
    assert most_confused(CONFUSION, CLASSES, k=2) == [
        {"true": "b", "pred": "a", "count": 2},
        {"true": "a", "pred": "b", "count": 1},
    ]
