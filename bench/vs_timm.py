"""Whole-run wall time, resnetcls train vs timm's train.py at equal settings, on the same ImageFolder split.

    python bench/vs_timm.py --quick          # 10 objects, 1 epoch (a few minutes on 2 cores)
    python bench/vs_timm.py --objects 50 --epochs 10

Settings shared by both: ResNet-50 from scratch, --image-size px (48), batch 64, AdamW (lr 1e-3, weight decay
0.05), bf16 autocast, channels_last, 2 DataLoader workers, the same epochs, no warm-up; data: coil100-a's
viewpoint split (pose-split.csv) for the first --objects objects, laid out as an ImageFolder
(train/, validation/; symbolic links, nothing copied). Both evaluate on the validation split every epoch.

timm is never a dependency of resnetcls: it runs from its own virtual environment (--timm-python or the
environment variable RESNETCLS_TIMM_PYTHON, e.g. path/to/timm-venv/bin/python) and its train.py (not in the
wheel; copied from huggingface/pytorch-image-models: --timm-train or RESNETCLS_TIMM_TRAIN, by default
train.py in the venv's folder, e.g. path/to/timm-venv/train.py). When either is missing the timm row says so
and is skipped.

    python3 -m venv path/to/timm-venv
    path/to/timm-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm
    RESNETCLS_TIMM_PYTHON=path/to/timm-venv/bin/python python bench/vs_timm.py --quick

Printed: each tool's wall time (process start to exit) and final validation top-1, resnetcls's phases (from
the epoch records' timestamps in metrics.jsonl: start to the first epoch's end, the later epochs, after the
last epoch: calibration, report, model saves), and the ratio timm / resnetcls.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "coil100-a"


def image_folder(dest: Path, objects: int) -> Path:
    """dest/{train,validation}/objNNN/*.png as links to coil100-a's files, per pose-split.csv."""
    with open(DATA / "pose-split.csv", newline="") as f:
        for row in csv.DictReader(f):
            if int(row["label"].removeprefix("obj")) > objects:
                continue
            split = "train" if row["split"] == "train" else "validation"
            link = dest / split / row["label"] / Path(row["path"]).name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(DATA / row["path"])
    return dest


def timed(cmd: list[str], log: Path, env: dict | None = None) -> float:
    """Wall seconds of one command; its output goes to log (a failure prints the log's end and exits 1)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if code != 0:
        print(f"failed ({code}): {' '.join(cmd)}\n{log.read_text()[-3000:]}", file=sys.stderr)
        sys.exit(1)
    return seconds


def run_resnetcls(folder: Path, out: Path, args) -> tuple[float, list[float], float]:
    """(wall s, [s to the first epoch's end, s of the later epochs, s after the last epoch], final val top-1)
    of `resnetcls train`; the phases come from the epoch records' timestamps in metrics.jsonl."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "RESNETCLS_CACHE": str(out.parent / "cache")}
    cmd = [
        sys.executable,
        "-m",
        "resnetcls",
        "train",
        str(folder / "train"),
        "--model",
        "resnet50",
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        "--out",
        str(out),
        "--set",
        f"data.val={folder / 'validation'}",
        "--set",
        "data.num_workers=2",
        "--set",
        "train.precision=bf16",
        "--set",
        "train.channels_last=true",
        "--set",
        "optim.name=adamw",
        "--set",
        "optim.lr=0.001",
        "--set",
        "optim.weight_decay=0.05",
    ]
    started = time.time()
    wall = timed(cmd, out.parent / "resnetcls.log", env)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    ends = [r["time"] for r in records if r.get("kind") == "epoch"]
    phases = [ends[0] - started, ends[-1] - ends[0], started + wall - ends[-1]]
    summary = next((r for r in records if r.get("kind") == "summary"), {})
    return wall, phases, float(summary.get("final_val_top1", float("nan")))


def run_timm(folder: Path, out: Path, args) -> tuple[float, float] | str:
    """(wall s, final eval top-1) of timm's train.py, or why it was skipped."""
    if not args.timm_python:
        return (
            "skipped: no timm interpreter given: pass --timm-python path/to/timm-venv/bin/python or set "
            "RESNETCLS_TIMM_PYTHON (see this file's docstring)"
        )
    python = Path(args.timm_python)
    train = Path(args.timm_train) if args.timm_train else python.parent.parent / "train.py"
    if not python.exists():
        return f"skipped: {python} (--timm-python / RESNETCLS_TIMM_PYTHON) is missing"
    if not train.exists():
        return f"skipped: {train} (--timm-train / RESNETCLS_TIMM_TRAIN) is missing"
    cmd = [
        str(python),
        str(train),
        "--data-dir",
        str(folder),
        "--train-split",
        "train",
        "--val-split",
        "validation",
        "--model",
        "resnet50",
        "--num-classes",
        str(args.objects),
        "--img-size",
        str(args.image_size),
        "-b",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        "--opt",
        "adamw",
        "--lr",
        "0.001",
        "--weight-decay",
        "0.05",
        "--warmup-epochs",
        "0",
        "--amp",
        "--amp-dtype",
        "bfloat16",
        "--channels-last",
        "-j",
        "2",
        "--device",
        "cpu",
        "--no-prefetcher",
        "--output",
        str(out),
        "--log-interval",
        "1000",
        "--checkpoint-hist",
        "1",
    ]
    wall = timed(cmd, out.parent / "timm.log")
    summaries = sorted(out.rglob("summary.csv"))
    top1 = float("nan")
    if summaries:
        rows = list(csv.DictReader(open(summaries[-1])))
        top1 = float(rows[-1].get("eval_top1", "nan")) / 100 if rows else top1
    return wall, top1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--objects", type=int, default=50, help="coil100-a objects (classes) to use (default 50)"
    )
    parser.add_argument("--epochs", type=int, default=10, help="epochs for both (default 10)")
    parser.add_argument("--image-size", type=int, default=48, help="training size in px (default 48)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--quick", action="store_true", help="10 objects, 1 epoch")
    parser.add_argument(
        "--timm-python",
        default=os.environ.get("RESNETCLS_TIMM_PYTHON") or None,
        help="interpreter of timm's own venv, e.g. path/to/timm-venv/bin/python "
        "(default: $RESNETCLS_TIMM_PYTHON)",
    )
    parser.add_argument(
        "--timm-train",
        default=os.environ.get("RESNETCLS_TIMM_TRAIN") or None,
        help="timm's train.py (default: $RESNETCLS_TIMM_TRAIN, else train.py in the venv's folder)",
    )
    args = parser.parse_args()
    if args.quick:
        args.objects, args.epochs = 10, 1
    if not (DATA / "pose-split.csv").exists():
        print(f"bench/vs_timm.py needs {DATA}; it is missing", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "src"))
    from resnetcls.records.envinfo import machine_line

    print(f"machine: {machine_line()}")
    print(
        f"ResNet-50 {args.image_size}px batch {args.batch_size}, AdamW, bf16, channels_last, 2 workers, "
        f"{args.epochs} epoch(s), coil100-a objects 1-{args.objects} (viewpoint split)",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = image_folder(Path(tmp) / "data", args.objects)
        ours, phases, our_top1 = run_resnetcls(folder, Path(tmp) / "resnetcls-run", args)
        print(
            f"resnetcls train   wall {ours:7.1f} s   val top-1 {our_top1:.3f}   (start to epoch 1's end "
            f"{phases[0]:.1f} s, later epochs {phases[1]:.1f} s, after the last epoch {phases[2]:.1f} s)",
            flush=True,
        )
        theirs = run_timm(folder, Path(tmp) / "timm-run", args)
        if isinstance(theirs, str):
            print(f"timm train.py     {theirs}")
            return 0
        print(f"timm train.py     wall {theirs[0]:7.1f} s   val top-1 {theirs[1]:.3f}")
        print(f"timm wall / resnetcls wall: {theirs[0] / ours:.2f}x (target >= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
