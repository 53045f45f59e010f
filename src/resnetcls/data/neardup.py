"""Near-duplicate images: a 64-bit perceptual hash, a search for pairs within a Hamming distance that is not
all-pairs, groups, and the share of val/test images with a near-duplicate in train.

Method. The hash is the DCT pHash: the image is turned grey and shrunk to 32x32 (box filter, aspect ignored),
its 2-D DCT-II taken, and the 8x8 lowest frequencies kept; each bit says whether that coefficient is above the
median of the 63 non-DC ones. It survives re-encoding, resizing, light and contrast changes and shifts of a
few per cent because it keeps only the coarse layout of light and dark.

Search. Multi-index hashing (Norouzi, Punjani, Fleet, "Fast search in Hamming space with multi-index
hashing", CVPR 2012): the 64 bits are cut into m bands; by pigeonhole, two hashes within distance t agree on
at least one band to within floor(t/m) bits. Each band's values are sorted once, and every hash probes, per
band, the values within that radius (binary search), so only hashes that share a band nearly are compared.
m is chosen per call to minimise the expected work (probes + comparisons) for n hashes: with about log2(n)
bits per band the work grows like n log n rather than n^2. Identical hashes (flat or black images, exact
copies) are collapsed first, so a run of 10,000 equal hashes costs one entry, not 50 million comparisons.

Threshold. DEFAULT_THRESHOLD = 8 was chosen with bench/neardup_threshold.py on real photographs (../shared/data):
the largest distance whose false-positive rate stays at or below 1e-5 per pair, because a val image is
compared with every train image (1e-5 x 7,000 train images = a 7% false alarm per val image). Measured there
(Xeon-AMX), 290 base photos and their transformed copies, 987,654 pairs of different photos (flowers12 +
hymenoptera + COIL-100; 61 pixel-close pairs left out: true duplicates in flowers12 itself):

    distance <= 8: false-positive rate 6.1e-6 per pair (6 pairs), precision 0.9975 on that set;
    recall: JPEG quality 20 1.00, resize 50% 1.00, brightness +-20% 1.00, contrast +-20% 1.00,
    shift 2% 0.95, shift 4% 0.52, rotation 3 degrees 0.72; all kinds 0.91;
    COIL-100 turntable views 5 degrees apart (neighbouring video frames) 0.90, 10 degrees 0.64, 20 degrees 0.33.
    (distance <= 10: FPR 1.2e-5, recall 0.965, views 5 degrees apart 0.94.)

Flat images (thumbnail standard deviation below FLAT_STD grey levels: solid colours, blank frames) have no
layout to compare -- their bits would be rounding noise, and a red and a blue square would match -- so they
are left out of the search and counted; byte-identical copies of them are still found by `data check`'s
content hash.

Known limit: the hash is grey-level layout only. Objects photographed alike on one background (COIL-100's
turntable on black) can fall within the threshold of each other, and groups (union-find, transitive) then
chain across objects: on COIL-100 objects 1-50 the largest group holds 23 objects. For turntable or video
data, data.split_by=<object or video column> is the better remedy; --suggest-split is for copies.

pHash bits are balanced (32 of 64 set), so distances are even: 8 and 9 select the same pairs.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

HASH_SIZE = 8        # 8x8 DCT coefficients -> 64 bits
THUMB_SIZE = 32      # the grey thumbnail the DCT is taken of
DEFAULT_THRESHOLD = 8  # Hamming distance (of 64 bits) at or below which two images are near-duplicates
FLAT_STD = 2.0       # grey levels: a thumbnail flatter than this has no layout to hash (solid colour, blank)
LEAK_WARN_SHARE = 0.10  # `train` warns when more than this share of val images has a near-duplicate in train


def _dct_matrix(size: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: D @ x is the DCT of the column vector x."""
    k = np.arange(size)[:, None]
    n = np.arange(size)[None, :]
    d = np.cos(np.pi * (2 * n + 1) * k / (2 * size)) * math.sqrt(2 / size)
    d[0] /= math.sqrt(2)
    return d


_DCT = _dct_matrix(THUMB_SIZE)[:HASH_SIZE]  # only the lowest frequencies are ever used
_BIT_WEIGHTS = (np.uint64(1) << np.arange(HASH_SIZE * HASH_SIZE, dtype=np.uint64))


