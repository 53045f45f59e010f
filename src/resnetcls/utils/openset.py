"""Open-set recognition: a score that says how much an image looks like one of the known classes, the
threshold below which a model answers "unknown", and the metrics of that answer.

A leaf (torch only), so that the engine (which fits the score at the end of training), the model directory
(which stores it), predict, serve, eval and the exporters (which compute it inside the ONNX graph) share one
definition. Higher scores mean "more like a known class" for every score:

- msp: the largest calibrated softmax probability (Hendrycks & Gimpel 2017), the baseline;
- energy: T * logsumexp(logits / T), the negative free energy (Liu et al. 2020);
- mahalanobis: minus the smallest Mahalanobis distance of the L2-normalised pooled features to a class mean,
  with one shared, shrunk covariance (Lee et al. 2018; normalised as in Mueller & Hein 2025);
- knn: the cosine similarity of the normalised features to their k-th nearest training feature (Sun et al.
  2022; k = KNN_K = 1, the nearest), against a bank of at most BANK_PER_CLASS features a class (BANK_MAX in
  all).

The feature-space scores are fitted on training images (statistics) and the threshold on validation images
(an accepted share of known images, `accept`); see engine/openset.py. The per-class mean and variance of the
raw pooled features are kept as well: adding a class later (inference/addclass.py) imprints its head row from
them and keeps the old classes from being forgotten.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UserError

SCORES = ("msp", "energy", "mahalanobis", "knn")
# The default, measured by `python bench/open_set.py --work DIR` (COIL-100 objects 1-40 known; unknown:
# objects 41-50 and natural photographs): knn accepted the fewest unknown images at 95% of known ones
# accepted, a tenth of max-softmax's share on unseen objects or less, for a few percent of the forward's time
# (docs/benchmarks.md has the table).
DEFAULT_SCORE = "knn"
DEFAULT_ACCEPT = 0.95  # the share of known validation images the threshold accepts
UNKNOWN = "unknown"  # the reserved label of a rejected image
OPEN_SET_MODES = ("auto", "on", "off")  # --open-set of predict, eval, rank and serve
# The nearest neighbour, not the 5th: with at most BANK_PER_CLASS images a class in the bank, the 5th nearest
# of a known image is already another view (in the bench, k=5 let 1.3-24x as many unseen objects through)
KNN_K = 1
BANK_PER_CLASS = 64
BANK_MAX = 8192
SHRINKAGE = 0.1  # covariance shrunk towards (trace / D) * I by this share: well-posed with few images a class
QUANTILES = 101  # the known scores' quantiles kept, so the accepted share can be moved at prediction time
FEATURE_STATS = ("class_mean", "class_var", "class_count")  # raw pooled-feature statistics, every score


def normalise(features: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(features.float(), dim=1)


class OpenSetScorer(nn.Module):
    """(pooled features (N, D), raw logits (N, C)) -> (N,) open-set scores, higher = more like a known class.

    Its tensors (the buffers) are what a model directory stores; traced into the exported ONNX graph as
    constants, so an exported file computes the same score."""

    def __init__(
        self, score: str, tensors: dict[str, torch.Tensor], temperature: float = 1.0, k: int = KNN_K
    ):
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"unknown open-set score {score!r}; expected one of {', '.join(SCORES)}")
        self.score, self.temperature, self.k = score, float(temperature), int(k)
        for name, tensor in tensors.items():
            self.register_buffer(name, tensor.float().contiguous())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: buffer.detach().cpu().contiguous() for name, buffer in self.named_buffers()}

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.score == "msp":
            return (logits / self.temperature).softmax(dim=1).amax(dim=1)
        if self.score == "energy":
            return self.temperature * torch.logsumexp(logits / self.temperature, dim=1)
        unit = normalise(features)
        if self.score == "mahalanobis":
            # ||(f - mu_c) W||^2 with W W^T = the precision matrix, expanded so that it traces to matmuls
            projected = unit @ self.whiten
            means = self.means_whitened
            distances = (
                (projected * projected).sum(dim=1, keepdim=True)
                - 2 * projected @ means.T
                + (means * means).sum(dim=1)[None, :]
            )
            return -distances.amin(dim=1)
        similarity = unit @ self.bank.T
        k = min(self.k, self.bank.shape[0])
        return similarity.topk(k, dim=1).values[:, k - 1]


def feature_statistics(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """Per-class mean, variance (per dimension) and count of the raw pooled features (a class without images:
    zeros and count 0)."""
    features = features.float()
    dim = features.shape[1]
    mean, var, count = torch.zeros(num_classes, dim), torch.zeros(num_classes, dim), torch.zeros(num_classes)
    for c in range(num_classes):
        rows = features[labels == c]
        count[c] = len(rows)
        if len(rows):
            mean[c] = rows.mean(dim=0)
            var[c] = rows.var(dim=0, unbiased=False)
    return {"class_mean": mean, "class_var": var, "class_count": count}


def _mahalanobis_tensors(unit: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    dim = unit.shape[1]
    means = torch.zeros(num_classes, dim, dtype=torch.float64)
    centred = unit.double().clone()
    for c in range(num_classes):
        rows = labels == c
        if rows.any():
            means[c] = unit[rows].double().mean(dim=0)
            centred[rows] -= means[c]
    cov = centred.T @ centred / max(1, len(unit))
    scale = torch.trace(cov) / dim
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * scale * torch.eye(dim, dtype=torch.float64)
    # cov = L L^T -> precision = L^-T L^-1, so W = L^-T gives ||x W||^2 = x^T precision x
    chol = torch.linalg.cholesky(cov)
    whiten = torch.linalg.solve_triangular(chol, torch.eye(dim, dtype=torch.float64), upper=False).T
    return {"whiten": whiten.float(), "means_whitened": (means @ whiten).float()}


def _knn_bank(unit: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """At most BANK_PER_CLASS features a class (BANK_MAX in all), drawn with a fixed seed."""
    per_class = max(1, min(BANK_PER_CLASS, BANK_MAX // max(1, num_classes)))
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for c in range(num_classes):
        index = (labels == c).nonzero().flatten()
        if len(index) > per_class:
            index = index[torch.randperm(len(index), generator=generator)[:per_class]]
        rows.append(index)
    return unit[torch.cat(rows)].contiguous() if rows else unit[:0]


def fit_scorer(
    score: str,
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    temperature: float = 1.0,
    seed: int = 0,
) -> OpenSetScorer:
    """The scorer `score` fitted on known (training) images' pooled features and labels, with the raw
    feature statistics (FEATURE_STATS) always kept beside its own tensors."""
    tensors = feature_statistics(features, labels, num_classes)
    if score in ("mahalanobis", "knn"):
        unit = normalise(features)
        if score == "mahalanobis":
            tensors.update(_mahalanobis_tensors(unit, labels, num_classes))
        else:
            tensors["bank"] = _knn_bank(unit, labels, num_classes, seed)
    return OpenSetScorer(score, tensors, temperature)


def score_quantiles(known_scores: torch.Tensor) -> list[float]:
    """QUANTILES evenly spaced quantiles (0, 0.01, ..., 1) of the known images' scores."""
    levels = torch.linspace(0, 1, QUANTILES, dtype=torch.float64)
    return [float(v) for v in torch.quantile(known_scores.double(), levels)]


