"""How `rank --diverse` (no --limit) grows with the number of images N: its selection stage alone.

Baseline (measured in this process): k-center greedy over every image, picking all N (a pool as large as the
folder: N x N distances). Compared: what rank does, the DIVERSE_POOL x DIVERSE_PICKS most uncertain kept
while scoring (TopPool, fed in batches of 32), DIVERSE_PICKS picks among them, then every other image most
uncertain first (pick_order). Scores and features are random (the time does not depend on their values);
features have the width of the model's pooled output (64: resnet18 at model.width=8). Prints the median
seconds over repeats, the ratio to the baseline, and each method's growth exponent between sizes
(log t2/t1 over log N2/N1: 1 linear, 2 quadratic).

    python bench/rank_diverse.py       # N = 1k, 4k, 16k, 3 repeats (the baseline takes minutes)
    python bench/rank_diverse.py --sizes 1000 4000 --features 512
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from functools import partial

import torch

from resnetcls.analysis.rank import DIVERSE_PICKS, DIVERSE_POOL, TopPool, k_center_greedy, pick_order
from resnetcls.records.envinfo import machine_line

BATCH = 32


def unbounded(score: torch.Tensor, features: torch.Tensor) -> list[int]:
    by_score = torch.sort(-score, stable=True).indices
    return by_score[k_center_greedy(features[by_score], 0, len(score))].tolist()


def bounded(score: torch.Tensor, features: torch.Tensor) -> list[int]:
    pool = TopPool(DIVERSE_POOL * DIVERSE_PICKS)
    for start in range(0, len(score), BATCH):
        rows = torch.arange(start, min(start + BATCH, len(score)))
        pool.add(rows, score[rows], features[rows])
    return pick_order(score, None, pool.result())


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def exponents(sizes: list[int], seconds: list[float]) -> str:
    return ", ".join(
        f"{math.log(t2 / t1) / math.log(n2 / n1):.2f}"
        for (n1, t1), (n2, t2) in zip(zip(sizes, seconds), zip(sizes[1:], seconds[1:]))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--features", type=int, default=64, help="pooled feature width (default 64)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    rows = []
    for n in args.sizes:
        score, features = (
            torch.rand(n, generator=generator),
            torch.randn(n, args.features, generator=generator),
        )
        assert sorted(bounded(score, features)) == list(range(n))  # every image listed once
        rows.append(
            (
                n,
                median_seconds(partial(unbounded, score, features), args.repeats),
                median_seconds(partial(bounded, score, features), args.repeats),
            )
        )
    print(f"machine: {machine_line()}")
    print(
        f"selection stage of rank --diverse without --limit, {args.features} features, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}; bounded: {DIVERSE_PICKS} picks among "
        f"the {DIVERSE_POOL * DIVERSE_PICKS} most uncertain"
    )
    print(f"{'images':>8} {'unbounded k-center (baseline) s':>32} {'bounded pool s':>15} {'vs baseline':>12}")
    for n, base, new in rows:
        print(f"{n:>8} {base:>32.3f} {new:>15.3f} {new / base:>11.3f}x")
    sizes = [n for n, _, _ in rows]
    print(
        f"growth exponents between sizes: baseline {exponents(sizes, [b for _, b, _ in rows])}; "
        f"bounded {exponents(sizes, [t for _, _, t in rows])}"
    )


if __name__ == "__main__":
    main()
