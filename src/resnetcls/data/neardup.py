"""Near-duplicate images: two 64-bit hashes per image, a search for pairs within a Hamming distance that is
not all-pairs and does bounded work per image, groups, and the share of val/test images with a near-duplicate
in train, with the share to expect by chance at that size.

Layout hash (DCT pHash): grey, 32x32 (box filter), 2-D DCT-II, the 8x8 lowest frequencies; each bit says
whether that coefficient is above the median of the 63 non-DC ones: the coarse layout of light and dark.
Colour hash (the second, independent comparison): the image shrunk to 8x8 RGB (192 values), their mean
subtracted, and the signs of 64 fixed random projections kept (SimHash, Charikar 2002: vectors at angle a
differ in each bit with probability a/pi). Brightness (a scale) and contrast (a blend with grey) leave it
unchanged; it sees colour, which the layout hash does not. A pair is a near-duplicate when its layout hashes
are within the threshold AND its colour hashes within COLOUR_THRESHOLD bits.

False alarms. A val image is compared with every train image, so its expected chance matches are n_train x
(false-match rate per pair). PAIR_FALSE_RATE is that rate per layout threshold for the combined test, measured
on real photographs (bench/neardup_threshold.py, Xeon-AMX: 8,406 photos of imagenette10, flowers12,
hymenoptera and COIL-100, 35.3M pairs of different photos, 62 pixel-close true copies left out; rounded up);
below distance 8 fewer than 5 pairs pass and the rate is extrapolated log-linearly from distances 8-14 (the
pairs that pass at 8 are mostly re-shot photos of one flower, so these are upper bounds). threshold_for(n)
picks the largest layout threshold (DEFAULT_THRESHOLD at most) that keeps n x rate below MAX_EXPECTED_FALSE
(1%): 8 bits up to 66k train images, 6 to 169k, 4 to 400k, 2 to 909k, 0 beyond. Data more self-similar than
photographs (procedural images, one background) matches more often by chance, so `train` also measures its
data's own rate (leak_check_from_counts): each val image turned upside down is searched too -- no train image
is a copy of it, yet it is as alike to the data as the image is -- and the threshold tightens further until
under 1% of those match. Recall of re-encodings, resizes and shifts falls as the threshold tightens
(bench/neardup_threshold.py lists it per threshold).

Search: multi-index hashing (Norouzi, Punjani, Fleet, CVPR 2012): 64 bits cut into m bands; two hashes within
distance t agree on one band to within floor(t/m) bits, so each query probes the sorted reference band values
within that radius and compares only those (data/multiindex.py; its plan_bands picks m). Flat images (std
below FLAT_STD grey levels) have no layout: left out and counted (`data check`'s content hash still finds
exact copies of them).

Known limit: only coarse layout and colour are seen; objects photographed alike on one background
(COIL-100) match across objects and groups chain (use data.split_by there). Layout distances are even (32 of
64 bits set).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .multiindex import candidate_pairs

HASH_SIZE = 8  # 8x8 DCT coefficients -> 64 bits
THUMB_SIZE = 32  # the grey thumbnail the DCT is taken of
COLOUR_SIZE = 8  # the RGB thumbnail the colour hash is taken of
# the loosest layout threshold (Hamming distance of 64 bits), used up to 66k train images
DEFAULT_THRESHOLD = 8
COLOUR_THRESHOLD = 10  # colour hashes of a near-duplicate differ in at most this many bits (of 64)
FLAT_STD = 2.0  # grey levels: a thumbnail flatter than this has no layout to hash (solid colour, blank)
# `train` warns when more than this share of val images has a near-duplicate in train
LEAK_WARN_SHARE = 0.10
MAX_EXPECTED_FALSE = 0.01  # chance matches per val image the threshold keeps below (threshold_for)
# Chance that two different photos pass both tests, per layout threshold (module docstring; the bench
# prints it).
PAIR_FALSE_RATE = {
    0: 4.3e-9,
    2: 1.1e-8,
    4: 2.5e-8,
    6: 5.9e-8,
    8: 1.5e-7,
    10: 3.7e-7,
    12: 8.0e-7,
    14: 2.1e-6,
    16: 5.5e-6,
}
# the loosest layout threshold a user may give (`data check --near-threshold`)
MAX_THRESHOLD = max(PAIR_FALSE_RATE)


def _dct_matrix(size: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: D @ x is the DCT of the column vector x."""
    k, n = np.arange(size)[:, None], np.arange(size)[None, :]
    d = np.cos(np.pi * (2 * n + 1) * k / (2 * size)) * math.sqrt(2 / size)
    d[0] /= math.sqrt(2)
    return d


