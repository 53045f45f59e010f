"""Multi-index hashing: the candidates hold every pair within the threshold, and the work per query stays
bounded as the reference grows."""

import numpy as np
import pytest

from resnetcls.data.multiindex import MAX_CANDIDATES, candidate_pairs, plan_bands


def _hashes(rng, n: int) -> np.ndarray:
    return rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)


def _all_candidates(q, r, threshold, self_join):
    found = set()
    for i, j in candidate_pairs(q, r, threshold, self_join):
        found.update(zip(i.tolist(), j.tolist()))
    return found


@pytest.mark.parametrize("n", [2, 100, 100_000, 10_000_000])
@pytest.mark.parametrize("threshold", [0, 4, 8, 16])
def test_a_plan_covers_the_threshold(n, threshold):
    bands, radius = plan_bands(n, threshold)
    assert 1 <= bands <= 64 and bands * (radius + 1) > threshold


@pytest.mark.parametrize("threshold", [0, 3, 8])
def test_the_candidates_hold_every_pair_within_the_threshold(threshold):
    rng = np.random.default_rng(threshold)
    reference = _hashes(rng, 400)
    flips = [
        sum(1 << int(b) for b in rng.choice(64, rng.integers(0, threshold + 1), replace=False))
        for _ in range(100)
    ]
    queries = reference[:100] ^ np.array(flips, dtype=np.uint64)
    found = _all_candidates(queries, reference, threshold, self_join=False)
    within = {
        (a, b)
        for a in range(len(queries))
        for b in range(len(reference))
        if bin(int(queries[a]) ^ int(reference[b])).count("1") <= threshold
    }
    assert within and within <= found


def test_a_self_join_lists_each_pair_once_in_order():
    hashes = np.array([0, 1, 3, 2**40], dtype=np.uint64)
    found = _all_candidates(hashes, hashes, 2, self_join=True)
    assert all(i < j for i, j in found) and {(0, 1), (0, 2), (1, 2)} <= found


def test_candidates_per_query_stay_bounded_as_the_reference_grows():
    rng = np.random.default_rng(0)
    queries = _hashes(rng, 2_000)
    for n in (2_000, 32_000, 128_000):
        count = sum(len(i) for i, _ in candidate_pairs(queries, _hashes(rng, n), 4, self_join=False))
        assert count / len(queries) <= 2 * MAX_CANDIDATES, (n, count)
