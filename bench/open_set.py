"""Which open-set score to ship by default: unknown-object rejection quality and its cost per image.

    OMP_NUM_THREADS=1 python bench/open_set.py --work runs/open-set
    OMP_NUM_THREADS=1 python bench/open_set.py --work runs/open-set-trained --time "" \
        --train-args "--config default --model resnet18 --image-size 48 --epochs 8"

First, per seed, trains `resnetcls train CSV --time 4m --seed S` (or with --time/--train-args as given) on
COIL-100 objects 1-40 with the viewpoint split into WORK/coil40-seedS (a run folder that already has best/ is
reused). Then, per seed, loads best/ at fp32 and takes pooled features and logits of the training images
(eval preprocessing), the unseen-pose val images of objects 1-40 (known), all val-pose images of objects 41-50
(near unknowns: the same turntable, black background and camera) and flowers12/test + hymenoptera/val (far
unknowns: natural photographs). For each score it fits the scorer on the training features (temperature from
the model's calibration) and prints AUROC and FPR@95 for near and far unknowns, then the mean over seeds with
FPR@95 as a ratio of max-softmax's, and variants: other knn k, other mahalanobis shrinkage, and scorers fitted
on every other training view only. Cost: the network's forward at batch 1 and 32 (median of repeats after
warm-up) and each score's extra time on top of it, against the fp32 and the auto-precision forward. The
header names the machine (`resnetcls env`'s CPU line) and the date. On a CPU shared with other jobs,
OMP_NUM_THREADS=1 keeps OpenMP threads from spinning against them.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from resnetcls import Predictor
from resnetcls.records.envinfo import machine_line
from resnetcls.utils import openset

KNOWN_OBJECTS = 40  # obj001..obj040 are taught; obj041..obj050 are the near unknowns
FAR_SETS = ("flowers12/test", "hymenoptera/val")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"}
PRECISION = "fp32"  # bit-stable features; latency is timed at fp32 and at this machine's auto precision
BATCH = 64
KNN_KS = tuple(k for k in (1, 2, 5, 10) if k != openset.KNN_K)  # variants beside the shipped k
SHRINKAGES = tuple(s for s in (0.01, 0.1, 0.3, 0.6) if s != openset.SHRINKAGE)  # ... and shrinkage
SCORE_CALLS = 50  # calls timed as one block: a score takes microseconds


def object_number(label: str) -> int:
    return int(label.removeprefix("obj"))


def read_pose_split(shared: Path) -> list[dict]:
    """pose-split.csv's rows with absolute paths."""
    folder = shared / "coil100-a"
    with open(folder / "pose-split.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["path"] = str((folder / row["path"]).resolve())
    return rows


def write_known_csv(shared: Path, work: Path) -> Path:
    """The training manifest: objects 1-40 with their train/val poses (absolute paths)."""
    out = work / "coil40.csv"
    work.mkdir(parents=True, exist_ok=True)
    rows = [r for r in read_pose_split(shared) if object_number(r["label"]) <= KNOWN_OBJECTS]
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows([r["path"], r["label"], r["split"]] for r in rows)
    return out


def train_runs(manifest: Path, work: Path, seeds: list[int], extra: list[str]) -> list[Path]:
    """One run per seed (`resnetcls train MANIFEST --seed S` + extra); a run folder that already has best/ is
    kept as it is."""
    runs = []
    for seed in seeds:
        run_dir = work / f"coil40-seed{seed}"
        if not (run_dir / "best").is_dir():
            command = [sys.executable, "-m", "resnetcls", "train", str(manifest), *extra]
            command += ["--seed", str(seed), "--out", str(run_dir)]
            print(f"training: resnetcls {' '.join(command[3:])}", flush=True)
            subprocess.run(command, check=True)
        runs.append(run_dir)
    return runs


def image_sets(shared: Path, rows: list[dict]) -> dict[str, list[tuple[str, str]]]:
    """(path, label) lists: train and known (objects 1-40), near (val poses of 41-50) and far; and the
    training images' angles."""
    known = [r for r in rows if object_number(r["label"]) <= KNOWN_OBJECTS]
    near = [
        (r["path"], "") for r in rows if object_number(r["label"]) > KNOWN_OBJECTS and r["split"] == "val"
    ]
    far = [
        (str(path), "")
        for folder in FAR_SETS
        for path in sorted((shared / folder).rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    return {
        "train": [(r["path"], r["label"]) for r in known if r["split"] == "train"],
        "known": [(r["path"], r["label"]) for r in known if r["split"] == "val"],
        "near": near,
        "far": far,
        "train_angles": [int(r["angle"]) for r in known if r["split"] == "train"],
    }


def embed(predictor: Predictor, items: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features and raw logits of the images that decode (a placeholder that does not is skipped)."""
    images = [
        image for image in (predictor.load(path) for path, _ in items) if isinstance(image, torch.Tensor)
    ]
    features, logits = [], []
    for start in range(0, len(images), BATCH):
        batch_features, batch_logits = predictor.features_and_logits(
            torch.stack(images[start : start + BATCH])
        )
        features.append(batch_features)
        logits.append(batch_logits)
    return torch.cat(features), torch.cat(logits)


def scorers(features: torch.Tensor, labels: torch.Tensor, classes: int, temperature: float) -> dict:
    """Every shipped score at its defaults, then the variants: knn k and mahalanobis shrinkage."""
    fitted = {
        name: openset.fit_scorer(name, features, labels, classes, temperature) for name in openset.SCORES
    }
    knn_tensors = fitted["knn"].tensors()
    for k in KNN_KS:
        fitted[f"knn k={k}"] = openset.OpenSetScorer("knn", knn_tensors, temperature, k=k)
    shipped = openset.SHRINKAGE
    try:
        for shrinkage in SHRINKAGES:
            openset.SHRINKAGE = shrinkage
            name = f"mahalanobis shrinkage={shrinkage}"
            fitted[name] = openset.fit_scorer("mahalanobis", features, labels, classes, temperature)
    finally:
        openset.SHRINKAGE = shipped
    return fitted


def quality(scorer: openset.OpenSetScorer, embedded: dict) -> dict:
    """AUROC and FPR@95 of near and far unknowns against the known (unseen-pose) images."""
    known = scorer(*embedded["known"])
    row = {}
    for kind in ("near", "far"):
        unknown = scorer(*embedded[kind])
        row[f"{kind}_auroc"] = openset.auroc(known, unknown)
        row[f"{kind}_fpr95"] = openset.fpr_at_tpr(known, unknown)
    return row


def median_seconds(call, *args, repeats: int, calls: int = 1, warmup: int = 2) -> float:
    """The median over `repeats` blocks of the wall time of one call(*args), each block timing `calls` calls
    (after `warmup` untimed calls)."""
    for _ in range(warmup):
        call(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            call(*args)
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


@torch.inference_mode()
def latency(run_dir: Path, fitted: dict, images: torch.Tensor) -> dict:
    """Forward time (features and logits) at batch 1 and 32, at fp32 and at the auto precision (the median
    of 7 calls after 2 warm-up calls), and each score's extra time on top as a share of it (the median of 5
    blocks of SCORE_CALLS calls)."""
    result = {}
    for precision in (PRECISION, "auto"):
        predictor = Predictor(run_dir / "best", device="cpu", precision=precision, open_set="off")
        for size in (1, 32):
            batch = images[:size].contiguous()
            forward = median_seconds(predictor.features_and_logits, batch, repeats=7)
            result[(precision, size, "forward")] = forward
            features, logits = predictor.features_and_logits(batch)
            for name, scorer in fitted.items():
                extra = median_seconds(scorer, features, logits, repeats=5, calls=SCORE_CALLS)
                result[(precision, size, name)] = extra / forward
        result[(precision, "name")] = predictor.precision
    return result


def measure(run_dir: Path, sets: dict) -> dict:
    predictor = Predictor(run_dir / "best", device="cpu", precision=PRECISION, open_set="off")
    embedded = {kind: embed(predictor, sets[kind]) for kind in ("train", "known", "near", "far")}
    index = {name: i for i, name in enumerate(predictor.classes)}
    labels = torch.tensor([index[label] for _, label in sets["train"]])
    classes, temperature = len(predictor.classes), float(predictor.temperature)
    fitted = scorers(embedded["train"][0], labels, classes, temperature)
    fitted.update(sparse_scorers(embedded["train"][0], labels, sets, classes, temperature))
    accuracy = float((embedded["known"][1].argmax(dim=1) == known_labels(sets, index)).double().mean())
    images = torch.stack([predictor.load(path) for path, _ in sets["known"][:32]])
    return {
        "quality": {name: quality(scorer, embedded) for name, scorer in fitted.items()},
        "latency": latency(run_dir, fitted, images),
        "val_top1": accuracy,
        "temperature": temperature,
        "counts": {kind: len(features) for kind, (features, _) in embedded.items()},
    }


def sparse_scorers(features, labels, sets: dict, classes: int, temperature: float) -> dict:
    """knn (k=1, 5 and the shipped k) and mahalanobis fitted on every other training view only (angles 10, 30,
    50, ...): each val view is then 10 degrees from its nearest fitted views instead of 5, as known images
    seen from a new angle are in practice."""
    sparse = torch.tensor([angle % 20 == 10 for angle in sets["train_angles"]])
    features, labels = features[sparse], labels[sparse]
    fitted = {
        "mahalanobis, sparse views": openset.fit_scorer("mahalanobis", features, labels, classes, temperature)
    }
    knn_tensors = openset.fit_scorer("knn", features, labels, classes, temperature).tensors()
    for k in sorted({1, 5, openset.KNN_K}):
        fitted[f"knn k={k}, sparse views"] = openset.OpenSetScorer("knn", knn_tensors, temperature, k=k)
    return fitted


def known_labels(sets: dict, index: dict) -> torch.Tensor:
    return torch.tensor([index[label] for _, label in sets["known"]])


def print_table(title: str, rows: dict, baseline: dict | None = None, cost: dict | None = None) -> None:
    print(f"\n{title}")
    head = "| score | near AUROC | near FPR@95 | far AUROC | far FPR@95 |"
    rule = "| --- | --- | --- | --- | --- |"
    if baseline:
        head += " near FPR@95 / msp | far FPR@95 / msp |"
        rule += " --- | --- |"
    if cost:
        head += " extra latency b1 | extra latency b32 |"
        rule += " --- | --- |"
    print(head)
    print(rule)
    for name, row in rows.items():
        line = f"| {name} | {row['near_auroc']:.3f} | {row['near_fpr95']:.1%} | {row['far_auroc']:.3f} | "
        line += f"{row['far_fpr95']:.1%} |"
        if baseline:
            for kind in ("near", "far"):
                line += f" {row[f'{kind}_fpr95'] / max(baseline[f'{kind}_fpr95'], 1e-9):.2f} |"
        if cost:
            line += f" {cost[name][0]:.2%} | {cost[name][1]:.2%} |"
        print(line)


def mean_rows(results: list[dict]) -> dict:
    names = results[0]["quality"]
    return {
        name: {
            key: statistics.mean(r["quality"][name][key] for r in results)
            for key in results[0]["quality"][name]
        }
        for name in names
    }


def mean_cost(results: list[dict], precision: str) -> dict:
    """Per score: the mean over seeds of the extra latency at batch 1 and 32, against the forward at
    `precision`."""
    return {
        name: tuple(
            statistics.mean(r["latency"][(precision, size, name)] for r in results) for size in (1, 32)
        )
        for name in results[0]["quality"]
    }


def report(results: list[dict], seeds: list[int]) -> None:
    for seed, result in zip(seeds, results, strict=True):
        counts = ", ".join(f"{kind} {count}" for kind, count in result["counts"].items())
        print(
            f"\nseed {seed}: val top-1 {result['val_top1']:.2%}, temperature {result['temperature']:.3f}; "
            f"images: {counts}"
        )
        for precision in (PRECISION, "auto"):
            name = result["latency"][(precision, "name")]
            forward = [result["latency"][(precision, size, "forward")] * 1000 for size in (1, 32)]
            print(f"  forward ({name}): batch 1 {forward[0]:.1f} ms, batch 32 {forward[1]:.1f} ms")
        print_table(f"seed {seed}", result["quality"], baseline=result["quality"]["msp"])
    rows = mean_rows(results)
    shipped = {name: row for name, row in rows.items() if name in openset.SCORES}
    variants = {name: row for name, row in rows.items() if name not in openset.SCORES}
    over = f"mean over seeds {', '.join(map(str, seeds))}"
    for precision in (PRECISION, "auto"):
        name = results[0]["latency"][(precision, "name")]
        title = f"{over}; extra latency against the {name} forward (features + logits)"
        print_table(title, shipped, baseline=rows["msp"], cost=mean_cost(results, precision))
    title = f"{over}: variants (shipped: knn k={openset.KNN_K}, mahalanobis shrinkage={openset.SHRINKAGE})"
    print_table(title, variants, baseline=rows["msp"])


def header() -> None:
    env = subprocess.run(
        [sys.executable, "-m", "resnetcls", "env"], capture_output=True, text=True, check=True
    ).stdout
    cpu = next(line for line in env.splitlines() if line.startswith("CPU:"))
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"{cpu}; {machine_line()}; load average {load}")
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default="open-set-runs", help="the run folders go here")
    parser.add_argument("--shared", default="../shared/data", help="the shared data folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--time", default="4m", help="each run's train --time budget ('': none)")
    parser.add_argument("--train-args", default="", help="more train arguments, e.g. '--image-size 64'")
    parser.add_argument("--train-only", action="store_true", help="train the runs, measure nothing")
    args = parser.parse_args()
    work, shared = Path(args.work).resolve(), Path(args.shared).resolve()
    extra = (["--time", args.time] if args.time else []) + shlex.split(args.train_args)
    runs = train_runs(write_known_csv(shared, work), work, args.seeds, extra)
    if args.train_only:
        return
    header()
    sets = image_sets(shared, read_pose_split(shared))
    report([measure(run_dir, sets) for run_dir in runs], args.seeds)


if __name__ == "__main__":
    main()
