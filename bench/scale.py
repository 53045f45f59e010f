"""How each stage grows with the data: wall time and peak memory of `data check`, the cache build, the leak
check, one training epoch of a tiny model, `eval`, the report and `rank`, at several data sizes N and class
counts C, with the growth exponent of each stage's time (the log-log slope: 1.0 = linear) between each pair of
sizes and fitted over all of them, and an extrapolation to a larger N.

    python bench/scale.py                        # N = 10k, 30k, 100k images; C = 100 and 1000 classes
    python bench/scale.py --sizes 10000,30000    # chosen sizes
    python bench/scale.py --quick                # N = 2k, 6k; about five minutes on two cores
    python bench/scale.py --estimate 1280000     # also extrapolate every stage to 1.28M images (default)

Synthetic data (made here, not by `resnetcls data synth`, so making 100k images takes seconds): 32 px JPEGs,
each class a colour, each image its own random 8 x 8 low-frequency pattern (so images are not near-duplicates
of each other), 80/10/10 train/val/test in a CSV manifest. Decoding such images is cheap: what grows with N is
the per-image bookkeeping of each stage, which is what this bench is about (time per pixel is measured by
bench/data_throughput.py and bench/train_throughput.py).

Every stage runs in a child process of its own (this script with --stage), imports first and then starts its
clock, so the time is the stage's own (the "s" columns) and the peak RSS is the largest resident set of the
stage's process or any process it started (os.wait4's ru_maxrss, as /usr/bin/time reports it). Stages:
  data check   `resnetcls data check DATA --out check.json` (decode + hash every image, duplicates, near-dups)
  cache build  train's data pipeline on an empty cache folder: decode every train and val image into the store
  leak check   train's near-duplicate check between train and val (data.leak_check), on the built cache
  train epoch  `resnetcls train` for one epoch (ResNet-18, width 8, 32 px, batch 128; cache warm, leak check
               and report off: they are measured on their own), incl. validation, best/ final/ and calibration
  eval         `resnetcls eval RUN/best DATA` (the test split)
  report       `resnetcls report RUN`
  rank         `resnetcls rank RUN/best FOLDER --diverse` over every image of the data set

Each stage's CPU seconds (its process and every worker it waited for) are fitted too: on a machine other jobs
load, wall time moves with their load and CPU time much less, so the verdict judges the CPU exponent where it
was measured (the wall-time exponent otherwise).

Targets: time grows at most as N^1.1 (fitted exponent <= 1.1; the pairwise slopes show how steady it is); peak
RSS at 100k images and 1000 classes within 2.5 GB for every stage; RSS at 1000 classes close to RSS at 100
(nothing in proportion to C^2 beyond the C x C confusion matrix). The table prints a verdict per stage. The
estimate for --estimate images: time scaled from the largest size by the fitted exponent (at least 1), peak
RSS grown by the per-image increase between the smallest and the largest size. --repeats R runs each stage R
times at each size and keeps the median times (peak RSS: the largest).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("data check", "cache build", "leak check", "train epoch", "eval", "report", "rank")
IMAGE_PX, TRAIN_PX, BATCH = 32, 32, 128
TIME_SLOPE_MAX, RSS_MAX_MB = 1.1, 2500
TRAIN_SETTINGS = {"model.width": 8, "data.leak_check": False, "log.tensorboard": False}


# ---------------------------------------------------------------- synthetic data
def _write_images(job: tuple[str, int, int, int]) -> None:
    """Images start..stop of a data set with `classes` classes under root/images/c<k>/<i>.jpg."""
    import numpy as np
    from PIL import Image

    root, classes, start, stop = job
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        k = i % classes
        colour = np.array([(k * 97) % 256, (k * 57 + 80) % 256, (k * 31 + 160) % 256], dtype=np.float32)
        pattern = rng.integers(0, 256, (8, 8, 3)).astype(np.float32)
        small = Image.fromarray((0.5 * pattern + 0.5 * colour).astype(np.uint8))
        small.resize((IMAGE_PX, IMAGE_PX), Image.BICUBIC).save(
            f"{root}/images/c{k:04d}/{i:07d}.jpg", quality=90
        )


def make_data(root: Path, images: int, classes: int) -> Path:
    """The data set (images, manifest.csv with path,label,split); returns the manifest. Reused when
    present."""
    manifest = root / "manifest.csv"
    if manifest.is_file():
        return manifest
    for k in range(classes):
        (root / "images" / f"c{k:04d}").mkdir(parents=True, exist_ok=True)
    step = 2000
    with Pool(os.cpu_count()) as pool:
        pool.map(
            _write_images, [(str(root), classes, s, min(s + step, images)) for s in range(0, images, step)]
        )
    rows = ["path,label,split"]
    for i in range(images):
        k, turn = i % classes, (i // classes) % 10  # per class: 8 of 10 train, 1 val, 1 test
        rows.append(
            f"images/c{k:04d}/{i:07d}.jpg,c{k:04d},{'val' if turn == 8 else 'test' if turn == 9 else 'train'}"
        )
    (root / "manifest_tmp.csv").write_text("\n".join(rows) + "\n")
    (root / "manifest_tmp.csv").rename(manifest)
    return manifest


# ---------------------------------------------------------------- one stage, in a child process
def _settings(extra: dict) -> list[str]:
    merged = {**TRAIN_SETTINGS, **extra}
    return [f"{k}={'true' if v is True else 'false' if v is False else v}" for k, v in merged.items()]


def _pipeline(manifest: str, cache: str, leak_check: bool):
    """Train's data pipeline (engine.train.build_data) as `resnetcls train` builds it."""
    from resnetcls.config import build_config
    from resnetcls.engine.prepare import build_context
    from resnetcls.engine.train import build_data

    cfg = build_config(
        None,
        _settings({"data.cache_dir": cache, "data.leak_check": leak_check}),
        {
            "data.train": manifest,
            "model.name": "resnet18",
            "data.image_size": TRAIN_PX,
            "train.batch_size": BATCH,
            "train.device": "cpu",
        },
    )
    return build_data(cfg.data, cfg.train, build_context(cfg.train, "cpu"))


