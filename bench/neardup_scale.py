"""The leak check `train` runs (data/neardup.py) as the data grows: work, wall time and false alarms.

On a synthetic data set (`resnetcls data synth OUT --classes 100 --per-class 1000 --image-size 32`: no image
in it is a copy of another, so every val image flagged is a false alarm) and random subsets of it, for each
size: the layout threshold from the photo table (t0) and the one the check settles on (t, after the
upside-down val images are searched too), the chance matches per val image it states, the share of val images
it flags, the comparisons per val image (both searches), and the wall time of hashing (decoding excluded) and
of the search (median of --repeat runs). Side by side, the baseline: the layout hash alone at distance 8 for
every size (no colour hash, no size rule), its share flagged and the ratio.

    PYTHONPATH=src python bench/neardup_scale.py DATA_DIR [DATA_DIR ...] \
        [--sizes 2000,8000,32000] [--repeat 3]

Each DATA_DIR is measured whole, and the largest also at each of --sizes (a seeded random subset of its rows).
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import time
from pathlib import Path

import numpy as np

from resnetcls.data.decode import decode_image
from resnetcls.data.neardup import (
    DEFAULT_THRESHOLD,
    leak_check_from_counts,
    near_reference,
    store_signatures,
    threshold_counts,
)
from resnetcls.records.envinfo import machine_line


class Images:
    """The decoded images as store_signatures reads a decoded store: load(i), len(), no bad files."""

    def __init__(self, paths: list[str]) -> None:
        self.images, self.bad = [np.asarray(decode_image(p)) for p in paths], {}

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> np.ndarray:
        return self.images[i]


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    return fn(*args, **kwargs), time.perf_counter() - start


def rows_of(root: Path) -> list[tuple[str, str]]:
    with open(root / "manifest.csv", newline="") as f:
        return [
            (str(root / r["path"]), r["split"]) for r in csv.DictReader(f) if r["split"] in ("train", "val")
        ]


def measure(rows: list[tuple[str, str]], repeat: int) -> dict:
    """`train`'s leak check (engine/train.py, one process) on these rows, timed in its two parts."""
    train, train_s = timed(store_signatures, Images([p for p, s in rows if s == "train"]))
    val, val_s = timed(store_signatures, Images([p for p, s in rows if s == "val"]), flipped=True)
    times, results = [], None
    for _ in range(repeat):
        results, seconds = timed(lambda: (near_reference(val[:2], train), near_reference(val[2:], train)))
        times.append(seconds)
    check = leak_check_from_counts(threshold_counts(*results), len(val[0]), len(train[0]))
    zeros = (np.zeros(len(val[0]), np.uint64), np.zeros(len(train[0]), np.uint64))
    baseline = near_reference((val[0], zeros[0]), (train[0], zeros[1]), DEFAULT_THRESHOLD)
    return {
        "images": len(rows),
        "train": len(train[0]),
        "val": len(val[0]),
        "t0": results[0].threshold,
        "t": check.threshold,
        "chance": check.chance,
        "flagged": check.leaked / max(len(val[0]), 1),
        "per_val": (results[0].comparisons + results[1].comparisons) / max(len(val[0]), 1),
        "hash_s": train_s + val_s,
        "search_s": statistics.median(times),
        "base_flagged": baseline.flags.mean(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", nargs="+", type=Path)
    parser.add_argument("--sizes", default="2000,8000,32000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sets = {str(d): rows_of(d) for d in args.data}
    largest = max(sets.values(), key=len)
    runs = [
        (f"subset {n:,}", random.Random(0).sample(largest, n))
        for n in map(int, args.sizes.split(","))
        if n < len(largest)
    ] + [(name, rows) for name, rows in sets.items()]
    print(machine_line())
    print(
        f"{'data':<28} {'images':>8} {'train':>7} {'val':>6} t0  t  chance/val  flagged  cmp/val  "
        "hash ms/img  "
        f"search s  search us/val  baseline flagged  ratio"
    )
    for name, rows in runs:
        m = measure(rows, args.repeat)
        print(
            f"{name[-28:]:<28} {m['images']:>8,} {m['train']:>7,} {m['val']:>6,} {m['t0']:>2} {m['t']:>2}  "
            f"{m['chance']:>9.3%}  "
            f"{m['flagged']:>7.2%}  {m['per_val']:>7.1f}  {1000 * m['hash_s'] / m['images']:>11.3f}  "
            f"{m['search_s']:>8.3f}  {1e6 * m['search_s'] / max(m['val'], 1):>13.1f}  "
            f"{m['base_flagged']:>16.2%}  "
            f"{m['flagged'] / m['base_flagged'] if m['base_flagged'] else float('nan'):>5.2f}"
        )


if __name__ == "__main__":
    main()
