"""Open-set scores, thresholds and metrics: known answers on planted feature clusters."""

import pytest
import torch

from resnetcls.utils.openset import (
    QUANTILES,
    SCORES,
    auroc,
    fit_scorer,
    fpr_at_tpr,
    open_set_metrics,
    score_quantiles,
    threshold_for,
)

DIM, CLASSES = 16, 3


def clusters(n: int, centres: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(centres)).repeat_interleave(n)
    return centres[labels] + 0.3 * torch.randn(len(labels), DIM, generator=generator), labels


@pytest.fixture(scope="module")
def planted():
    """Three known classes on positive axes, an unknown class on a negative one; the 'head' reads the axes."""
    centres = torch.zeros(CLASSES + 1, DIM)
    for c in range(CLASSES):
        centres[c, c] = 4.0
    centres[CLASSES, CLASSES + 1] = 4.0  # the unknown class: an axis the head has no row for
    head = torch.eye(CLASSES, DIM) * 3
    train, train_labels = clusters(40, centres[:CLASSES], seed=0)
    known, _ = clusters(30, centres[:CLASSES], seed=1)
    unknown, _ = clusters(30, centres[CLASSES:], seed=2)
    return head, (train, train_labels), known, unknown


@pytest.mark.parametrize("score", SCORES)
def test_every_score_separates_a_far_unknown_class(planted, score):
    head, (train, labels), known, unknown = planted
    scorer = fit_scorer(score, train, labels, CLASSES)
    known_scores, unknown_scores = scorer(known, known @ head.T), scorer(unknown, unknown @ head.T)
    assert auroc(known_scores, unknown_scores) > 0.99
    quantiles = score_quantiles(known_scores)
    metrics = open_set_metrics(known_scores, unknown_scores, threshold_for(quantiles, 0.95))
    assert metrics["unknown_rejected"] > 0.95
    assert 0.9 <= metrics["known_accepted"] <= 1.0


def test_the_scorer_round_trips_through_its_tensors(planted):
    head, (train, labels), known, _ = planted
    for score in ("mahalanobis", "knn"):
        scorer = fit_scorer(score, train, labels, CLASSES)
        again = type(scorer)(score, scorer.tensors(), k=scorer.k)
        torch.testing.assert_close(again(known, known @ head.T), scorer(known, known @ head.T))
        assert {"class_mean", "class_var", "class_count"} <= set(scorer.tensors())
        assert scorer.tensors()["class_count"].tolist() == [40.0, 40.0, 40.0]


def test_threshold_accepts_the_stated_share_of_known_scores():
    scores = torch.arange(1000, dtype=torch.float32)
    quantiles = score_quantiles(scores)
    assert len(quantiles) == QUANTILES
    for accept in (0.5, 0.9, 0.95, 1.0):
        assert (scores >= threshold_for(quantiles, accept)).float().mean().item() == pytest.approx(
            accept, abs=2e-3
        )


def test_auroc_and_fpr_known_answers():
    same = torch.tensor([1.0, 2.0, 3.0])
    assert auroc(same, same) == pytest.approx(0.5)
    assert auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 0.0
    known = torch.arange(100, dtype=torch.float32)
    assert fpr_at_tpr(known, torch.tensor([50.0, 2.0, 1.0, -1.0])) == 0.25


def test_an_unknown_score_name_is_refused():
    with pytest.raises(ValueError, match="unknown open-set score 'odin'"):
        fit_scorer("odin", torch.zeros(2, DIM), torch.zeros(2, dtype=torch.long), 1)
