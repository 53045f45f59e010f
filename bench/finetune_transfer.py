"""Does the auto recipe's fine-tuning branch pay? Weights made here stand in for ImageNet's.

    python bench/finetune_transfer.py ../shared/data/imagenette10 ../shared/data/flowers12 \
        --seeds 0 1 2 --work ft

1. Pretrain: `resnetcls train PRETRAIN --model resnet18 --image-size --pretrain-size --set model.width=64
   --time --pretrain-time` (the auto recipe fills in the rest), from scratch; kept in --work and reused by
   the next call with the same --work.
2. Its best weights are written into a private torch hub cache under the file name torchvision gives its
   ImageNet weights for that depth (resnetcls's ResNets use torchvision's tensor names), so the auto recipe
   finds them exactly as it would find `resnetcls weights download resnet18`'s file.
3. Per seed, `resnetcls train TARGET --time --time` twice with no recipe flags: with an empty cache (the auto
   recipe trains from scratch) and with the cache of step 2 (the auto recipe fine-tunes); each best model is
   evaluated on TARGET's test split (`resnetcls eval`). Both arms get the same wall-time budget.
Prints each run with its recipe line, then a table (mean ± half range over seeds). The header names the
machine. Run it on an idle machine: the budgets are wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch
from runcli import resnetcls, summary_of
from safetensors.torch import load_file

from resnetcls.models.weights import IMAGENET_WEIGHTS
from resnetcls.records.envinfo import machine_line

COMMON = ["--set", "log.tensorboard=false"]


def pretrain(data: str, budget: str, arch: str, size: int, work: Path) -> Path:
    """Train arch on data from scratch (kept in work/pretrain: a second call with the same --work reuses it);
    write its best weights as torchvision's file into a hub cache."""
    run_dir = work / "pretrain"
    if not (run_dir / "best" / "model.safetensors").is_file():
        args = ["train", data, "--out", str(run_dir), *COMMON, "--model", arch, "--image-size", str(size)]
        wall, _ = resnetcls(
            *args, "--set", "model.width=64", "--time", budget, "--seed", "0", env=hub_env(work / "empty")
        )
        print(f"pretrained {arch} on {data} at {size} px: {wall:.0f} s", flush=True)
    best = summary_of(run_dir)["best_val_top1"]
    print(f"stand-in weights: {run_dir}, best val top-1 {best:.2%}", flush=True)
    home = work / "made-here"
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    url = IMAGENET_WEIGHTS[arch][0]
    torch.save(load_file(str(run_dir / "best" / "model.safetensors")), checkpoints / url.rsplit("/", 1)[1])
    return home


def hub_env(torch_home: Path) -> dict:
    """This environment with TORCH_HOME=torch_home (where the run looks for ImageNet weights)."""
    return {**os.environ, "TORCH_HOME": str(torch_home)}


def train_and_test(data: str, run_dir: Path, budget: str, seed: int, torch_home: Path) -> dict:
    args = ["train", data, "--out", str(run_dir), *COMMON, "--time", budget, "--seed", str(seed)]
    wall, log = resnetcls(*args, env=hub_env(torch_home))
    eval_dir = run_dir / "eval"
    resnetcls(
        "eval",
        str(run_dir / "best"),
        data,
        "--out",
        str(eval_dir),
        "--precision",
        "fp32",
        env=hub_env(torch_home),
    )
    test = json.loads((eval_dir / "metrics.json").read_text())
    summary = summary_of(run_dir)
    notes = [
        line for line in log.splitlines() if line.startswith(("auto recipe", "time budget", "pretrained"))
    ]
    return {
        "wall_s": wall,
        "epochs": summary["epochs_run"],
        "val_top1": summary["best_val_top1"],
        "test_top1": test["top1"],
        "notes": notes,
    }


def spread(values: list[float]) -> str:
    half_range = (max(values) - min(values)) / 2
    return f"{statistics.mean(values):.2%} ± {half_range:.2%}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pretrain_data", help="the data set the stand-in weights are trained on")
    parser.add_argument("data", help="the target data set, with a test split")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arch", default="resnet18", choices=sorted(IMAGENET_WEIGHTS))
    parser.add_argument("--pretrain-time", default="16m", help="wall-time budget of the pretraining run")
    parser.add_argument("--pretrain-size", type=int, default=128, help="image size of the pretraining run")
    parser.add_argument("--time", default="3m", help="wall-time budget of each target run, both arms")
    parser.add_argument("--work", help="keep the run directories here (default: a temporary folder)")
    args = parser.parse_args()
    print(f"machine: {machine_line()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        (work / "empty").mkdir(parents=True, exist_ok=True)
        made_here = pretrain(args.pretrain_data, args.pretrain_time, args.arch, args.pretrain_size, work)
        rows: dict[str, list[dict]] = {"from scratch (empty cache)": [], "fine-tuned (weights in cache)": []}
        for seed in args.seeds:
            for (name, runs), home in zip(rows.items(), (work / "empty", made_here)):
                row = train_and_test(args.data, work / f"{name.split()[0]}-{seed}", args.time, seed, home)
                runs.append(row)
                print(
                    f"seed {seed}  {name:<30} wall {row['wall_s']:5.0f} s  epochs {row['epochs']:3d}  "
                    f"best val top-1 {row['val_top1']:.2%}  test top-1 {row['test_top1']:.2%}",
                    flush=True,
                )
                for note in row["notes"]:
                    print(f"    {note}", flush=True)
    print(
        f"\n| auto recipe, --time {args.time} | seeds | wall time per run (s) "
        "| test top-1 (mean ± half range) |"
    )
    print("| --- | --- | --- | --- |")
    for name, runs in rows.items():
        walls = ", ".join(f"{r['wall_s']:.0f}" for r in runs)
        print(f"| {name} | {len(runs)} | {walls} | {spread([r['test_top1'] for r in runs])} |")


if __name__ == "__main__":
    main()
