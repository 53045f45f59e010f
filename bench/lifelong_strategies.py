"""Lifelong strategies, class-incremental: ACC, BWT, forgetting, train time, memory, model size, latency.

Model size and inference time stand beside ACC as in the OpenLORIS-Object challenge's score.

Each run is `resnetcls lifelong` in its own process (so its peak RSS is its own, read with os.wait4), on
the lifelong-coil100-classes recipe (COIL-100's 50 objects, 5 tasks of 10 classes) unless --config says
otherwise, in fp32 (train.precision=fp32: the same arithmetic on every CPU). Results go to
OUT/<run>/metrics.json; a finished run is not run again (delete OUT to remeasure), so an interrupted
bench continues where it was.

    python bench/lifelong_strategies.py --sweep              # EWC lambda and LwF alpha grids, seed 0
    python bench/lifelong_strategies.py --seeds 0,1,2        # the README table: every strategy, 3 seeds
    python bench/lifelong_strategies.py --quick              # 1 seed, 1 epoch: a smoke run

Memory columns: `extra MB` is what the strategy keeps besides the model (replay/DER++/NCM: the buffer's
pixels and DER++'s logits; EWC: Fisher + anchor, 2x the parameters; LwF: the teacher, 1x), `peak RSS MB` the
process's. `params` and `model MB` are the final model's (its weights), `ms/image b1` the median time of one
image alone (batch 1) on the machine the table names (metrics.json's inference_ms_batch1, device_name).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from resnetcls.config import load_yaml, resolve_config_file
from resnetcls.config.recipes import is_recipe_name

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ["naive", "joint", "replay", "derpp", "ncm", "ewc", "lwf"]
EWC_GRID = [1e3, 1e4, 1e5, 1e6]
LWF_GRID = [1.0, 3.0, 10.0]
DERPP_BETA_GRID = [0.5, 1.0]


def run_one(out: Path, name: str, config: str, strategy: str, seed: int, sets: list[str]) -> dict:
    """One lifelong run (skipped when OUT/name/metrics.json exists); metrics.json plus peak RSS and R."""
    run_dir = out / name
    done = run_dir / "metrics.json"
    if not done.exists():
        shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run starts again
        cmd = [
            sys.executable,
            "-m",
            "resnetcls",
            "lifelong",
            "--config",
            config,
            "--strategy",
            strategy,
            "--seed",
            str(seed),
            "--out",
            str(run_dir),
            "--set",
            "train.precision=fp32",
        ]
        for s in sets:
            cmd += ["--set", s]
        with open(out / f"{name}.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            raise SystemExit(f"{name}: resnetcls lifelong failed (exit {status >> 8}); see {out / name}.log")
        (run_dir / "peak_rss_kb").write_text(str(usage.ru_maxrss))
    metrics = json.loads(done.read_text())
    rss = run_dir / "peak_rss_kb"  # absent when the run finished without this bench waiting for it
    metrics["peak_rss_mb"] = int(rss.read_text()) / 1024 if rss.exists() else None
    metrics["R"] = json.loads((run_dir / "R.json").read_text())["R"]
    return metrics


def recipe(config: str) -> dict:
    """--config's YAML as the runs read it (they run in the repository root): a packaged name or a path."""
    return load_yaml(resolve_config_file(config if is_recipe_name(config) else ROOT / config))


def extra_mb(m: dict) -> float:
    factor = {"ewc": 2.0, "lwf": 1.0}.get(m["strategy"], 0.0)
    return m.get("buffer_mb", 0.0) + factor * m["model_mb"]


def summarise(runs: list[dict]) -> dict:
    """Medians over seeds (with min-max of ACC) of one strategy's runs."""

    def med(f):
        vals = [f(m) for m in runs]
        return statistics.median(vals) if vals and None not in vals else None

    return {
        "ACC": med(lambda m: m["ACC"]),
        "ACC_min": min(m["ACC"] for m in runs),
        "ACC_max": max(m["ACC"] for m in runs),
        "BWT": med(lambda m: m.get("BWT")),
        "forgetting": med(lambda m: statistics.mean(m["forgetting"]) if m.get("forgetting") else None),
        "s_per_task": med(lambda m: m["train_seconds"] / len(m["R"])),
        "extra_mb": med(extra_mb),
        "peak_rss_mb": med(lambda m: m["peak_rss_mb"]),
        "params": med(lambda m: m["model_params"]),
        "model_mb": med(lambda m: m["model_mb"]),
        "ms_batch1": med(lambda m: m.get("inference_ms_batch1")),
        "machine": runs[0].get("device_name"),
        "seeds": len(runs),
        "R_first_seed": runs[0]["R"],
    }


