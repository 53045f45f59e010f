"""Precision and recall of the near-duplicate test (data/neardup.py) on real photographs, and the false-match
rate per pair that sets its layout threshold at each data size.

Known duplicates: each of a sample of base photos against a transformed copy (JPEG quality 20, resized to
50%, shifted by 2% or 4% (the border cropped), brightness +-20%, contrast +-20%, rotated 3 degrees). Known
non-duplicates: every pair of different photos among all of imagenette10, flowers12 and hymenoptera and pose 0
of each COIL-100 object (same class included), about 35 million pairs; pixel-close pairs (mean absolute grey
difference below 8 of 255 on 64x64 thumbnails) are true duplicates in the source data (flowers12 has dozens,
some across its train and test), counted and left out. Neighbouring video frames: COIL-100 turntable views 5
degrees apart (and 10, 20 degrees for contrast), counted separately: they are the case a random split leaks.
Base photos for the transforms: --per-set from each of flowers12 train, hymenoptera train, COIL-100 pose 0.

    PYTHONPATH=src python bench/neardup_threshold.py [--per-set 120] [--seed 0]

Prints, per layout threshold t: recall per transform kind and overall for the layout hash alone ("layout")
and for the test data/neardup.py makes (layout within t and colour hash within COLOUR_THRESHOLD: "both"), the
non-duplicate pairs passing each, the false-match rate per pair of the combined test (measured where at least
MIN_COUNT pairs pass; below, extrapolated log-linearly from the measured rates at t = 8..14, an upper bound:
the pairs that pass there are mostly re-shot photos of one flower), that rate in data/neardup.py's
PAIR_FALSE_RATE, and the largest train set at which t keeps the chance matches per val image below 1%.
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
from resnetcls.data.neardup import (
    COLOUR_THRESHOLD,
    MAX_EXPECTED_FALSE,
    PAIR_FALSE_RATE,
    colour_hash,
    hamming,
    perceptual_hash,
)
from resnetcls.records.envinfo import machine_line

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAME_PIXELS = 8.0  # grey levels of 255: below this two photos are copies of one (the source data has some)
MIN_COUNT = 5  # pairs: fewer passing than this and the rate is extrapolated, not measured
FIT = (8, 14)  # the layout thresholds whose measured rates the extrapolation follows


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
    "resize_50": lambda im: im.resize(
        (max(1, im.width // 2), max(1, im.height // 2)), Image.Resampling.BILINEAR
    ),
    "shift_2pct": lambda im: _shift_crop(im, 0.02),
    "shift_4pct": lambda im: _shift_crop(im, 0.04),
    "brighter_20": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "darker_20": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    "contrast_up_20": lambda im: ImageEnhance.Contrast(im).enhance(1.2),
    "contrast_down_20": lambda im: ImageEnhance.Contrast(im).enhance(0.8),
    "rotate_3deg": lambda im: im.rotate(3, resample=Image.Resampling.BILINEAR),
}


def signature(image) -> tuple[int, int]:
    return perceptual_hash(image), colour_hash(image)


def base_photos(per_set: int, rng: random.Random) -> list[Path]:
    paths = []
    for pattern in ("flowers12/train/*/*.jpg", "hymenoptera/train/*/*.jpg", "coil100-a/obj*/obj*__0.png"):
        found = sorted(DATA.glob(pattern))
        paths += rng.sample(found, min(per_set, len(found)))
    return paths


def all_photos() -> list[Path]:
    return (
        sorted(DATA.glob("flowers12/*/*/*.jpg"))
        + sorted(DATA.glob("hymenoptera/*/*/*.jpg"))
        + sorted(DATA.glob("coil100-a/obj*/obj*__0.png"))
        + sorted(DATA.glob("imagenette10/*/*/*.JPEG"))
    )


def _grey64(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L").resize((64, 64), Image.Resampling.BOX), dtype=np.uint8)


def non_duplicate_pairs(max_layout: int = 20) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(layout, colour) distances of every pair of different photos within max_layout layout bits (the rest
    pass no threshold here), the number of pairs in all, and how many were left out as true duplicates in the
    source data (pixel-close: mean absolute grey difference below SAME_PIXELS on 64x64 thumbnails)."""
    layout, colour, greys = [], [], []
    for path in all_photos():
        image = decode_image(path)
        layout.append(perceptual_hash(image))
        colour.append(colour_hash(image))
        greys.append(_grey64(image))
    layout, colour, greys = np.array(layout, np.uint64), np.array(colour, np.uint64), np.stack(greys)
    near_layout, near_colour, same = [], [], 0
    for a in range(len(layout) - 1):  # row by row: 35 million pairs never held at once
        d = hamming(layout[a], layout[a + 1 :])
        for b in np.flatnonzero(d <= max_layout) + a + 1:
            if np.abs(greys[a].astype(np.float32) - greys[b]).mean() < SAME_PIXELS:
                same += 1
                continue
            near_layout.append(int(d[b - a - 1]))
            near_colour.append(int(hamming(colour[a], colour[b])))
    total = len(layout) * (len(layout) - 1) // 2 - same
    return np.array(near_layout), np.array(near_colour), total, same


