"""resnetcls lifelong vs Avalanche (avalanche-lib 0.6.0) on the same class-incremental stream.

Stream: the lifelong-coil100-classes recipe (COIL-100, 5 tasks of 10 objects, 32 px, resnet18 width 16 with
the small stem, 2 epochs per task, batch 32, AdamW lr 0.003; read from the config). Both sides train without
augmentation, at a constant rate, with plain cross-entropy (resnetcls: data.augment=resize,
sched.name=constant, loss.label_smoothing=0), so the only difference left is the library. Strategies: naive,
replay (500 images), ewc, lwf at the config's lambda/alpha. The Avalanche side is
bench/lifelong_avalanche_side.py, run by the interpreter of --avalanche-python or of the environment variable
RESNETCLS_AVALANCHE_PYTHON (its own venv; avalanche-lib is never a resnetcls dependency).

Reported per side: ACC and the final R row, wall seconds per task (resnetcls: each task's epochs and its
strategy's end-of-task work; Avalanche: strategy.train, which runs its after-experience plugins) with their
ratio, and the whole process's CPU seconds (read with os.wait4: loading, training and evaluation on both
sides), which a shared machine disturbs less. --precision auto gives resnetcls its own default precision (bf16
+ channels_last on a CPU with native bf16) against Avalanche's fp32, for the time a user of each gets; fp32
(the default) is equal settings.

    python bench/lifelong_vs_avalanche.py --avalanche-python path/to/avalanche-venv/bin/python \
        --strategies naive,replay,ewc,lwf --seeds 0
    python bench/lifelong_vs_avalanche.py --avalanche-python path/to/avalanche-venv/bin/python \
        --strategies naive,replay,ewc,lwf --seeds 0 --precision auto
    RESNETCLS_AVALANCHE_PYTHON=path/to/avalanche-venv/bin/python python bench/lifelong_vs_avalanche.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from resnetcls.config import load_yaml, resolve_config_file

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "lifelong-coil100-classes"
PLAIN = ["data.augment=resize", "sched.name=constant", "sched.warmup_epochs=0", "loss.label_smoothing=0"]


def timed(cmd: list[str], log: Path, env: dict | None = None) -> float:
    """Run cmd (output to log); its CPU seconds (user + system)."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{cmd[:4]} failed (exit {status >> 8}); see {log}")
    return usage.ru_utime + usage.ru_stime


def ours(out: Path, strategy: str, seed: int, precision: str = "fp32") -> dict:
    run_dir = out / f"resnetcls-{strategy}-s{seed}"
    cmd = [
        sys.executable,
        "-m",
        "resnetcls",
        "lifelong",
        "--config",
        CONFIG,
        "--strategy",
        strategy,
        "--seed",
        str(seed),
        "--out",
        str(run_dir),
    ] + [a for s in PLAIN + [f"train.precision={precision}"] for a in ("--set", s)]
    cpu = timed(cmd, out / f"resnetcls-{strategy}-s{seed}.log")
    m = json.loads((run_dir / "metrics.json").read_text())
    R = json.loads((run_dir / "R.json").read_text())["R"]
    return {"ACC": m["ACC"], "R": R, "s_per_task": m["train_seconds"] / len(R), "cpu_s": cpu}


def theirs(out: Path, strategy: str, seed: int, python: str) -> dict:
    cfg = load_yaml(resolve_config_file(CONFIG))
    lc = cfg["lifelong"]
    result = out / f"avalanche-{strategy}-s{seed}.json"
    cmd = [
        python,
        "bench/lifelong_avalanche_side.py",
        "--strategy",
        strategy,
        "--seed",
        str(seed),
        "--buffer-size",
        str(lc["buffer_size"]),
        "--ewc-lambda",
        str(lc["ewc_lambda"]),
        "--lwf-alpha",
        str(lc["lwf_alpha"]),
        "--width",
        str(cfg["model"]["width"]),
        "--epochs",
        str(cfg["train"]["epochs"]),
        "--batch-size",
        str(cfg["train"]["batch_size"]),
        "--size",
        str(cfg["data"]["image_size"]),
        "--lr",
        str(cfg["optim"]["lr"]),
        "--out",
        str(result),
    ]
    cpu = timed(cmd, out / f"avalanche-{strategy}-s{seed}.log", {**os.environ, "PYTHONPATH": ""})
    r = json.loads(result.read_text())
    R = r["R"]
    return {
        "ACC": sum(R[-1]) / len(R[-1]),
        "R": R,
        "s_per_task": statistics.mean(r["train_seconds_per_task"]),
        "cpu_s": cpu,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strategies", default="naive,replay,ewc,lwf")
    ap.add_argument("--seeds", default="0")
    ap.add_argument(
        "--avalanche-python",
        default=os.environ.get("RESNETCLS_AVALANCHE_PYTHON") or None,
        help="interpreter of the venv with avalanche-lib, e.g. path/to/avalanche-venv/bin/python "
        "(default: $RESNETCLS_AVALANCHE_PYTHON)",
    )
    ap.add_argument("--out", default="runs/bench-lifelong-vs-avalanche")
    ap.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "auto"],
        help="resnetcls's train.precision: fp32 as the Avalanche side (default), or auto, resnetcls's own "
        "default (bf16 + channels_last where the CPU has native bf16; Avalanche stays fp32)",
    )
    args = ap.parse_args()
    if not args.avalanche_python or not Path(args.avalanche_python).exists():
        given = f"{args.avalanche_python} is missing" if args.avalanche_python else "no interpreter given"
        ap.exit(
            2,
            f"bench/lifelong_vs_avalanche.py: Avalanche's venv: {given}; pass --avalanche-python "
            "path/to/avalanche-venv/bin/python or set RESNETCLS_AVALANCHE_PYTHON\n",
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        "| strategy | seed | ACC resnetcls / Avalanche | final R row resnetcls | final R row Avalanche | "
        "s/task resnetcls / Avalanche | Avalanche / resnetcls | process CPU s |\n"
        "|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    for strategy in args.strategies.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            a, b = (
                ours(out, strategy, seed, args.precision),
                theirs(out, strategy, seed, args.avalanche_python),
            )
            row = lambda r: " ".join(f"{v:.2f}" for v in r["R"][-1])  # noqa: E731
            print(
                f"| {strategy} | {seed} | {a['ACC']:.3f} / {b['ACC']:.3f} | {row(a)} | {row(b)} | "
                f"{a['s_per_task']:.2f} / {b['s_per_task']:.2f} | {b['s_per_task'] / a['s_per_task']:.2f}x | "
                f"{a['cpu_s']:.0f} / {b['cpu_s']:.0f} |",
                flush=True,
            )
            (out / f"{strategy}-s{seed}.json").write_text(json.dumps({"resnetcls": a, "avalanche": b}))


if __name__ == "__main__":
    main()