def cpu_seconds() -> float:
    """CPU time of this process and of every child it has waited for (pool and loader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_stage(stage: str, manifest: str, work: str) -> tuple[float, float]:
    """Run one stage in this process; (its seconds, its CPU seconds), imports excluded."""
    import torch  # noqa: F401  (imported before the clock starts, as every stage needs it)

    import resnetcls.analysis.evaluate  # noqa: F401
    import resnetcls.analysis.rank  # noqa: F401
    import resnetcls.analysis.report  # noqa: F401
    import resnetcls.api  # noqa: F401
    import resnetcls.data.check  # noqa: F401
    from resnetcls.cli import main
    from resnetcls.engine.distributed import world_from_env
    from resnetcls.engine.train import warn_near_duplicates

    work_dir, cache, run = Path(work), str(Path(work) / "cache"), str(Path(work) / "run")
    folder = str(Path(manifest).parent / "images")
    data = _pipeline(manifest, cache, False) if stage == "leak check" else None  # warm cache: not timed
    if stage == "cache build":
        shutil.rmtree(cache, ignore_errors=True)  # every run builds from nothing
    if stage == "train epoch":
        shutil.rmtree(run, ignore_errors=True)  # a new run each time
    gc.collect()
    start, cpu = time.perf_counter(), cpu_seconds()
    if stage == "data check":
        rc = main(["--quiet", "data", "check", manifest, "--out", str(work_dir / "check.json")])
    elif stage == "cache build":
        _pipeline(manifest, cache, False)
        rc = 0
    elif stage == "leak check":
        warn_near_duplicates(data.train_loader, data.val_loader, len(data.splits.val), world_from_env())
        rc = 0
    elif stage == "train epoch":
        rc = _train(manifest, run, cache)
    elif stage == "eval":
        rc = main(["--quiet", "eval", f"{run}/best", manifest, "--out", str(work_dir / "eval")])
    elif stage == "report":
        rc = main(["--quiet", "report", run])
    elif stage == "rank":
        rc = main(
            ["--quiet", "rank", f"{run}/best", folder, "--out", str(work_dir / "rank.csv"), "--diverse"]
        )
    else:
        raise SystemExit(f"unknown stage {stage!r}")
    if rc:
        raise SystemExit(f"{stage}: exit {rc}")
    seconds = time.perf_counter() - start
    del data  # the leak check's loaders: their workers are joined below
    gc.collect()  # loaders' workers are joined, so their CPU time counts
    return seconds, cpu_seconds() - cpu


def _train(manifest: str, run: str, cache: str) -> int:
    """`resnetcls train` with the report off (the report is its own stage): the Python API the CLI calls."""
    from resnetcls.api import train

    train(
        manifest,
        model="resnet18",
        epochs=1,
        image_size=TRAIN_PX,
        batch_size=BATCH,
        out=run,
        force=True,
        set={**TRAIN_SETTINGS, "data.cache_dir": cache},
        device="cpu",
        report=False,
    )
    return 0


def measure(stage: str, manifest: Path, work: Path, threads: int = 0) -> tuple[float, float, float]:
    """(stage seconds, peak RSS in MB of the stage's process tree, stage CPU seconds) from a child process;
    threads > 0: its torch threads (OMP_NUM_THREADS)."""
    timing = work / "stage.json"
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        **({"OMP_NUM_THREADS": str(threads)} if threads > 0 else {}),
    }
    with open(work / "stages.log", "a") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--stage",
                stage,
                "--manifest",
                str(manifest),
                "--work",
                str(work),
                "--timing",
                str(timing),
            ],
            stdout=log,
            stderr=log,
            env=env,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{stage} failed (exit {proc.returncode}); see {work / 'stages.log'}")
    timed = json.loads(timing.read_text())
    return timed["seconds"], usage.ru_maxrss / 1024, timed["cpu"]  # ru_maxrss: KiB on Linux


# ---------------------------------------------------------------- the table
def machine_line() -> str:
    """envinfo.machine_line() from a child: this process stays small (Linux carries a parent's peak RSS into
    ru_maxrss of every child it forks, so importing torch here would add its size to every stage's peak)."""
    code = "from resnetcls.records.envinfo import machine_line; print(machine_line())"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.strip()


def slope(t1: float, t2: float, n1: int, n2: int) -> float:
    return math.log(max(t2, 1e-6) / max(t1, 1e-6)) / math.log(n2 / n1)


def fitted_exponent(points: dict[int, float]) -> float:
    """The least-squares slope of log(seconds) on log(N) over every measured size: one exponent per stage,
    steadier than any one pair of sizes on a machine whose load changes between them."""
    xs, ys = [math.log(n) for n in points], [math.log(max(t, 1e-6)) for t in points.values()]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def format_table(results: dict, sizes: list[int], classes: list[int], estimate: int) -> str:
    """results[(stage, C, N)] = (seconds, rss_mb); a size not measured for a row shows "-" (its slopes and
    estimate come from the sizes that were)."""

    def k(n):
        return f"{n / 1000:g}k"

    head = ["stage", "C"] + [f"{k(n)} s" for n in sizes] + [f"{k(n)} MB" for n in sizes]
    head += [f"slope {k(a)}-{k(b)}" for a, b in zip(sizes, sizes[1:])]
    head += [
        "exponent",
        "CPU exponent",
        f"{estimate / 1e6:.2f}M s (est.)",
        f"{estimate / 1e6:.2f}M MB (est.)",
        "verdict",
    ]
    rows = [head]
    for stage in STAGES:
        for c in classes:
            got = {n: results[(stage, c, n)] for n in sizes if (stage, c, n) in results}
            if not got:
                continue
            have = sorted(got)
            slopes = {(a, b): slope(got[a][0], got[b][0], a, b) for a, b in zip(have, have[1:])}
            fit, top = fitted_exponent({n: got[n][0] for n in have}) if len(have) > 1 else 1.0, have[-1]
            cpu_fit = (
                fitted_exponent({n: got[n][2] for n in have})
                if len(have) > 1 and all(len(got[n]) > 2 for n in have)
                else None
            )
            est_s = got[top][0] * (estimate / top) ** max(fit, 1.0)  # never better than linear
            per_image = (got[top][1] - got[have[0]][1]) / (top - have[0]) if len(have) > 1 else 0.0
            est_mb = got[top][1] + max(per_image, 0.0) * (estimate - top)
            judged = ("CPU exponent", cpu_fit) if cpu_fit is not None else ("exponent", fit)
            bad = ([f"{judged[0]} {judged[1]:.2f}"] if judged[1] > TIME_SLOPE_MAX else []) + (
                [f"RSS {got[top][1]:.0f} MB"] if got[top][1] > RSS_MAX_MB else []
            )
            rows.append(
                [stage, str(c)]
                + [f"{got[n][0]:.1f}" if n in got else "-" for n in sizes]
                + [f"{got[n][1]:.0f}" if n in got else "-" for n in sizes]
                + [f"{slopes[(a, b)]:.2f}" if (a, b) in slopes else "-" for a, b in zip(sizes, sizes[1:])]
                + [
                    f"{fit:.2f}",
                    "-" if cpu_fit is None else f"{cpu_fit:.2f}",
                    f"{est_s:.0f}",
                    f"{est_mb:.0f}",
                    "ok" if not bad else "MISS: " + ", ".join(bad),
                ]
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def class_growth(results: dict, sizes: list[int], classes: list[int]) -> list[str]:
    """Per stage at the largest N measured at both: RSS at the most classes minus at the fewest (the C^2
    check)."""
    if len(classes) < 2:
        return []
    lo, hi = min(classes), max(classes)
    both = [n for n in sizes if any((s, lo, n) in results and (s, hi, n) in results for s in STAGES)]
    if not both:
        return []
    n = both[-1]
    out = [
        f"{stage} {results[(stage, hi, n)][1] - results[(stage, lo, n)][1]:+.0f} MB"
        for stage in STAGES
        if (stage, lo, n) in results and (stage, hi, n) in results
    ]
    return [f"peak RSS at {n} images, {hi} classes minus {lo} classes: " + "; ".join(out)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,30000,100000", help="image counts N, comma-separated")
    ap.add_argument("--classes", default="100,1000", help="class counts C, comma-separated")
    ap.add_argument("--quick", action="store_true", help="N = 2000,6000 (overrides --sizes)")
    ap.add_argument(
        "--repeats", type=int, default=1, help="runs of each stage per size; the median time is kept"
    )
    ap.add_argument("--stages", default=",".join(STAGES), help="stages to run, comma-separated")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads of each stage (0: torch's default, one per core); on a machine that other "
        "jobs load, 1 avoids threads spinning on busy cores",
    )
    ap.add_argument("--estimate", type=int, default=1_280_000, help="extrapolate to this many images")
    ap.add_argument(
        "--work",
        default="",
        help="folder for the data sets, runs and results.json (default: a temporary "
        "one); a later run with the same folder reuses its data sets and keeps the figures of stages "
        "it does not measure again, so sizes and stages can be measured in several runs",
    )
    ap.add_argument("--table-only", action="store_true", help="print the table from --work's results.json")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--manifest", help=argparse.SUPPRESS)
    ap.add_argument("--timing", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:  # the child: one stage
        seconds, cpu = run_stage(args.stage, args.manifest, args.work)
        Path(args.timing).write_text(json.dumps({"seconds": seconds, "cpu": cpu}))
        return
    sizes = [2000, 6000] if args.quick else sorted(int(s) for s in args.sizes.split(","))
    classes = sorted(int(c) for c in args.classes.split(","))
    stages = [s.strip() for s in args.stages.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="resnetcls-scale-"))
    print(
        f"machine: {machine_line()}\n{os.cpu_count()} CPUs; sizes {sizes}; classes {classes}; "
        f"{args.repeats} run(s) per stage; torch threads {args.threads or 'default'}; work folder {work}",
        flush=True,
    )
    saved = work / "results.json"  # with --work: earlier runs' figures are kept unless measured again
    results = (
        {tuple(json.loads(k)): tuple(v) for k, v in json.loads(saved.read_text()).items()}
        if args.work and saved.is_file()
        else {}
    )
    try:
        for c in classes if not args.table_only else []:
            for n in sizes:
                root = work / f"n{n}-c{c}"
                start = time.perf_counter()
                manifest = make_data(root / "data", n, c)
                print(f"N={n} C={c}: data ready in {time.perf_counter() - start:.1f} s", flush=True)
                for stage in [s for s in STAGES if s in stages]:
                    runs = [measure(stage, manifest, root, args.threads) for _ in range(args.repeats)]
                    results[(stage, c, n)] = (
                        statistics.median(r[0] for r in runs),
                        max(r[1] for r in runs),
                        statistics.median(r[2] for r in runs),
                    )
                    print(
                        f"  {stage:12s} {results[(stage, c, n)][0]:8.1f} s "
                        f"{results[(stage, c, n)][1]:8.0f} MB "
                        f"{results[(stage, c, n)][2]:8.1f} CPU s",
                        flush=True,
                    )
                    saved.write_text(json.dumps({json.dumps(k): v for k, v in results.items()}))
        print()
        print(format_table(results, sizes, classes, args.estimate))
        for line in class_growth(results, sizes, classes):
            print(line)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
