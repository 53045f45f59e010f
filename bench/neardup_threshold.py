"""Precision and recall of the near-duplicate threshold (data/neardup.py) on real photographs.

Known duplicates: each of a sample of base photos against a transformed copy (JPEG quality 20, resized to
50%, shifted by 2% or 4% (the border cropped), brightness +-20%, contrast +-20%, rotated 3 degrees). Known
non-duplicates: every pair of different photos among all of flowers12 and hymenoptera and pose 0 of each
COIL-100 object (same class included), about a million pairs; pixel-close pairs (mean absolute grey difference
below 8 of 255 on 64x64 thumbnails) are true duplicates in the source data (flowers12 has dozens, some across
its train and test), counted and left out. Neighbouring video frames: COIL-100 turntable views 5 degrees
apart (and 10, 20 degrees for contrast), counted separately: they are the case a random split leaks.
Base photos for the transforms: --per-set from each of flowers12 train, hymenoptera train, COIL-100 pose 0.

    PYTHONPATH=src python bench/neardup_threshold.py [--per-set 120] [--seed 0]

Prints, per threshold: recall per transform kind and overall, false-positive rate on the non-duplicate pairs,
precision on this set (as many duplicates as there are base photos per transform), and the chosen threshold:
the largest whose false-positive rate stays at or below MAX_FPR = 1e-5 per pair. Why so low: a val image is
compared with every train image, so its chance of a false alarm is about FPR x n_train (1e-5 x 7,000 = 7%);
a looser threshold would report leakage that is not there on large sets.
"""
from __future__ import annotations

import argparse
import io
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from resnetcls.data.decode import decode_image
from resnetcls.data.neardup import DEFAULT_THRESHOLD, hamming, perceptual_hash
from resnetcls.envinfo import machine_line

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MAX_FPR = 1e-5
SAME_PIXELS = 8.0  # grey levels of 255: below this two photos are copies of one (the source data has some)


def _jpeg(image, quality=20):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _shift_crop(image, share):
    w, h = image.size
    dx, dy = round(w * share), round(h * share)
    return image.crop((dx, dy, w, h)).resize((w, h))  # content moves by `share` and loses that border


TRANSFORMS = {
    "jpeg_q20": _jpeg,
    "resize_50": lambda im: im.resize((max(1, im.width // 2), max(1, im.height // 2)), Image.Resampling.BILINEAR),
    "shift_2pct": lambda im: _shift_crop(im, 0.02),
    "shift_4pct": lambda im: _shift_crop(im, 0.04),
    "brighter_20": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "darker_20": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    "contrast_up_20": lambda im: ImageEnhance.Contrast(im).enhance(1.2),
    "contrast_down_20": lambda im: ImageEnhance.Contrast(im).enhance(0.8),
    "rotate_3deg": lambda im: im.rotate(3, resample=Image.Resampling.BILINEAR),
}


def base_photos(per_set: int, rng: random.Random) -> list[Path]:
    paths = []
    for pattern in ("flowers12/train/*/*.jpg", "hymenoptera/train/*/*.jpg", "coil100-a/obj*/obj*__0.png"):
        found = sorted(DATA.glob(pattern))
        paths += rng.sample(found, min(per_set, len(found)))
    return paths


def all_photos() -> list[Path]:
    return (sorted(DATA.glob("flowers12/*/*/*.jpg")) + sorted(DATA.glob("hymenoptera/*/*/*.jpg"))
            + sorted(DATA.glob("coil100-a/obj*/obj*__0.png")))


def _grey64(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L").resize((64, 64), Image.Resampling.BOX), dtype=np.float32)


def non_duplicate_distances() -> tuple[np.ndarray, int]:
    """Distances of every pair of different photos, and how many pairs were left out as true duplicates in the
    source data: pixel-close copies (mean absolute grey difference below SAME_PIXELS on 64x64 thumbnails)."""
    images = [decode_image(p) for p in all_photos()]
    hashes = np.array([perceptual_hash(im) for im in images], dtype=np.uint64)
    greys = [_grey64(im) for im in images]
    i, j = np.triu_indices(len(hashes), 1)
    distances = hamming(hashes[i], hashes[j])
    same = np.zeros(len(distances), dtype=bool)
    for k in np.flatnonzero(distances <= 20):  # only close hashes need the pixel check
        same[k] = float(np.abs(greys[i[k]] - greys[j[k]]).mean()) < SAME_PIXELS
    return distances[~same], int(same.sum())


def coil_frames(step: int) -> list[tuple[int, int]]:
    """Hash pairs of COIL-100 views `step` degrees apart (every object, every pose)."""
    pairs = []
    for obj in sorted(DATA.glob("coil100-a/obj*")):
        n = int(obj.name[3:])
        hashes = {a: perceptual_hash(decode_image(obj / f"obj{n}__{a}.png")) for a in range(0, 360, 5)}
        pairs += [(hashes[a], hashes[(a + step) % 360]) for a in hashes]
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-set", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA}: shared data not found")
    rng = random.Random(args.seed)
    photos = base_photos(args.per_set, rng)
    images = [decode_image(p) for p in photos]
    base = np.array([perceptual_hash(im) for im in images], dtype=np.uint64)
    dup = {k: hamming(base, [perceptual_hash(fn(im)) for im in images]) for k, fn in TRANSFORMS.items()}
    non_dup, identical = non_duplicate_distances()
    frames = {step: np.array([int(d) for d in (hamming(a, b) for a, b in coil_frames(step))])
              for step in (5, 10, 20)}
    print(machine_line())
    print(f"{len(photos)} base photos, {len(TRANSFORMS)} transforms, {len(non_dup)} non-duplicate pairs "
          f"({identical} pixel-close pairs in the source data left out as true duplicates), "
          f"COIL-100 view pairs: {len(frames[5])} per angle step")
    kinds = list(TRANSFORMS)
    print("t  " + " ".join(f"{k[:10]:>10}" for k in kinds) + "  recall      FPR  precision  coil5  coil10  coil20")
    chosen = 0
    for t in range(0, 21, 2):  # pHash bits are balanced (32 ones), so distances are even
        recalls = [float((dup[k] <= t).mean()) for k in kinds]
        tp = sum(int((dup[k] <= t).sum()) for k in kinds)
        fp = int((non_dup <= t).sum())
        fpr = fp / len(non_dup)
        precision = tp / max(tp + fp, 1)  # depends on the mix: one copy per base photo and transform
        coil = [float((frames[s] <= t).mean()) for s in (5, 10, 20)]
        print(f"{t:<2} " + " ".join(f"{r:>10.3f}" for r in recalls)
              + f"  {tp / (len(base) * len(kinds)):.3f}  {fpr:.7f}  {precision:.4f}   "
              + "  ".join(f"{c:.3f}" for c in coil))
        if fpr <= MAX_FPR:
            chosen = t
    print(f"chosen threshold (largest with false-positive rate <= {MAX_FPR:g}): {chosen}; "
          f"data/neardup.py DEFAULT_THRESHOLD = {DEFAULT_THRESHOLD}")


if __name__ == "__main__":
    main()
