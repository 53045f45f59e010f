"""Imbalanced classes: the auto recipe's class balancing off, with balanced loss weights, or with the balanced
sampler, on 10:1 long-tailed training subsets of two real data sets.

    python bench/imbalance.py --seeds 0 1 2 --out /tmp/imbalance
    python bench/imbalance.py --sets flowers --seeds 0 --epochs 5 --out /tmp/imbalance   # a quick look

Each data set is cut, with a fixed seed (--cut-seed), into a long-tailed training split: class i of C keeps
a geometric share of its training images, from all of them (i = 0) down to 1/RATIO (i = C-1), each at least
one; the held-out images stay whole and balanced: one a class is the run's validation split (kept small: it is
scored every epoch), the rest the test split. flowers: ../shared/data/flowers12 (train/ cut, test/ held out);
coil: ../shared/data/coil100-a/pose-split.csv, objects 1-10 (the pose split's train views cut, its val views
held out). Every arm trains the auto recipe at fixed epochs, resnet18 at width 16 and 64 px (--epochs,
--model, --image-size, model.width given: the rest is the recipe's), from scratch (RESNETCLS_OFFLINE=1, no
ImageNet weights), and the final model is evaluated on the test split (`resnetcls eval`, fp32).

Arms: off (data.sampler=shuffle given: no class balancing), weights (loss.class_weights=balanced), sampler
(data.sampler=balanced); over engine/recipe_choice.py's IMBALANCED ratio the auto recipe turns on the one its
BALANCE names. Prints balanced accuracy (mean per-class recall), top-1 and the worst class's
recall (with its name) per arm and seed, then each arm's medians, with the machine line. Fixed epochs, not
wall time: the figures do not depend on a shared machine's load.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import tempfile
from pathlib import Path

from runcli import resnetcls

from resnetcls.records.envinfo import machine_line

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
RATIO = 10.0  # the largest training class over the smallest
THREADS = 1  # torch threads a run uses (OMP_NUM_THREADS)
RUN_ENV = {**os.environ, "RESNETCLS_OFFLINE": "1", "OMP_NUM_THREADS": str(THREADS)}
ARMS = {
    "off": ["--set", "data.sampler=shuffle"],
    "weights": ["--set", "loss.class_weights=balanced"],
    "sampler": ["--set", "data.sampler=balanced"],
}
# Neither the open-set score nor the temperature changes which class is predicted; both cost time. fp32, one
# thread and no loader workers: on a loaded shared machine bf16's one-off kernel set-up and threads waiting on
# each other cost a small model more than its training (the same for every arm).
COMMON = [
    *("--set", "log.tensorboard=false", "--set", "eval.open_set=off", "--set", "eval.calibrate=false"),
    *("--set", "train.precision=fp32", "--set", "data.num_workers=0"),
]


def geometric_keep(count: int, rank: int, classes: int, ratio: float = RATIO) -> int:
    """How many of a class's count images the long tail keeps: count * ratio^(-rank / (classes - 1))."""
    share = ratio ** (-rank / max(1, classes - 1))
    return max(1, round(count * share))


def long_tail(rows: list[tuple[str, str, str]], seed: int) -> list[tuple[str, str, str]]:
    """rows (path, label, split) with each class's train rows cut to its geometric share (classes ranked in
    sorted order, the rows kept chosen with a seeded shuffle), and the held-out (val) rows split into one
    a class for the run's own validation and the rest as the test split eval scores."""
    import random

    classes = sorted({label for _, label, _ in rows})
    rng = random.Random(seed)
    kept = []
    for rank, name in enumerate(classes):
        train = sorted(row for row in rows if row[1] == name and row[2] == "train")
        rng.shuffle(train)
        kept += train[: geometric_keep(len(train), rank, len(classes))]
        held = sorted(row for row in rows if row[1] == name and row[2] != "train")
        kept += [(held[0][0], name, "val"), *((path, name, "test") for path, _, _ in held[1:])]
    return sorted(kept, key=lambda row: (row[2], row[1], row[0]))


def flowers_rows(folder: Path) -> list[tuple[str, str, str]]:
    """flowers12: train/<class>/ as train, test/<class>/ as val."""
    rows = []
    for split, name in (("train", "train"), ("test", "val")):
        for path in sorted((folder / split).glob("*/*")):
            rows.append((str(path), path.parent.name, name))
    return rows


def coil_rows(split_csv: Path, objects: int) -> list[tuple[str, str, str]]:
    """The COIL-100 pose split's rows of its first `objects` objects."""
    with open(split_csv, newline="") as f:
        table = list(csv.DictReader(f))
    names = sorted({row["label"] for row in table})[:objects]
    return [
        (str(split_csv.parent / row["path"]), row["label"], row["split"])
        for row in table
        if row["label"] in names
    ]