_DCT = _dct_matrix(THUMB_SIZE)[:HASH_SIZE]  # only the lowest frequencies are ever used
_BIT_WEIGHTS = np.uint64(1) << np.arange(HASH_SIZE * HASH_SIZE, dtype=np.uint64)
# The colour hash's 64 projections: fixed, so every run, rank and machine hashes alike.
_PROJECTIONS = np.random.default_rng(20261206).standard_normal((64, COLOUR_SIZE * COLOUR_SIZE * 3))


def grey_thumbnail(image: Image.Image | np.ndarray) -> np.ndarray:
    """The THUMB_SIZE x THUMB_SIZE grey float32 thumbnail the hash is computed from (a PIL image or HWC
    uint8)."""
    grey = (Image.fromarray(image) if isinstance(image, np.ndarray) else image).convert("L")
    return np.asarray(grey.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX), dtype=np.float32)


def colour_thumbnail(image: Image.Image | np.ndarray) -> np.ndarray:
    """The COLOUR_SIZE x COLOUR_SIZE RGB uint8 thumbnail the colour hash is computed from."""
    rgb = (Image.fromarray(image) if isinstance(image, np.ndarray) else image).convert("RGB")
    return np.asarray(rgb.resize((COLOUR_SIZE, COLOUR_SIZE), Image.Resampling.BOX), np.uint8)


def hash_thumbnails(thumbnails: np.ndarray) -> np.ndarray:
    """pHash of each (N, 32, 32) grey thumbnail -> (N,) uint64."""
    thumbs = np.asarray(thumbnails, dtype=np.float64).reshape(-1, THUMB_SIZE, THUMB_SIZE)
    if not len(thumbs):
        return np.zeros(0, np.uint64)
    low = _DCT @ thumbs @ _DCT.T  # (N, 8, 8) lowest frequencies
    flat = low.reshape(len(thumbs), -1)
    median = np.median(flat[:, 1:], axis=1, keepdims=True)  # the DC term (mean brightness) would skew it
    bits = flat > median
    return (bits.astype(np.uint64) * _BIT_WEIGHTS).sum(axis=1, dtype=np.uint64)


def colour_hashes(thumbnails: np.ndarray) -> np.ndarray:
    """Colour hash of each (N, 8, 8, 3) RGB thumbnail -> (N,) uint64 (module docstring)."""
    vectors = np.asarray(thumbnails, dtype=np.float64).reshape(-1, COLOUR_SIZE * COLOUR_SIZE * 3)
    if not len(vectors):
        return np.zeros(0, np.uint64)
    bits = (vectors - vectors.mean(axis=1, keepdims=True)) @ _PROJECTIONS.T > 0
    return (bits.astype(np.uint64) * _BIT_WEIGHTS).sum(axis=1, dtype=np.uint64)


def is_flat(thumbnails: np.ndarray) -> np.ndarray:
    """(N,) bool: thumbnails too flat to hash meaningfully (FLAT_STD)."""
    thumbs = np.asarray(thumbnails, dtype=np.float32).reshape(-1, THUMB_SIZE * THUMB_SIZE)
    return thumbs.std(axis=1) < FLAT_STD


def perceptual_hash(image: Image.Image | np.ndarray) -> int:
    """The 64-bit pHash (layout hash) of one decoded image (PIL image or HWC uint8 array) as a Python int."""
    return int(hash_thumbnails(grey_thumbnail(image)[None])[0])


