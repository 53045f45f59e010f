"""Accuracy of each data.resize mode (crop, letterbox, squash) at a small input, from scratch, fixed epochs.

    python bench/resize_modes.py --work /tmp/resize-bench --seeds 0 1
    python bench/resize_modes.py --work /tmp/resize-bench --only coil   # one data set (run two at once)

Two data sets:
- hymenoptera (ants vs bees, real JPEGs of every size and aspect ratio; its train/ and val/ folders);
- wide COIL: the first --objects objects of the COIL-100 pose split (train poses / val poses as in its
  pose-split.csv), each 128x128 photo pasted at a random horizontal place (fixed seed) on a black 256x128
  canvas, so an object often sits near the left or right edge of a 2:1 frame, where crop mode's centre square
  cuts it off (at most half of it: the centre square is 128 wide). Built once under WORK/coil-wide.
- wide COIL, half-height objects: the same with the first --half-objects objects, each photo resized to 64x64
  and pasted at a random place (x and y) on the 256x128 canvas: an object near an edge can fall wholly
  outside crop mode's centre square. Built once under WORK/coil-wide-half.

Every run: resnet18 (model.width --width, 16 by default so that a shared 2-core CPU finishes in under an
hour), --image-size 64, --epochs fixed per data set, batch 32, the auto recipe, calibration, the open-set
score and the leak check off (the pose split's neighbouring views are near-duplicates by design), each mode on
the same seeds, one torch thread per run (OMP_NUM_THREADS=1 unless set: on a shared, oversubscribed CPU two
threads spin-wait on each other and ran 20-40x slower). The figure is the last epoch's val top-1 (no
selection on val), the median over seeds per mode. Every figure is measured here; the header names the
machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from resnetcls.records.envinfo import machine_line

MODES = ("crop", "letterbox", "squash")
ROOT = Path(__file__).resolve().parents[1]
CANVAS = (256, 128)  # the wide COIL frame, 2:1


def build_wide_coil(pose_split: Path, objects: int, out: Path, side: int = 128, seed: int = 0) -> Path:
    """out/split.csv (path,label,split) over wide frames of the first `objects` objects, each photo resized
    to side x side and pasted at a random place (fixed seed) on the black canvas."""
    target = out / "split.csv"
    if target.is_file():
        return target
    rng = random.Random(seed)
    with open(pose_split, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda row: row["path"])
    keep = sorted({row["label"] for row in rows})[:objects]
    written = []
    for row in rows:
        if row["label"] not in keep:
            continue
        photo = Image.open(pose_split.parent / row["path"]).convert("RGB").resize((side, side), Image.BICUBIC)
        canvas = Image.new("RGB", CANVAS)
        canvas.paste(photo, (rng.randint(0, CANVAS[0] - side), rng.randint(0, CANVAS[1] - side)))
        path = out / row["label"] / Path(row["path"]).name
        path.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(path)
        written.append((str(path), row["label"], row["split"]))
    with open(target, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows(written)
    return target


def train(data: str, run_dir: Path, mode: str, seed: int, epochs: int, width: int, size: int = 64) -> dict:
    """One run; its wall seconds and last epoch's val top-1 (from metrics.jsonl)."""
    if not (run_dir / "metrics.jsonl").is_file() or not _summary(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run starts again
        args = [
            *("train", data, "--out", str(run_dir), "--model", "resnet18", "--image-size", str(size)),
            *("--epochs", str(epochs), "--batch-size", "32", "--seed", str(seed)),
            *("--set", f"data.resize={mode}", "--set", "train.auto_recipe=false"),
            *("--set", f"model.width={width}", "--set", "log.tensorboard=false"),
            *(
                "--set",
                "eval.calibrate=false",
                "--set",
                "eval.open_set=off",
                "--set",
                "data.leak_check=false",
            ),
            *("--set", "data.num_workers=0"),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        result = subprocess.run(
            [sys.executable, "-m", "resnetcls", *args], capture_output=True, text=True, env=env
        )
        if result.returncode != 0:
            sys.exit(f"resnetcls {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    epochs_seen = [r for r in _records(run_dir) if r.get("kind") == "epoch"]
    return {"val_top1": epochs_seen[-1]["val/top1"], "seconds": _summary(run_dir)["seconds"]}


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def _summary(run_dir: Path) -> dict | None:
    summaries = [r for r in _records(run_dir) if r.get("kind") == "summary"]
    return summaries[-1] if summaries else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--hymenoptera", default=str(ROOT.parent / "shared/data/hymenoptera"))
    parser.add_argument("--coil", default=str(ROOT.parent / "shared/data/coil100-a/pose-split.csv"))
    parser.add_argument("--work", required=True, help="folder for the wide COIL set, runs and the cache")
    parser.add_argument("--objects", type=int, default=10, help="COIL objects, full height (the first N)")
    parser.add_argument("--half-objects", type=int, default=20, help="COIL objects, half height")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, nargs=2, default=[15, 10], metavar=("HYMENOPTERA", "COIL"))
    parser.add_argument("--width", type=int, default=16, help="model.width of the resnet18")
    parser.add_argument("--only", choices=("hymenoptera", "wide", "half"), help="run one data set only")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    work = Path(args.work)
    os.environ.setdefault("RESNETCLS_CACHE", str(work / "cache"))
    coil = Path(args.coil)
    sets = [  # (key: the run folders' prefix, what the table says, DATA, epochs)
        ("hymenoptera", "hymenoptera", args.hymenoptera, args.epochs[0]),
        ("wide", f"wide COIL, full-height objects ({args.objects})", coil, args.epochs[1]),
        ("half", f"wide COIL, half-height objects ({args.half_objects})", coil, args.epochs[1]),
    ]
    sets = [entry for entry in sets if args.only in (None, entry[0])]
    builders = {  # the wide COIL sets, built only when run
        "wide": lambda: build_wide_coil(coil, args.objects, work / "coil-wide"),
        "half": lambda: build_wide_coil(coil, args.half_objects, work / "coil-wide-half", CANVAS[1] // 2),
    }
    sets = [
        (key, name, str(builders[key]()) if key in builders else data, ep) for key, name, data, ep in sets
    ]
    print(f"machine: {machine_line()} (shared with other jobs: accuracy only, no timings compared)")
    print(
        f"date: {time.strftime('%Y-%m-%d')}; seeds {args.seeds}; resnet18 width {args.width}; "
        f"{args.image_size} px"
    )
    table = {}
    for key, name, data, epochs in sets:
        prefix = key if args.image_size == 64 else f"{key}{args.image_size}"
        for mode in args.modes:
            runs = [
                train(
                    data,
                    work / "runs" / f"{prefix}-{mode}-{seed}",
                    mode,
                    seed,
                    epochs,
                    args.width,
                    args.image_size,
                )
                for seed in args.seeds
            ]
            table[(name, mode)] = (epochs, [r["val_top1"] for r in runs])
            tops = ", ".join(f"{r['val_top1']:.1%} ({r['seconds']:.0f} s)" for r in runs)
            print(f"{name}  {mode:<9} {tops}", flush=True)
    print("\n| data | epochs | mode | val top-1 per seed | median |\n| --- | --- | --- | --- | --- |")
    for (name, mode), (epochs, tops) in table.items():
        per_seed = ", ".join(f"{t:.1%}" for t in tops)
        print(f"| {name} | {epochs} | {mode} | {per_seed} | {statistics.median(tops):.1%} |")


if __name__ == "__main__":
    main()