def coil_frames(step: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Signature pairs of COIL-100 views `step` degrees apart (every object, every pose)."""
    pairs = []
    for obj in sorted(DATA.glob("coil100-a/obj*")):
        n = int(obj.name[3:])
        sigs = {a: signature(decode_image(obj / f"obj{n}__{a}.png")) for a in range(0, 360, 5)}
        pairs += [(sigs[a], sigs[(a + step) % 360]) for a in sigs]
    return pairs


def false_rates(layout: np.ndarray, colour: np.ndarray, total: int) -> dict[int, tuple[float, bool]]:
    """{t: (false-match rate per pair of the combined test, measured?)}; extrapolated where < MIN_COUNT
    pass."""
    counts = {t: int(((layout <= t) & (colour <= COLOUR_THRESHOLD)).sum()) for t in range(0, 21, 2)}
    slope = np.polyfit(
        list(range(FIT[0], FIT[1] + 1, 2)),
        np.log([max(counts[t], 1) for t in range(FIT[0], FIT[1] + 1, 2)]),
        1,
    )[0]
    lowest = min(t for t in counts if counts[t] >= MIN_COUNT)
    return {
        t: (
            (counts[t] / total, True)
            if counts[t] >= MIN_COUNT
            else (counts[lowest] * np.exp(slope * (t - lowest)) / total, False)
        )
        for t in counts
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-set", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA}: shared data not found")
    photos = base_photos(args.per_set, random.Random(args.seed))
    images = [decode_image(p) for p in photos]
    base = [signature(im) for im in images]
    dup = {}
    for kind, fn in TRANSFORMS.items():
        copies = [signature(fn(im)) for im in images]
        dup[kind] = (
            hamming([b[0] for b in base], [c[0] for c in copies]),
            hamming([b[1] for b in base], [c[1] for c in copies]),
        )
    layout, colour, total, identical = non_duplicate_pairs()
    frames = {
        step: tuple(hamming([a[k] for a, _ in pairs], [b[k] for _, b in pairs]) for k in (0, 1))
        for step, pairs in ((s, coil_frames(s)) for s in (5, 10, 20))
    }
    rates = false_rates(layout, colour, total)
    print(machine_line())
    print(
        f"{len(photos)} base photos, {len(TRANSFORMS)} transforms, {total:,} non-duplicate pairs "
        f"({identical} pixel-close pairs in the source data left out as true duplicates), "
        "COIL-100 view pairs: "
        f"{len(frames[5][0])} per angle step; colour threshold {COLOUR_THRESHOLD}"
    )
    kinds = list(TRANSFORMS)
    print(
        "t  test   "
        + " ".join(f"{k[:10]:>10}" for k in kinds)
        + "  recall  coil5 coil10 coil20  pairs   rate/pair  in code  max train"
    )
    for t in range(0, 21, 2):
        for test in ("layout", "both"):

            def passes(d, t=t, test=test):
                return (d[0] <= t) & ((d[1] <= COLOUR_THRESHOLD) if test == "both" else True)

            recalls = [float(passes(dup[k]).mean()) for k in kinds]
            coil = [float(passes(frames[s]).mean()) for s in (5, 10, 20)]
            passed = int(((layout <= t) & ((colour <= COLOUR_THRESHOLD) if test == "both" else True)).sum())
            rate, measured = rates[t]
            tail = (
                f"{rate:.2e}{'' if measured else '*'}  {PAIR_FALSE_RATE.get(t, float('nan')):.1e}  "
                f"{MAX_EXPECTED_FALSE / rate:>9,.0f}"
                if test == "both"
                else ""
            )
            print(
                f"{t:<2} {test:<6} "
                + " ".join(f"{r:>10.3f}" for r in recalls)
                + f"  {np.mean(recalls):.3f}  "
                + "  ".join(f"{c:.3f}" for c in coil)
                + f"  {passed:>6}  {tail}"
            )
    print(f"* extrapolated (fewer than {MIN_COUNT} pairs pass): an upper bound")


if __name__ == "__main__":
    main()
