import math

import pytest
import torch

from resnetcls.errors import UserError
from resnetcls.utils.multilabel import (
    DEFAULT_THRESHOLD,
    average_precision,
    cooccurrence,
    decide,
    fit_thresholds,
    multi_hot,
    multilabel_metrics,
    parse_label_set,
    pr_curve,
)


def test_multi_hot_and_cooccurrence():
    sets = [(0, 2), (1,), (0, 1, 2), ()]
    assert multi_hot(sets, 3).tolist() == [[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 0]]
    assert cooccurrence(sets, 3).tolist() == [[2, 1, 2], [1, 2, 1], [2, 1, 2]]


def test_parse_label_set_strips_and_refuses_empty_parts():
    assert parse_label_set(" cup ; spoon;cup", ";", "m.csv:3") == ["cup", "spoon"]
    with pytest.raises(UserError, match=r"m.csv:4: label 'cup;;spoon' has an empty label"):
        parse_label_set("cup;;spoon", ";", "m.csv:4")


def test_average_precision_known_values():
    # Ranked: pos (P=1/1), neg, pos (P=2/3) -> AP = (1 + 2/3) / 2
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1])
    positive = torch.tensor([1, 0, 1, 0])
    assert average_precision(scores, positive) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(scores, torch.tensor([1, 1, 0, 0])) == 1.0
    assert math.isnan(average_precision(scores, torch.zeros(4)))


def test_thresholds_maximise_f1_and_metrics():
    probs = torch.tensor([[0.9, 0.2], [0.6, 0.7], [0.4, 0.1], [0.3, 0.8]])
    targets = torch.tensor([[1, 0], [1, 1], [0, 0], [0, 1]]).float()
    thresholds = fit_thresholds(probs, targets)
    # class 0: positives at 0.9 and 0.6, negatives at 0.4 and 0.3 -> cut halfway between 0.6 and 0.4
    assert thresholds[0] == pytest.approx(0.5)
    assert thresholds[1] == pytest.approx(0.45)
    assert decide(probs, thresholds).tolist() == targets.bool().tolist()
    metrics = multilabel_metrics(probs, targets, thresholds)
    assert metrics["map"] == 1.0 and metrics["exact_match"] == 1.0
    assert metrics["micro_f1"] == 1.0 and metrics["macro_f1"] == 1.0
    assert [row["support"] for row in metrics["per_class"]] == [2, 2]
    # A stricter threshold on class 1 misses one of its two positives.
    strict = multilabel_metrics(probs, targets, [0.5, 0.75])
    assert strict["exact_match"] == 0.75
    assert strict["per_class"][1]["recall"] == 0.5
    assert strict["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 0 + 1))


def test_class_without_negatives_keeps_the_default_threshold():
    probs = torch.tensor([[0.2, 0.9], [0.3, 0.1]])
    targets = torch.tensor([[1, 1], [1, 0]]).float()
    assert fit_thresholds(probs, targets)[0] == DEFAULT_THRESHOLD


def test_pr_curve_ends_at_full_recall():
    precision, recall = pr_curve(torch.tensor([0.9, 0.5, 0.4]), torch.tensor([1, 0, 1]))
    assert recall == [0.5, 0.5, 1.0]
    assert precision == pytest.approx([1.0, 0.5, 2 / 3])
