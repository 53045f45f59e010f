"""Continual-learning metrics from the accuracy matrix.

R[i][j] is the test accuracy on task j after training on tasks 0..i (T x T); b[j] is the accuracy on task j
of the model before any training (for forward transfer).

Lopez-Paz & Ranzato 2017 (GEM):
    ACC = 1/T * sum_j R[T-1][j]
    BWT = 1/(T-1) * sum_{j<T-1} (R[T-1][j] - R[j][j])
    FWT = 1/(T-1) * sum_{j>=1} (R[j-1][j] - b[j])
Diaz-Rodriguez et al. 2018 ("Don't forget, there is more than forgetting"):
    A    = sum_{i>=j} R[i][j] / (T(T+1)/2)                 mean of the lower triangle with the diagonal
    BWT' = sum_{i>j} (R[i][j] - R[j][j]) / (T(T-1)/2)      backward transfer averaged over every later step
    REM  = 1 - |min(BWT', 0)|                               remembering
    BWT+ = max(BWT', 0)                                     positive backward transfer
    FWT' = sum_{i<j} R[i][j] / (T(T-1)/2)                   mean of the upper triangle
Chaudhry et al. 2018: forgetting of task j < T-1 = max_{k in [j, T-2]} R[k][j] - R[T-1][j].
The OpenLORIS-Object benchmark (She et al. 2019, arXiv 1911.06487; the IROS 2019 challenge, arXiv 2004.14774)
reports ACC, BWT, FWT and an "over-all accuracy"; we read the latter as Kemker et al. 2018's Omega_all
("Measuring catastrophic forgetting in neural networks", AAAI), the accuracy on every task seen so far,
averaged over the training sessions:
    overall = 1/T * sum_i (1/(i+1) * sum_{j<=i} R[i][j])
and, given a joint (offline) run's accuracy alpha_ideal, Omega_all = overall / alpha_ideal
(results.summarize).
Source check: the papers' metric sections were not retrievable; the benchmark's own code was
(github.com/lifelong-robotic-vision/OpenLORIS-Object, evaluate.py `precision`): after each task it tests every
task seen so far and records `average_precs = sum(precs[:current_task]) / current_task`, i.e. our
mean_{j<=i} R[i][j], per session ("average precision (on tasks seen so far)" in its plots; the last one, after
all tasks, is ACC). It writes that per-session series and the per-task matrix, not one number; `overall` is
that series' mean, as Kemker's Omega_all (un-normalised) defines it.
"""

from __future__ import annotations

from ..errors import UserError


def _check(R: list[list[float]]) -> int:
    T = len(R)
    if T == 0 or any(len(row) != T for row in R):
        raise UserError(f"accuracy matrix must be square and non-empty, got {[len(r) for r in R]}")
    return T


def continual_metrics(R: list[list[float]], b: list[float] | None = None) -> dict:
    """Every metric above from R (and b for the GEM forward transfer). Single-task sequences give
    None for the transfer metrics rather than a division by zero."""
    T = _check(R)
    last = R[T - 1]
    pairs = T * (T - 1) / 2
    out: dict = {"tasks": T, "ACC": sum(last) / T}
    if T > 1:
        out["BWT"] = sum(last[j] - R[j][j] for j in range(T - 1)) / (T - 1)
        out["FWT"] = (sum(R[j - 1][j] - b[j] for j in range(1, T)) / (T - 1)) if b is not None else None
        bwt_dr = sum(R[i][j] - R[j][j] for i in range(T) for j in range(i)) / pairs
        out["BWT_dr"] = bwt_dr
        out["REM"] = 1 - abs(min(bwt_dr, 0.0))
        out["BWT_plus"] = max(bwt_dr, 0.0)
        out["FWT_dr"] = sum(R[i][j] for i in range(T) for j in range(i + 1, T)) / pairs
        out["forgetting"] = [max(R[k][j] for k in range(j, T - 1)) - last[j] for j in range(T - 1)]
    else:
        out.update(
            {
                "BWT": None,
                "FWT": None,
                "BWT_dr": None,
                "REM": None,
                "BWT_plus": None,
                "FWT_dr": None,
                "forgetting": [],
            }
        )
    out["overall"] = sum(sum(R[i][: i + 1]) / (i + 1) for i in range(T)) / T
    out["A"] = sum(R[i][j] for i in range(T) for j in range(i + 1)) / (T * (T + 1) / 2)
    return out
