"""Confidence calibration: the expected calibration error and temperature scaling (Guo et al. 2017, "On
Calibration of Modern Neural Networks").

A leaf (torch only), so that the engine (which fits the temperature at the end of training), evaluate (which
reports ECE before and after), predict and the exporters (which apply it) share one definition.

Temperature scaling divides the logits by one scalar T > 0 before the softmax: argmax, and so accuracy, is
unchanged; T > 1 softens over-confident probabilities, T < 1 sharpens under-confident ones. T minimises the
negative log-likelihood (NLL) of the true classes on held-out (validation) logits.

The probabilities this project shows are a softmax over the classes for every model, also for one trained with
loss.name=bce (sigmoid per class; predict has always ranked those by softmax), so T is fitted by the softmax
NLL for both losses and applied the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ECE_BINS = 15
# The fitted T is kept inside this range. A split the model gets entirely right with large margins has its
# NLL falling forever as T -> 0 (probabilities pushed to exactly 1); 1/10 .. 10 is far wider than what real
# networks need (Guo et al. report 1.1 to 3.5) and still leaves a probability that means something.
TEMPERATURE_RANGE = (0.1, 10.0)
# Fewer validation images than this: no fit (T = 1), one scalar estimated from a handful of images is noise.
MIN_CALIBRATION_IMAGES = 10
_SEARCH_STEPS = 80  # golden-section steps on log T: the bracket shrinks by 0.618**80, far below float noise


def calibration_error(
    confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS
) -> tuple[float, list]:
    """Expected calibration error over equal-width confidence bins (Guo et al. 2017), and the bins."""
    edges = torch.linspace(0, 1, bins + 1)
    n, ece, table = len(confidence), 0.0, []
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        inside = (confidence > lo) & (confidence <= hi) if lo > 0 else confidence <= hi
        count = int(inside.sum())
        conf = float(confidence[inside].mean()) if count else None
        acc = float(correct[inside].float().mean()) if count else None
        if count:
            ece += count / n * abs(acc - conf)
        table.append(
            {"lo": round(lo, 4), "hi": round(hi, 4), "count": count, "confidence": conf, "accuracy": acc}
        )
    return ece, table


def calibrated_probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / T) over the classes, in fp32 (what predict, serve, eval and the exports give)."""
    return (logits.float() / temperature).softmax(dim=1)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes under softmax(logits / T), in float64."""
    log_probs = (logits.double() / temperature).log_softmax(dim=1)
    return float(-log_probs[torch.arange(len(labels)), labels].mean()) + 0.0  # + 0.0: never print -0.000


def ece_of(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """ECE of softmax(logits / T) against labels."""
    confidence, pred = calibrated_probabilities(logits, temperature).max(dim=1)
    return calibration_error(confidence, pred == labels)[0]


@dataclass
class TemperatureFit:
    """The outcome of fit_temperature; record() is what model.json stores under "calibration"."""

    temperature: float
    images: int
    nll_before: float | None = None
    nll_after: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None
    calibrated: bool = True
    note: str = ""  # why no fit was made, or that T was held at the edge of TEMPERATURE_RANGE

    def record(self, fitted_on: str = "val") -> dict:
        def rounded(x):
            return None if x is None else round(x, 6)

        return {
            "calibrated": self.calibrated,
            "temperature": round(self.temperature, 6),
            "fitted_on": fitted_on if self.calibrated else None,
            "images": self.images,
            "nll_before": rounded(self.nll_before),
            "nll_after": rounded(self.nll_after),
            "ece_before": rounded(self.ece_before),
            "ece_after": rounded(self.ece_after),
            "temperature_range": list(TEMPERATURE_RANGE),
            **({"note": self.note} if self.note else {}),
        }

    def line(self) -> str:
        """The line train prints, e.g. 'calibration: temperature 1.42 on 72 val images: NLL 0.61 -> ...'."""
        if not self.calibrated:
            return f"calibration: none, temperature 1 ({self.note})"
        return (
            f"calibration: temperature {self.temperature:.3g} on {self.images} val images: NLL "
            f"{self.nll_before:.3f} -> {self.nll_after:.3f}, "
            f"ECE {self.ece_before:.3f} -> {self.ece_after:.3f}" + (f" ({self.note})" if self.note else "")
        )


def not_calibrated(reason: str, images: int = 0) -> TemperatureFit:
    """T = 1 with the reason (eval.calibrate=false, too few images): what an uncalibrated model records."""
    return TemperatureFit(1.0, images, calibrated=False, note=reason)


def _golden_section(f, lo: float, hi: float, steps: int = _SEARCH_STEPS) -> float:
    """The minimiser of a unimodal f on [lo, hi] (NLL: convex in 1/T, so unimodal in log T); deterministic."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(steps):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    best = min((f(lo), lo), (fc, c), (fd, d), (f(hi), hi))  # the ends too: a monotone NLL stops at a bound
    return best[1]


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> TemperatureFit:
    """The T in TEMPERATURE_RANGE minimising the NLL of softmax(logits / T) on (N, C) logits and N labels.

    A bounded 1-D search on log T (golden section, float64): deterministic, no learning rate to tune.
    Fewer than MIN_CALIBRATION_IMAGES images: T = 1, not calibrated. A minimum at the edge of the range (a
    split the model gets all right with large margins, where NLL falls as T -> 0) is held there and noted.
    """
    n = int(labels.shape[0])
    if n < MIN_CALIBRATION_IMAGES:
        return not_calibrated(f"only {n} validation images; at least {MIN_CALIBRATION_IMAGES} are needed", n)
    logits, labels = logits.detach().double().cpu(), labels.detach().long().cpu()
    lo, hi = (math.log(t) for t in TEMPERATURE_RANGE)
    log_t = _golden_section(lambda x: nll(logits, labels, math.exp(x)), lo, hi)
    temperature = math.exp(log_t)
    note = ""
    if abs(log_t - lo) < 1e-6 or abs(log_t - hi) < 1e-6:
        temperature = TEMPERATURE_RANGE[0] if abs(log_t - lo) < 1e-6 else TEMPERATURE_RANGE[1]
        note = (
            f"held at the edge of the allowed range {TEMPERATURE_RANGE[0]:g}..{TEMPERATURE_RANGE[1]:g}: "
            "the validation split does not pin it down"
        )
    return TemperatureFit(
        temperature,
        n,
        nll(logits, labels),
        nll(logits, labels, temperature),
        ece_of(logits, labels),
        ece_of(logits, labels, temperature),
        note=note,
    )