def threshold_for(quantiles: list[float], accept: float) -> float:
    """The score above which the share `accept` of the known images lie: their (1 - accept) quantile,
    interpolated between the kept quantiles."""
    position = (1 - accept) * (len(quantiles) - 1)
    low = math.floor(position)
    high = min(low + 1, len(quantiles) - 1)
    return quantiles[low] + (quantiles[high] - quantiles[low]) * (position - low)


def open_set_threshold(model, open_set: str, unknown_accept: float | None) -> float | None:
    """The score below which an image is "unknown" for a loaded model (a model directory's or a bare ONNX
    file's: its `open_set` record and `path`), or None when rejection is off. open_set "auto": on when the
    model has an open-set record, "on": required, "off": never. unknown_accept moves the operating point: the
    share of known validation images accepted (else the record's `accept`)."""
    if open_set not in OPEN_SET_MODES:
        raise UserError(f"--open-set {open_set!r}: expected one of {', '.join(OPEN_SET_MODES)}")
    if unknown_accept is not None and not 0 < unknown_accept <= 1:
        raise UserError(f"--unknown-accept {unknown_accept}: expected a share in (0, 1], such as 0.95")
    record = getattr(model, "open_set", None)
    if open_set == "off" or (record is None and open_set == "auto"):
        return None
    if record is None:
        raise UserError(
            f"{model.path}: --open-set on, but the model has no open-set threshold (model.json has no "
            f"open_set record: a model trained by an older resnetcls); retrain it, or use --open-set off"
        )
    if unknown_accept is None:
        return float(record["threshold"])
    return threshold_for(record["quantiles"], unknown_accept)


def auroc(known: torch.Tensor, unknown: torch.Tensor) -> float:
    """The probability that a known image scores above an unknown one (ties count half)."""
    known, unknown = known.double().flatten(), unknown.double().flatten().sort().values
    if not len(known) or not len(unknown):
        return float("nan")
    below = torch.searchsorted(unknown, known, right=False)
    tied = torch.searchsorted(unknown, known, right=True) - below
    return float((below.double() + tied.double() / 2).sum() / (len(known) * len(unknown)))


def fpr_at_tpr(known: torch.Tensor, unknown: torch.Tensor, tpr: float = 0.95) -> float:
    """The share of unknown images accepted at the threshold that accepts the share `tpr` of known ones."""
    if not len(known) or not len(unknown):
        return float("nan")
    threshold = torch.quantile(known.double(), 1 - tpr)
    return float((unknown.double() >= threshold).double().mean())


def open_set_metrics(known: torch.Tensor, unknown: torch.Tensor, threshold: float) -> dict:
    """AUROC, FPR at 95% TPR, and at `threshold`: the shares of known images accepted and unknown rejected."""
    return {
        "auroc": auroc(known, unknown),
        "fpr_at_95_tpr": fpr_at_tpr(known, unknown),
        "known_accepted": float((known >= threshold).double().mean()) if len(known) else float("nan"),
        "unknown_rejected": float((unknown < threshold).double().mean()) if len(unknown) else float("nan"),
    }