def colour_hash(image: Image.Image | np.ndarray) -> int:
    """The 64-bit colour hash of one decoded image as a Python int."""
    return int(colour_hashes(colour_thumbnail(image)[None])[0])


def image_signature(image: Image.Image | np.ndarray) -> tuple[int, ...] | None:
    """(layout hash, colour hash) of one decoded image and of it upside down (store_signatures), or None for a
    flat one (is_flat: nothing to compare)."""
    thumb = grey_thumbnail(image)[None]
    return (
        None
        if is_flat(thumb)[0]
        else tuple(int(h[0]) for h in _signatures(thumb, colour_thumbnail(image)[None]))
    )


def _signatures(greys: np.ndarray, colours: np.ndarray, flipped: bool = True) -> tuple[np.ndarray, ...]:
    out = (hash_thumbnails(greys), colour_hashes(colours))
    return out + (hash_thumbnails(greys[:, ::-1]), colour_hashes(colours[:, ::-1])) if flipped else out


def hamming(a, b) -> np.ndarray:
    """Bitwise Hamming distance between uint64 hashes (element-wise)."""
    return np.bitwise_count(np.asarray(a, dtype=np.uint64) ^ np.asarray(b, dtype=np.uint64)).astype(np.int64)


def threshold_for(n_reference: int) -> int:
    """The layout threshold for comparing each image with n_reference others: the largest (at most
    DEFAULT_THRESHOLD) whose expected chance matches per image, n_reference x PAIR_FALSE_RATE, stay below
    MAX_EXPECTED_FALSE."""
    fitting = [
        t
        for t, rate in PAIR_FALSE_RATE.items()
        if t <= DEFAULT_THRESHOLD and n_reference * rate < MAX_EXPECTED_FALSE
    ]
    return max(fitting, default=0)


def expected_false_matches(n_reference: int, threshold: int) -> float:
    """Chance matches to expect per image compared with n_reference others (PAIR_FALSE_RATE)."""
    if not 0 <= threshold <= MAX_THRESHOLD:
        raise ValueError(f"threshold {threshold}: the false-match rate is measured for 0..{MAX_THRESHOLD}")
    return n_reference * PAIR_FALSE_RATE[threshold - threshold % 2]  # layout distances are even


@dataclass
class PairSearch:
    """near_pairs' answer: the distinct signatures, which one each input has, the near pairs among them
    (inputs with one signature are near each other and not listed as pairs; image_pairs() expands both)."""

    unique: np.ndarray  # (U,) uint64 layout hash of each distinct signature (values may repeat)
    inverse: np.ndarray  # (N,) index into unique of each input
    unique_pairs: np.ndarray  # (P, 2) int64, i < j, within both thresholds
    comparisons: int  # Hamming distances computed (the work done; all-pairs would be U(U-1)/2)

    def image_pairs(self) -> set[tuple[int, int]]:
        """Every (a, b), a < b, of input indices within the threshold (output-sensitive: for tests and
        small n)."""
        members: dict[int, list[int]] = {}
        for index, u in enumerate(self.inverse.tolist()):
            members.setdefault(u, []).append(index)
        pairs = {pair for group in members.values() for pair in itertools.combinations(group, 2)}
        for i, j in self.unique_pairs.tolist():
            pairs.update((min(a, b), max(a, b)) for a in members[i] for b in members[j])
        return pairs


def _near(queries, reference, threshold: int, self_join: bool):
    """Multi-index search: yields per band (i, j, is_near) over (layout, colour) signature arrays (module
    docstring); queries/reference are (hashes, colours) pairs of uint64 arrays."""
    (q_hash, q_colour), (r_hash, r_colour) = queries, reference
    for i, j in candidate_pairs(q_hash, r_hash, threshold, self_join):
        near = (hamming(q_hash[i], r_hash[j]) <= threshold) & (
            hamming(q_colour[i], r_colour[j]) <= COLOUR_THRESHOLD
        )
        yield i, j, near


