"""Temperature scaling: the fitted T lowers the NLL of held-out logits, in the right direction; guards."""

import pytest
import torch

from resnetcls.utils.calibration import (
    MIN_CALIBRATION_IMAGES,
    TEMPERATURE_RANGE,
    calibrated_probabilities,
    calibration_error,
    ece_of,
    fit_temperature,
    nll,
)


def logits_with_confidence(scale: float, n: int = 800, classes: int = 5, seed: int = 0):
    """Logits whose argmax is right about 60% of the time; scale > 1 makes them over-confident, < 1 under."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g)
    logits[torch.arange(n), labels] += 1.5
    return logits * scale, labels


@pytest.mark.parametrize("scale, direction", [(4.0, "above"), (0.3, "below")])
def test_the_temperature_fitted_on_one_half_lowers_the_nll_of_the_other(scale, direction):
    logits, labels = logits_with_confidence(scale)
    fit = fit_temperature(logits[:400], labels[:400])
    held_out, held_labels = logits[400:], labels[400:]
    assert nll(held_out, held_labels, fit.temperature) < nll(held_out, held_labels) - 0.05
    assert ece_of(held_out, held_labels, fit.temperature) < ece_of(held_out, held_labels)
    assert (fit.temperature > 1) if direction == "above" else (fit.temperature < 1)
    assert (
        fit.calibrated
        and fit.images == 400
        and fit.nll_after < fit.nll_before
        and fit.ece_after < fit.ece_before
    )
    # the same data gives the same temperature, bit for bit
    assert fit_temperature(logits[:400], labels[:400]).temperature == fit.temperature


def test_a_fit_is_the_minimum_of_the_nll():
    logits, labels = logits_with_confidence(3.0)
    fit = fit_temperature(logits, labels)
    for nearby in (fit.temperature * 0.97, fit.temperature * 1.03):
        assert nll(logits, labels, nearby) > fit.nll_after


def test_too_few_images_are_not_calibrated_and_keep_t_1():
    logits, labels = logits_with_confidence(4.0, n=MIN_CALIBRATION_IMAGES - 1)
    fit = fit_temperature(logits, labels)
    assert not fit.calibrated and fit.temperature == 1.0
    assert "at least 10" in fit.line() and fit.record()["fitted_on"] is None


def test_an_all_correct_split_with_huge_margins_is_held_at_the_documented_bound():
    labels = torch.arange(30) % 3
    logits = torch.nn.functional.one_hot(labels, 3).float() * 40  # NLL keeps falling as T -> 0
    fit = fit_temperature(logits, labels)
    assert fit.temperature == TEMPERATURE_RANGE[0] and "edge of the allowed range" in fit.line()
    assert fit.record()["temperature_range"] == list(TEMPERATURE_RANGE)


def test_the_record_and_line_say_what_was_fitted():
    logits, labels = logits_with_confidence(4.0, n=72)
    fit = fit_temperature(logits, labels)
    record = fit.record("val")
    assert record["fitted_on"] == "val" and record["images"] == 72 and record["calibrated"] is True
    assert set(record) >= {"temperature", "nll_before", "nll_after", "ece_before", "ece_after"}
    line = fit.line()
    assert line.startswith(f"calibration: temperature {fit.temperature:.3g} on 72 val images: NLL ")
    assert f"ECE {fit.ece_before:.3f} -> {fit.ece_after:.3f}" in line


def test_calibrated_probabilities_divide_the_logits_before_the_softmax():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    assert torch.allclose(calibrated_probabilities(logits, 2.0), (logits / 2).softmax(1))
    assert torch.equal(
        calibrated_probabilities(logits).argmax(1), calibrated_probabilities(logits, 5.0).argmax(1)
    )


def test_ece_of_equal_confidences_is_the_gap_to_the_accuracy():
    confidence = torch.full((8,), 0.7)
    correct = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0]).bool()
    ece, bins = calibration_error(confidence, correct)
    assert ece == pytest.approx(0.075) and sum(b["count"] for b in bins) == 8
