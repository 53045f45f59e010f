"""Learning quality from scratch at equal wall time: a fixed recipe vs the auto recipe.

    python bench/small_data_recipe.py flowers ../shared/data/flowers12 --seeds 0 1
    python bench/small_data_recipe.py coil ../shared/data/coil100-a/pose-split.csv --seeds 0 1
    python bench/small_data_recipe.py progressive ../shared/data/flowers12 --seeds 0 --epochs 40

flowers: per seed, first a fixed recipe (ResNet-50, 224 px, random-resized-crop + flip, 10 epochs, batch 32,
with train.auto_recipe=false), timed from the command's start to its end; then the auto recipe (`resnetcls
train DATA` with no recipe flags) with
`--time` set to that wall time, so both get the same minutes. Both best models are evaluated on DATA's test
split (`resnetcls eval`). Prints each run, then the mean and spread (half the range) over seeds.
coil: the auto recipe on the COIL-100 pose split: best val top-1 and the wall time at which 98% was reached.
progressive: the small-data recipe (`--config small-data`, what the auto recipe picks for small data) at a
fixed --epochs with and without data.progressive=0.5: wall time, and the time each first reached the fixed
run's best val top-1 minus one point.
Every figure is measured here; the header names the machine. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from resnetcls.records.envinfo import machine_line

FIXED_RECIPE = [
    *("--model", "resnet50", "--image-size", "224", "--epochs", "10", "--batch-size", "32"),
    *("--set", "train.auto_recipe=false"),
]
COMMON = ["--set", "log.tensorboard=false"]
SMALL_DATA = "small-data"  # the packaged recipe


def resnetcls(*args: str) -> tuple[float, str]:
    """Run the CLI; (wall seconds, stderr). Exits with its message if it fails."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "resnetcls", *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"resnetcls {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start, result.stderr


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


def train_and_test(data: str, run_dir: Path, args: list[str]) -> dict:
    """Train, then evaluate best/ on DATA's test split: wall time, epochs, val and test top-1."""
    started = time.time()
    wall, log = resnetcls("train", data, "--out", str(run_dir), *COMMON, *args)
    summary = records(run_dir, "summary")[-1]
    _, _ = resnetcls(
        "eval", str(run_dir / "best"), data, "--out", str(run_dir / "eval"), "--precision", "fp32"
    )
    test = json.loads((run_dir / "eval" / "metrics.json").read_text())
    recipe = [line for line in log.splitlines() if line.startswith(("auto recipe", "time budget"))]
    return {
        "wall_s": wall,
        "epochs": summary["epochs_run"],
        "val_top1": summary["best_val_top1"],
        "test_top1": test["top1"],
        "started": started,
        "notes": recipe,
    }


def spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    half_range = (max(values) - min(values)) / 2
    return f"{mean:.2%} ± {half_range:.2%}"


def flowers(data: str, seeds: list[int], work: Path) -> None:
    rows = {"fixed recipe": [], "auto recipe": []}
    for seed in seeds:
        old = train_and_test(data, work / f"fixed-{seed}", [*FIXED_RECIPE, "--seed", str(seed)])
        new = train_and_test(
            data, work / f"auto-{seed}", ["--time", f"{old['wall_s']:.0f}s", "--seed", str(seed)]
        )
        for name, row in (("fixed recipe", old), ("auto recipe", new)):
            rows[name].append(row)
            print(
                f"seed {seed}  {name:<17} wall {row['wall_s']:6.0f} s  epochs {row['epochs']:3d}  "
                "best val top-1 "
                f"{row['val_top1']:.2%}  test top-1 {row['test_top1']:.2%}",
                flush=True,
            )
            for note in row["notes"]:
                print(f"    {note}", flush=True)
    print(
        "\n| recipe | seeds | wall time per run (s) | test top-1 (mean ± half range) |\n"
        "| --- | --- | --- | --- |"
    )
    for name, runs in rows.items():
        walls = ", ".join(f"{r['wall_s']:.0f}" for r in runs)
        print(f"| {name} | {len(runs)} | {walls} | {spread([r['test_top1'] for r in runs])} |")
    gain = statistics.mean(r["test_top1"] for r in rows["auto recipe"]) - statistics.mean(
        r["test_top1"] for r in rows["fixed recipe"]
    )
    print(f"\nauto recipe - fixed recipe: {gain * 100:+.1f} points of test top-1")


def first_time_at(run_dir: Path, started: float, target: float) -> float | None:
    """Seconds from the command's start to the first epoch whose val top-1 reached target (None: never)."""
    hits = [r["time"] - started for r in records(run_dir, "epoch") if r["val/top1"] >= target]
    return hits[0] if hits else None


def coil(data: str, seeds: list[int], work: Path) -> None:
    for seed in seeds:
        run_dir = work / f"coil-{seed}"
        started = time.time()
        wall, log = resnetcls("train", data, "--out", str(run_dir), *COMMON, "--seed", str(seed))
        summary = records(run_dir, "summary")[-1]
        reached = first_time_at(run_dir, started, 0.98)
        print(
            f"seed {seed}  wall {wall:.0f} s  epochs {summary['epochs_run']}  best val top-1 "
            f"{summary['best_val_top1']:.2%}  98% reached "
            f"{'never' if reached is None else f'after {reached:.0f} s'}",
            flush=True,
        )
        for line in log.splitlines():
            if line.startswith("auto recipe"):
                print(f"    {line}")


def progressive(data: str, seeds: list[int], epochs: int, work: Path) -> None:
    for seed in seeds:
        runs = {}
        for name, extra in (("fixed size", []), ("progressive 0.5", ["--set", "data.progressive=0.5"])):
            run_dir = work / f"{name.split()[0]}-{seed}"
            started = time.time()
            wall, _ = resnetcls(
                "train",
                data,
                "--out",
                str(run_dir),
                *COMMON,
                "--seed",
                str(seed),
                "--config",
                SMALL_DATA,
                "--epochs",
                str(epochs),
                *extra,
            )
            runs[name] = (run_dir, started, wall, records(run_dir, "summary")[-1]["best_val_top1"])
        target = runs["fixed size"][3] - 0.01
        for name, (run_dir, started, wall, best) in runs.items():
            reached = first_time_at(run_dir, started, target)
            print(
                f"seed {seed}  {name:<16} wall {wall:5.0f} s  best val top-1 {best:.2%}  "
                f"reached {target:.2%} "
                f"{'never' if reached is None else f'after {reached:.0f} s'}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["flowers", "coil", "progressive"])
    parser.add_argument("data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=40, help="progressive: epochs of both runs")
    parser.add_argument("--work", help="keep the run directories here (default: a temporary folder)")
    args = parser.parse_args()
    print(f"machine: {machine_line()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        if args.mode == "flowers":
            flowers(args.data, args.seeds, work)
        elif args.mode == "coil":
            coil(args.data, args.seeds, work)
        else:
            progressive(args.data, args.seeds, args.epochs, work)


if __name__ == "__main__":
    main()