def near_pairs(hashes, threshold: int = DEFAULT_THRESHOLD, colours=None) -> PairSearch:
    """All pairs of inputs within `threshold` (layout) and COLOUR_THRESHOLD (colour), by multi-index hashing
    (module docstring). colours: the colour hashes (default: all equal, i.e. the layout test alone)."""
    if not 0 <= threshold < 64:
        raise ValueError(f"threshold {threshold}: expected 0..63")
    hashes = np.asarray(hashes, dtype=np.uint64).reshape(-1)
    colours = np.zeros_like(hashes) if colours is None else np.asarray(colours, dtype=np.uint64).reshape(-1)
    signatures, inverse = np.unique(np.stack([hashes, colours], axis=1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.int64)
    unique, unique_colours = signatures[:, 0].copy(), signatures[:, 1].copy()
    if len(unique) < 2:
        return PairSearch(unique, inverse, np.zeros((0, 2), np.int64), 0)
    found: list[np.ndarray] = []
    comparisons = 0
    for i, j, near in _near((unique, unique_colours), (unique, unique_colours), threshold, self_join=True):
        comparisons += len(i)
        found.append(i[near] * len(unique) + j[near])  # one int per pair, so np.unique drops repeats
    codes = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
    pairs = np.stack([codes // len(unique), codes % len(unique)], axis=1).astype(np.int64)
    return PairSearch(unique, inverse, pairs, comparisons)


@dataclass
class LeakResult:
    """near_reference's answer: for each query the smallest layout distance to a reference signature that also
    passes the colour test (NO_MATCH when none within the threshold), and the work done."""

    distances: np.ndarray  # (n_queries,) int64
    comparisons: int
    threshold: int

    @property
    def flags(self) -> np.ndarray:
        return self.distances <= self.threshold


NO_MATCH = 64  # near_reference's distance for a query with no match


def near_reference(queries: tuple, reference: tuple, threshold: int | None = None) -> LeakResult:
    """Which query signatures (hashes, colours) have a near-duplicate among the reference signatures, and how
    near: each query probes an index of the reference (no reference-reference pairs). threshold None:
    threshold_for(len(reference)). A smaller threshold's answer is distances <= it (the same search covers
    it)."""
    q = tuple(np.asarray(a, dtype=np.uint64).reshape(-1) for a in queries)
    r = tuple(np.asarray(a, dtype=np.uint64).reshape(-1) for a in reference)
    threshold = threshold_for(len(r[0])) if threshold is None else threshold
    distances = np.full(len(q[0]), NO_MATCH, dtype=np.int64)
    if not len(q[0]) or not len(r[0]):
        return LeakResult(distances, 0, threshold)
    comparisons = 0
    for i, j, near in _near(q, r, threshold, self_join=False):
        comparisons += len(i)
        np.minimum.at(distances, i[near], hamming(q[0][i[near]], r[0][j[near]]))
    return LeakResult(distances, comparisons, threshold)


@dataclass
class LeakCheck:
    """Val images with a near-duplicate in train at the threshold chosen; the share expected by chance."""

    leaked: int
    threshold: int
    chance: float  # expected chance matches per val image: the larger of the two estimates below
    table_chance: float  # n_train x PAIR_FALSE_RATE (real photographs)
    flipped_share: float  # val images turned upside down that still match train (this data's own chance rate)


def threshold_counts(val: LeakResult, flipped: LeakResult) -> np.ndarray:
    """Matches of the val and the upside-down val images at layout thresholds 0, 2, ... (2 rows; summable)."""
    steps = np.arange(0, val.threshold + 1, 2)
    return np.stack([(val.distances[:, None] <= steps).sum(0), (flipped.distances[:, None] <= steps).sum(0)])


def leak_check_from_counts(counts: np.ndarray, images: int, n_train: int, tighten: bool = True) -> LeakCheck:
    """The largest threshold (the counts' last at most) at which under MAX_EXPECTED_FALSE of the `images`
    upside-down val images match train (module docstring: this data's own chance rate); tighten=False: the
    last."""
    counts = np.asarray(counts)
    step = counts.shape[1] - 1
    while tighten and step > 0 and counts[1, step] >= MAX_EXPECTED_FALSE * max(images, 1):
        step -= 1
    flipped = counts[1, step] / max(images, 1)
    table = expected_false_matches(n_train, 2 * step)
    return LeakCheck(int(counts[0, step]), 2 * step, max(table, flipped), table, flipped)


def groups_of(search: PairSearch) -> list[list[int]]:
    """Connected groups (size >= 2) of input indices: identical signatures and near pairs, joined transitively
    (union-find), largest first; within a group the indices are sorted."""
    parent = list(range(len(search.unique)))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving keeps the trees flat
            x = parent[x]
        return x

    for i, j in search.unique_pairs.tolist():
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    members: dict[int, list[int]] = {}
    for index, u in enumerate(search.inverse.tolist()):
        members.setdefault(root(u), []).append(index)
    return sorted((g for g in members.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


def near_in_reference(search: PairSearch, is_reference: np.ndarray) -> np.ndarray:
    """(N,) bool: which inputs have a near-duplicate (directly, within the thresholds) among the reference
    inputs (e.g. train), other than themselves."""
    is_reference = np.asarray(is_reference, dtype=bool)
    ref_count = np.bincount(search.inverse[is_reference], minlength=len(search.unique))
    # an input's own signature counts when another reference input shares it (itself excluded)
    same_hash = ref_count[search.inverse] - is_reference.astype(np.int64) > 0
    linked = np.zeros(len(search.unique), dtype=bool)
    if len(search.unique_pairs):
        i, j = search.unique_pairs[:, 0], search.unique_pairs[:, 1]
        np.logical_or.at(linked, i, ref_count[j] > 0)
        np.logical_or.at(linked, j, ref_count[i] > 0)
    return same_hash | linked[search.inverse]


def store_signatures(store, indices=None, flipped: bool = False, chunk: int = 2048) -> tuple[np.ndarray, ...]:
    """(layout hashes, colour hashes) of the images of a decoded store (data/cache.py's DecodedStore:
    anything with load(i), len() and `bad`) at `indices` (default all); bad and flat images are left out.
    flipped: also those of the same images upside down (leak_check_from_counts). Reads the decoded uint8
    arrays, never the files, `chunk` images at a time: beyond 16-32 bytes of hashes an image, what it holds is
    the same at any N."""
    bad = getattr(store, "bad", {})
    wanted = [i for i in (range(len(store)) if indices is None else indices) if i not in bad]
    parts = [
        _chunk_signatures(store, wanted[start : start + chunk], flipped)
        for start in range(0, len(wanted), chunk)
    ]
    if not parts:
        return (np.zeros(0, np.uint64),) * (4 if flipped else 2)
    return tuple(np.concatenate(column) for column in zip(*parts))


def _chunk_signatures(store, indices: list, flipped: bool) -> tuple[np.ndarray, ...]:
    images = [Image.fromarray(store.load(i)) for i in indices]
    greys, colours = (
        np.stack([grey_thumbnail(i) for i in images]),
        np.stack([colour_thumbnail(i) for i in images]),
    )
    return _signatures(greys[~is_flat(greys)], colours[~is_flat(greys)], flipped)


def leak_warning(check: LeakCheck, total: int, n_train: int) -> str | None:
    """The one warning line `train` prints when more than LEAK_WARN_SHARE of the `total` val images have a
    near-duplicate among n_train train images (None otherwise): the measured share, the tests, the share
    expected by chance at that size and how it was estimated, and the remedies."""
    if not total or check.leaked / total <= LEAK_WARN_SHARE:
        return None
    return (
        f"warning: {check.leaked} of {total} val images ({check.leaked / total:.1%}) have a near-duplicate "
        f"in train (layout hash within {check.threshold} bits and colour hash within {COLOUR_THRESHOLD}; by "
        f"chance about {check.chance:.2%} of val images would match {n_train:,} train images: "
        f"{check.table_chance:.2%} for photographs, {check.flipped_share:.2%} of this data's val images "
        f"matched upside down): validation accuracy will be optimistic; keep groups on one side with --set "
        f"data.split_by=COLUMN, or write a group-aware split with "
        f"`resnetcls data check DATA --suggest-split split.csv` "
        f"(data.leak_check=false silences this)"
    )