def write_csv(rows: list[tuple[str, str, str]], path: Path) -> dict[str, int]:
    """The data set's CSV; its train counts per class."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    counts: dict[str, int] = {}
    for _, label, split in rows:
        if split == "train":
            counts[label] = counts.get(label, 0) + 1
    return counts


def split_sizes(data: Path) -> str:
    """The val and test images of a data set's CSV, in words."""
    with open(data, newline="") as f:
        splits = [row["split"] for row in csv.DictReader(f)]
    return f"{splits.count('val')} val images (one a class), {splits.count('test')} test images"


def headline(metrics: dict) -> dict:
    """Balanced accuracy, top-1 and the worst class (name, recall) from eval's metrics.json."""
    recalls = {name: row["recall"] for name, row in metrics["per_class"].items() if row["recall"] is not None}
    worst = min(recalls, key=lambda name: (recalls[name], name))
    return {
        "balanced": metrics["balanced_accuracy"],
        "top1": metrics["top1"],
        "worst": recalls[worst],
        "worst_class": worst,
    }


def run_arm(data: Path, run_dir: Path, arm: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one arm at fixed epochs, evaluate its final model on the test split (an arm already evaluated in
    --out with the same settings is read back, not trained again: a later call with more seeds trains only
    those)."""
    done = run_dir / "eval" / "metrics.json"
    if done.is_file():
        return headline(json.loads(done.read_text()))
    recipe = ["--model", args.model, "--image-size", str(args.image_size), "--epochs", str(args.epochs)]
    recipe += ["--set", f"model.width={args.width}"]
    resnetcls(
        "train", str(data), "--out", str(run_dir), "--force", "--seed", str(seed), *recipe, *COMMON,
        *ARMS[arm], *args.train_args.split(), env=RUN_ENV,
    )  # fmt: skip
    out = run_dir / "eval"
    resnetcls(
        "eval",
        str(run_dir / "final"),
        str(data),
        "--out",
        str(out),
        "--precision",
        "fp32",
        "--batch-size",
        "64",
        env=RUN_ENV,
    )
    return headline(json.loads((out / "metrics.json").read_text()))


def report(name: str, results: dict[str, list[tuple[int, dict]]]) -> None:
    """Each arm and seed, then each arm's medians."""
    print(f"\n{name}: arm, seed, balanced accuracy, top-1, worst-class recall (class)")
    for arm, runs in results.items():
        for seed, r in runs:
            print(
                f"  {arm:8s} {seed:3d}  {r['balanced']:.3f}  {r['top1']:.3f}  {r['worst']:.3f} "
                f"({r['worst_class']})"
            )
    print(f"{name} medians: arm, balanced accuracy, top-1, worst-class recall")
    for arm, runs in results.items():
        med = {key: statistics.median(r[key] for _, r in runs) for key in ("balanced", "top1", "worst")}
        print(f"  {arm:8s}  {med['balanced']:.3f}  {med['top1']:.3f}  {med['worst']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=["coil", "flowers"], choices=["flowers", "coil"])
    parser.add_argument("--flowers", default=str(SHARED / "flowers12"))
    parser.add_argument("--coil", default=str(SHARED / "coil100-a" / "pose-split.csv"))
    parser.add_argument("--objects", type=int, default=10, help="COIL-100 objects used (the first N)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--cut-seed", type=int, default=0, help="seed of the long-tailed cut")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--width", type=int, default=16, help="model.width")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--train-args", default="", help="more train flags for every arm")
    parser.add_argument(
        "--out", default="", help="folder for the data sets and runs, kept (default: a temporary one)"
    )
    args = parser.parse_args()
    print(f"machine: {machine_line()}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(args.out or scratch)
        sets = {name: build_set(name, base, args) for name in args.sets}
        results = {name: {arm: [] for arm in args.arms} for name in sets}
        for seed in args.seeds:  # every set and arm of a seed before the next seed
            for name, data in sets.items():
                for arm in args.arms:
                    run_dir = (
                        base
                        / name
                        / f"{arm}-{seed}-{args.model}-w{args.width}-{args.image_size}px-e{args.epochs}"
                    )
                    result = run_arm(data, run_dir, arm, seed, args)
                    results[name][arm].append((seed, result))
                    print(f"  {name} {arm} seed {seed}: {json.dumps(result)}", flush=True)
        for name in sets:
            report(name, results[name])


def build_set(name: str, base: Path, args: argparse.Namespace) -> Path:
    """The long-tailed CSV of one data set, described in a line."""
    rows = flowers_rows(Path(args.flowers)) if name == "flowers" else coil_rows(Path(args.coil), args.objects)
    data = base / name / "data.csv"
    counts = write_csv(long_tail(rows, args.cut_seed), data)
    print(
        f"{name}: {sum(counts.values())} train images in {len(counts)} classes "
        f"({max(counts.values())} to {min(counts.values())}), {split_sizes(data)}",
        flush=True,
    )
    return data


if __name__ == "__main__":
    main()
