"""Multi-index hashing (Norouzi, Punjani, Fleet, CVPR 2012): the candidate pairs of a search for 64-bit hashes
within a Hamming distance, without all-pairs work.

The 64 bits are cut into m bands; two hashes within distance t agree on one band to within floor(t/m) bits,
so each query probes the sorted reference band values within that radius and only those pairs become
candidates (plan_bands picks m). data/neardup.py measures the candidates' distances.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

MAX_CANDIDATES = 64  # expected comparisons per query the search plan stays within (plan_bands)
PROBE_BLOCK, DENSE_BITS = 2**20, 22  # probes per vectorised search step (~8 MB an array); bands looked up


def _band_widths(bands: int) -> list[int]:
    return [64 // bands + (k < 64 % bands) for k in range(bands)]


def plan_bands(n: int, threshold: int, n_reference: int | None = None) -> tuple[int, int]:
    """(bands, radius), bands*(radius+1) > threshold: the fewest probes per query whose expected comparisons
    per query (uniform hashes; n queries against n_reference, default the n among themselves) stay within
    MAX_CANDIDATES: as n grows, wider bands keep the comparisons linear in n, and the probes are bounded by
    the threshold alone (which tightens with n as well: neardup.threshold_for)."""
    others = max(n, 2) / 2 if n_reference is None else max(n_reference, 1)
    plans = []
    for bands in range(1, min(threshold + 1, 64) + 1):
        radius = threshold // bands
        probes = [sum(math.comb(w, k) for k in range(radius + 1)) for w in _band_widths(bands)]
        candidates = others * sum(p / 2.0**w for p, w in zip(probes, _band_widths(bands)))
        plans.append(
            (
                candidates > MAX_CANDIDATES,
                sum(probes) if candidates <= MAX_CANDIDATES else candidates,
                bands,
                radius,
            )
        )
    return min(plans)[2:]


def _flip_masks(width: int, radius: int) -> np.ndarray:
    """Every width-bit value with at most `radius` bits set (the XOR masks a probe tries)."""
    masks = [
        sum(1 << b for b in bits)
        for k in range(radius + 1)
        for bits in itertools.combinations(range(width), k)
    ]
    return np.array(masks, dtype=np.int64)


def _band_candidates(
    queries: np.ndarray, reference: np.ndarray, masks: np.ndarray, width: int, self_join: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) of queries and reference whose band values differ by a mask; self_join: i < j. Bands of up to
    DENSE_BITS bits are looked up in a table of where each value's run starts, wider ones by binary search."""
    order = np.argsort(reference, kind="stable")
    ordered, table = reference[order], None
    if width <= DENSE_BITS:
        table = np.zeros((1 << width) + 1, np.int64)
        np.cumsum(np.bincount(reference, minlength=1 << width), out=table[1:])
    firsts, seconds = [], []
    per_block = max(1, PROBE_BLOCK // max(len(queries), 1))  # masks probed in one vectorised call
    for start in range(0, len(masks), per_block):
        block = masks[start : start + per_block]
        probe = (queries[:, None] ^ block[None, :]).ravel()
        lo = table[probe] if table is not None else np.searchsorted(ordered, probe, "left")
        counts = (table[probe + 1] if table is not None else np.searchsorted(ordered, probe, "right")) - lo
        if not counts.any():
            continue
        i = np.repeat(np.arange(len(probe)) // len(block), counts)
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        j = order[np.repeat(lo, counts) + np.arange(counts.sum()) - starts]
        keep = i < j if self_join else slice(None)
        firsts.append(i[keep])
        seconds.append(j[keep])
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


def candidate_pairs(q_hash: np.ndarray, r_hash: np.ndarray, threshold: int, self_join: bool):
    """Yields per band (i, j): the query and reference indices whose band values differ in at most the plan's
    radius -- every pair within `threshold` bits is among them (module docstring); self_join: r_hash is q_hash
    and i < j. The caller computes the distances of those pairs only."""
    bands, radius = plan_bands(len(q_hash), threshold, None if self_join else len(r_hash))
    shift = 0
    for width in _band_widths(bands):
        band = np.uint64((1 << width) - 1)
        q_values = ((q_hash >> np.uint64(shift)) & band).astype(np.int64)
        r_values = q_values if self_join else ((r_hash >> np.uint64(shift)) & band).astype(np.int64)
        shift += width
        yield _band_candidates(q_values, r_values, _flip_masks(width, radius), width, self_join)