def fmt(v, spec=".3f") -> str:
    return "–" if v is None else format(v, spec)


def table(rows: dict[str, dict], naive_forgetting: float | None) -> str:
    lines = [
        "| strategy | seeds | ACC (median, min-max) | BWT | forgetting | vs naive's forgetting | "
        "train s/task | "
        "extra MB | peak RSS MB | params | model MB | ms/image b1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        margin = (
            (r["forgetting"] - naive_forgetting) if None not in (r["forgetting"], naive_forgetting) else None
        )
        lines.append(
            f"| {name} | {r['seeds']} | {fmt(r['ACC'])} ({fmt(r['ACC_min'])}-{fmt(r['ACC_max'])}) | "
            f"{fmt(r['BWT'], '+.3f')}"
            f" | {fmt(r['forgetting'])} | {fmt(margin, '+.3f')} | {fmt(r['s_per_task'], '.1f')} | "
            f"{fmt(r['extra_mb'], '.2f')} | {fmt(r['peak_rss_mb'], '.0f')} | "
            f"{fmt(r.get('params'), ',.0f')} | "
            f"{fmt(r.get('model_mb'), '.2f')} | {fmt(r.get('ms_batch1'), '.2f')} |"
        )
    machines = sorted({r["machine"] for r in rows.values() if r.get("machine")})
    return "\n".join(lines) + (f"\n\nms/image b1 measured on: {', '.join(machines)}" if machines else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--config",
        default="lifelong-coil100-classes",
        help="a packaged recipe's name or a YAML file (relative to the repository root)",
    )
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help="default: all seven")
    ap.add_argument(
        "--sweep", action="store_true", help="EWC lambda, LwF alpha, DER++ beta grids on the first seed"
    )
    ap.add_argument("--quick", action="store_true", help="one seed, one epoch")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--out", default="runs/bench-lifelong-strategies")
    ap.add_argument("--report", action="store_true", help="only tabulate the runs already finished in OUT")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")][: 1 if args.quick else None]
    sets = args.set + (["train.epochs=1"] if args.quick else [])
    if args.sweep:
        for key, grid, strategy in (
            ("lifelong.ewc_lambda", EWC_GRID, "ewc"),
            ("lifelong.lwf_alpha", LWF_GRID, "lwf"),
            ("lifelong.derpp_beta", DERPP_BETA_GRID, "derpp"),
        ):
            default = float(recipe(args.config)["lifelong"][key.split(".")[1]])

            def name(v, strategy=strategy, default=default):
                return f"{strategy}-s{seeds[0]}" if v == default else f"sweep-{strategy}-{v:g}-s{seeds[0]}"

            rows = {
                f"{strategy} {key.split('.')[1]}={v:g}" + (" (default)" if v == default else ""): summarise(
                    [
                        run_one(
                            out,
                            name(v),
                            args.config,
                            strategy,
                            seeds[0],
                            sets + ([] if v == default else [f"{key}={v}"]),
                        )
                    ]
                )
                for v in grid
                if not args.report or (out / name(v) / "metrics.json").exists()
            }
            naive = summarise([run_one(out, f"naive-s{seeds[0]}", args.config, "naive", seeds[0], sets)])
            print(table({"naive": naive, **rows}, naive["forgetting"]), flush=True)
        return
    done = lambda s, seed: not args.report or (out / f"{s}-s{seed}" / "metrics.json").exists()  # noqa: E731
    rows = {
        s: summarise(
            [run_one(out, f"{s}-s{seed}", args.config, s, seed, sets) for seed in seeds if done(s, seed)]
        )
        for s in args.strategies.split(",")
    }
    print(table(rows, rows.get("naive", {}).get("forgetting")))
    (out / "summary.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