def grey_thumbnail(image: Image.Image | np.ndarray) -> np.ndarray:
    """The THUMB_SIZE x THUMB_SIZE grey float32 thumbnail the hash is computed from (a PIL image or HWC uint8)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    grey = image.convert("L")
    return np.asarray(grey.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX), dtype=np.float32)


def hash_thumbnails(thumbnails: np.ndarray) -> np.ndarray:
    """pHash of each (N, 32, 32) grey thumbnail -> (N,) uint64."""
    thumbs = np.asarray(thumbnails, dtype=np.float64).reshape(-1, THUMB_SIZE, THUMB_SIZE)
    if not len(thumbs):
        return np.zeros(0, np.uint64)
    low = _DCT @ thumbs @ _DCT.T                      # (N, 8, 8) lowest frequencies
    flat = low.reshape(len(thumbs), -1)
    median = np.median(flat[:, 1:], axis=1, keepdims=True)  # the DC term (mean brightness) would skew it
    bits = flat > median
    return (bits.astype(np.uint64) * _BIT_WEIGHTS).sum(axis=1, dtype=np.uint64)


def is_flat(thumbnails: np.ndarray) -> np.ndarray:
    """(N,) bool: thumbnails too flat to hash meaningfully (FLAT_STD)."""
    thumbs = np.asarray(thumbnails, dtype=np.float32).reshape(-1, THUMB_SIZE * THUMB_SIZE)
    return thumbs.std(axis=1) < FLAT_STD


def perceptual_hash(image: Image.Image | np.ndarray) -> int:
    """The 64-bit pHash of one decoded image (PIL image or HWC uint8 array) as a Python int."""
    return int(hash_thumbnails(grey_thumbnail(image)[None])[0])


def structured_hash(image: Image.Image | np.ndarray) -> int | None:
    """The pHash of one decoded image, or None for a flat one (is_flat: nothing to compare)."""
    thumb = grey_thumbnail(image)[None]
    return None if is_flat(thumb)[0] else int(hash_thumbnails(thumb)[0])


def hamming(a, b) -> np.ndarray:
    """Bitwise Hamming distance between uint64 hashes (element-wise)."""
    return np.bitwise_count(np.asarray(a, dtype=np.uint64) ^ np.asarray(b, dtype=np.uint64)).astype(np.int64)


@dataclass
class PairSearch:
    """Result of near_pairs: the distinct hashes, which one each input has, and the near pairs among them.

    unique_pairs are index pairs (i < j) into `unique` with distance <= threshold; inputs with the same hash
    are at distance 0 from each other and are not listed as pairs (image_pairs() expands both)."""

    unique: np.ndarray          # (U,) uint64 distinct hashes
    inverse: np.ndarray         # (N,) index into unique of each input hash
    unique_pairs: np.ndarray    # (P, 2) int64, i < j
    comparisons: int            # Hamming distances computed (the work done; all-pairs would be U(U-1)/2)

    def image_pairs(self) -> set[tuple[int, int]]:
        """Every (a, b), a < b, of input indices within the threshold (output-sensitive: for tests and small n)."""
        members: dict[int, list[int]] = {}
        for index, u in enumerate(self.inverse.tolist()):
            members.setdefault(u, []).append(index)
        pairs = {pair for group in members.values() for pair in itertools.combinations(group, 2)}
        for i, j in self.unique_pairs.tolist():
            pairs.update((min(a, b), max(a, b)) for a in members[i] for b in members[j])
        return pairs


def _band_widths(bands: int) -> list[int]:
    return [64 // bands + (1 if k < 64 % bands else 0) for k in range(bands)]


def plan_bands(n: int, threshold: int) -> tuple[int, int]:
    """(bands, radius) that minimise probes + expected comparisons for n uniform hashes; bands*(radius+1) > t."""
    best, n = None, max(n, 2)  # with fewer hashes nothing is compared; the plan must still be a cheap one
    for bands in range(1, min(threshold + 1, 64) + 1):
        radius = threshold // bands
        probes = [sum(math.comb(w, k) for k in range(radius + 1)) for w in _band_widths(bands)]
        work = n * sum(probes) + n * n / 2 * sum(p / 2.0 ** w for p, w in zip(probes, _band_widths(bands)))
        if best is None or work < best[0]:
            best = (work, bands, radius)
    return best[1], best[2]


def _flip_masks(width: int, radius: int) -> np.ndarray:
    """Every width-bit value with at most `radius` bits set (the XOR masks a probe tries)."""
    masks = [sum(1 << b for b in bits) for k in range(radius + 1) for bits in itertools.combinations(range(width), k)]
    return np.array(masks, dtype=np.int64)


def _band_candidates(values: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i, j), i < j, of entries whose band values differ by one of masks (sorted values, binary search)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    firsts, seconds = [], []
    for mask in masks:
        probe = values ^ mask
        lo = np.searchsorted(ordered, probe, "left")
        counts = np.searchsorted(ordered, probe, "right") - lo
        if not counts.any():
            continue
        i = np.repeat(np.arange(len(values)), counts)
        # positions lo[i] .. lo[i]+counts[i]-1 of each run: offsets within the run from a cumulative count
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        j = order[np.repeat(lo, counts) + np.arange(counts.sum()) - starts]
        keep = i < j
        firsts.append(i[keep])
        seconds.append(j[keep])
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


def near_pairs(hashes, threshold: int = DEFAULT_THRESHOLD) -> PairSearch:
    """All pairs of hashes within Hamming distance `threshold`, by multi-index hashing (module docstring)."""
    if not 0 <= threshold < 64:
        raise ValueError(f"threshold {threshold}: expected 0..63")
    unique, inverse = np.unique(np.asarray(hashes, dtype=np.uint64), return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.int64)
    if len(unique) < 2:
        return PairSearch(unique, inverse, np.zeros((0, 2), np.int64), 0)
    bands, radius = plan_bands(len(unique), threshold)
    found: list[np.ndarray] = []
    comparisons, shift = 0, 0
    for width in _band_widths(bands):
        values = ((unique >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
        shift += width
        i, j = _band_candidates(values, _flip_masks(width, radius))
        comparisons += len(i)
        near = hamming(unique[i], unique[j]) <= threshold
        found.append(i[near] * len(unique) + j[near])  # one int per pair, so np.unique drops repeats
    codes = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
    pairs = np.stack([codes // max(len(unique), 1), codes % max(len(unique), 1)], axis=1).astype(np.int64)
    return PairSearch(unique, inverse, pairs, comparisons)


def groups_of(search: PairSearch) -> list[list[int]]:
    """Connected groups (size >= 2) of input indices: identical hashes and near pairs, joined transitively
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
    """(N,) bool: which inputs have a near-duplicate (directly, within the threshold) among the reference
    inputs (e.g. train), other than themselves."""
    is_reference = np.asarray(is_reference, dtype=bool)
    ref_count = np.bincount(search.inverse[is_reference], minlength=len(search.unique))
    # an input's own hash counts when another reference input shares it (itself excluded)
    same_hash = ref_count[search.inverse] - is_reference.astype(np.int64) > 0
    linked = np.zeros(len(search.unique), dtype=bool)
    if len(search.unique_pairs):
        i, j = search.unique_pairs[:, 0], search.unique_pairs[:, 1]
        np.logical_or.at(linked, i, ref_count[j] > 0)
        np.logical_or.at(linked, j, ref_count[i] > 0)
    return same_hash | linked[search.inverse]


