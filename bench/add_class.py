"""Adding a class from a few photos (`resnetcls add-class`): how well the new object is recognised on views
it was not taught from, what it costs the old classes, and how long an add takes.

The model: a run trained on COIL-100 objects 1-40 (the train poses of the pose split; its val poses are the
run's validation images), e.g.

    root=$(realpath ../shared/data/coil100-a)
    awk -F, -v OFS=, -v root="$root" 'NR == 1 {print $1, $2, $3; next}
        $2 <= "obj040" {print root "/" $1, $2, $3}' "$root/pose-split.csv" > coil40.csv
    resnetcls train coil40.csv --config default --model resnet18 --image-size 48 --epochs 8 --seed 0 \\
        --out runs/coil40
    python bench/add_class.py --run runs/coil40 --split ../shared/data/coil100-a/pose-split.csv

Objects 41-50 are then added one at a time, each to the trained model on its own, from 1, 5 and 20 photos
(spread evenly over the object's train poses, by angle); the figures are the mean over the 10 objects of the
top-1 accuracy on the new object's val poses (unseen views) and on the old objects' val poses after the add
(before: the trained model's), and the median seconds of an add (resnetcls.add_class: load, photo features,
imprint, tuning, writing the new model directory). Accuracy is top-1 over all classes with open-set rejection
off; "accepted" is the share of the new object's val views that the new model's open-set threshold (refitted
by add-class) accepts, and "other new objects accepted" the share of the 9 objects not yet taught (unknowns to
that model) it lets through.

A run whose model has no open-set record (trained before the feature statistics were stored) is given one
first, in a temporary copy, as training's end would: kNN statistics of the train poses, threshold at 95% of
the old val poses accepted. Prints a table; the header names the machine.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import resnetcls
from resnetcls.inference.predictor import Predictor
from resnetcls.records.envinfo import machine_line
from resnetcls.records.modelfile import load_model_dir, resolve_model_dir, write_open_set
from resnetcls.utils.openset import fit_scorer, score_quantiles, threshold_for

OLD = [f"obj{n:03d}" for n in range(1, 41)]
NEW = [f"obj{n:03d}" for n in range(41, 51)]


def read_split(path: Path) -> dict[tuple[str, str], list[str]]:
    """(object, split) -> its image paths ordered by angle."""
    groups: dict[tuple[str, str], list[tuple[float, str]]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            key = (row["label"], row["split"])
            groups.setdefault(key, []).append((float(row["angle"]), str(path.parent / row["path"])))
    return {key: [p for _, p in sorted(rows)] for key, rows in groups.items()}


def features_of(predictor: Predictor, paths: list[str]) -> torch.Tensor:
    out = []
    for start in range(0, len(paths), 64):
        batch = torch.stack([predictor.load(p) for p in paths[start : start + 64]])
        out.append(predictor.features_and_logits(batch)[0])
    return torch.cat(out)


def with_open_set(model_dir: Path, split: dict, work: Path) -> Path:
    """model_dir itself when it has an open-set record, else a copy given one (see the module docstring)."""
    if load_model_dir(model_dir).open_set is not None:
        return model_dir
    copy = work / "base"
    shutil.copytree(model_dir, copy)
    predictor = Predictor(copy, precision="fp32", backend="torch")
    train = [p for obj in OLD for p in split[(obj, "train")]]
    labels = torch.tensor([n for n, obj in enumerate(OLD) for _ in split[(obj, "train")]])
    scorer = fit_scorer("knn", features_of(predictor, train), labels, len(OLD), predictor.temperature)
    val = [p for obj in OLD for p in split[(obj, "val")]]
    val_features = features_of(predictor, val)
    quantiles = score_quantiles(scorer(val_features, predictor.model.fc(val_features)))
    record = {"threshold": threshold_for(quantiles, 0.95), "accept": 0.95, "quantiles": quantiles}
    write_open_set(copy, scorer, {**record, "fitted_on": "val", "images": len(val)})
    return copy


def evenly(paths: list[str], n: int) -> list[str]:
    return [paths[int((i + 0.5) * len(paths) / n)] for i in range(n)]


def top1(model_dir: Path, features: torch.Tensor, label: int | torch.Tensor) -> float:
    fc = load_model_dir(model_dir).model.fc
    with torch.no_grad():
        return float((fc(features).argmax(dim=1) == label).float().mean())


def accepted(model_dir: Path, features: torch.Tensor) -> float:
    loaded = load_model_dir(model_dir)
    with torch.no_grad():
        scores = loaded.scorer(features, loaded.model.fc(features))
    return float((scores >= loaded.open_set["threshold"]).float().mean())


def bench_shots(base: Path, split: dict, shots: int, data: dict, args) -> dict:
    """Each new object added to base from `shots` photos: the means and the median seconds."""
    new_acc, old_acc, accepts, others, seconds = [], [], [], [], []
    for obj in NEW:
        photos = evenly(split[(obj, "train")], shots)
        out = args.work / f"{obj}-{shots}"
        start = time.perf_counter()
        resnetcls.add_class(base, obj, photos, out, steps=args.steps, seed=args.seed, force=True)
        seconds.append(time.perf_counter() - start)
        new_features = data[obj]
        new_acc.append(top1(out, new_features, len(OLD)))
        accepts.append(accepted(out, new_features))
        others.append(accepted(out, torch.cat([data[o] for o in NEW if o != obj])))
        old_acc.append(top1(out, data["old"], data["old_labels"]))
        shutil.rmtree(out)
    return {
        "shots": shots,
        "new": statistics.mean(new_acc),
        "accepted": statistics.mean(accepts),
        "others": statistics.mean(others),
        "old": statistics.mean(old_acc),
        "seconds": statistics.median(seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="a run (or model) trained on objects 1-40")
    parser.add_argument("--split", type=Path, default=Path("../shared/data/coil100-a/pose-split.csv"))
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    split = read_split(args.split)
    with tempfile.TemporaryDirectory() as work:
        args.work = Path(work)
        base = with_open_set(resolve_model_dir(args.run), split, args.work)
        predictor = Predictor(base, precision="fp32", backend="torch")
        old_val = [p for obj in OLD for p in split[(obj, "val")]]
        data = {obj: features_of(predictor, split[(obj, "val")]) for obj in NEW}
        data["old"] = features_of(predictor, old_val)
        data["old_labels"] = torch.tensor([n for n, obj in enumerate(OLD) for _ in split[(obj, "val")]])
        before = top1(base, data["old"], data["old_labels"])
        rows = [bench_shots(base, split, shots, data, args) for shots in args.shots]
    print(f"# {machine_line()}")
    print(f"# model: {args.run} ({len(OLD)} objects), old val top-1 before adding: {before:.1%}")
    print(
        "| photos | new object: unseen views top-1 | accepted (open set) | other new objects accepted "
        "| old val top-1 | change | s/add |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['shots']} | {r['new']:.1%} | {r['accepted']:.1%} | {r['others']:.1%} | {r['old']:.1%} | "
            f"{(r['old'] - before) * 100:+.1f} pt | {r['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