def leak_count(train_hashes, val_hashes, threshold: int = DEFAULT_THRESHOLD) -> int:
    """How many of val_hashes have a near-duplicate among train_hashes."""
    train_hashes, val_hashes = np.asarray(train_hashes, np.uint64), np.asarray(val_hashes, np.uint64)
    search = near_pairs(np.concatenate([train_hashes, val_hashes]), threshold)
    is_train = np.arange(len(train_hashes) + len(val_hashes)) < len(train_hashes)
    return int(near_in_reference(search, is_train)[~is_train].sum())


def hash_store(store) -> np.ndarray:
    """Hashes of the images in a decoded store (data/cache.py's DecodedStore: anything with load(i), len()
    and `bad`); bad and flat images are left out. Reads the uint8 arrays already decoded, never the files."""
    bad = getattr(store, "bad", {})
    thumbs = [grey_thumbnail(store.load(i)) for i in range(len(store)) if i not in bad]
    if not thumbs:
        return np.zeros(0, np.uint64)
    thumbs = np.stack(thumbs)
    return hash_thumbnails(thumbs[~is_flat(thumbs)])


def leak_warning(leaked: int, total: int) -> str | None:
    """The one warning line `train` prints when more than LEAK_WARN_SHARE of val images have a
    near-duplicate in train (None otherwise), naming the remedies."""
    if not total or leaked / total <= LEAK_WARN_SHARE:
        return None
    return (f"warning: {leaked} of {total} val images ({leaked / total:.1%}) have a near-duplicate in train "
            f"(perceptual hash, distance <= {DEFAULT_THRESHOLD}): validation accuracy will be optimistic; keep "
            f"groups on one side with --set data.split_by=COLUMN, or write a group-aware split with "
            f"`resnetcls data check DATA --suggest-split split.csv` (data.leak_check=false silences this)")
