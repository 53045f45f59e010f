"""Multi-label training on real photographs: one sigmoid model against one-vs-rest binary models.

    OMP_NUM_THREADS=1 nice -n 19 python bench/multilabel.py --work runs/multilabel --seeds 0 1 --epochs 10

The data (built first, from --data-seed alone: the same seed writes the same files): 2x2 mosaics of COIL-100
objects 1-10 (--objects), each tile an object photo downscaled to half the mosaic (--size 64: 32 px tiles),
1 to 4 distinct objects a mosaic (the count uniform, the objects and their tiles at random), the empty tiles
black like COIL-100's own background. A mosaic is labelled with the objects in it (`obj003;obj007`, object
order). The views are split as the pose protocol says (pose-split.csv): training mosaics only from its train
poses, val mosaics from its val poses at multiples of 40 degrees and test mosaics from those at 20 + 40k
degrees, so no view is in two splits and the model must recognise objects from views it did not see.
WORK/data/mosaics.csv (path,label,split) lists --train / --val / --test mosaics.

Then, per training seed:
- multi-label: `resnetcls train mosaics.csv --model resnet18 --image-size SIZE --epochs E --seed S --set
  model.width=W` (--width, default 16; COMMON's keys too: no open-set fit, leak check or TensorBoard log; the
  auto recipe picks everything else), `resnetcls eval` of best/ on the test mosaics (metrics.json).
- one-vs-rest: for each object a binary manifest of the same images (label `yes` when the object is in the
  mosaic, else `no`) trained the same way with E / C epochs (C objects; the remainder goes to the first
  models), so that the C binary models together get the multi-label model's number of training epochs over
  the same images: the same model and the same training budget. Each model's `yes` probability (fp32,
  calibrated as predict gives it) of every val and test mosaic is one class's score; the thresholds are fitted
  on val by the multi-label rule (utils/multilabel.fit_thresholds) and the metrics computed on test
  (utils/multilabel.multilabel_metrics), as eval does for the multi-label model.
Prints each arm and seed (mAP, micro/macro F1, exact match, training wall time) and a Markdown table of the
medians over seeds; WORK/results-ARMS-seedsSEEDS.json keeps every figure. A run folder that already has
best/ is reused, so arms and seeds can run side by side (--arms ovr --seeds 1) and a last invocation with all
of them prints the table. The header names the machine (`resnetcls env`'s CPU line) and the date.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from PIL import Image

import resnetcls
from resnetcls.records.envinfo import machine_line
from resnetcls.utils.multilabel import fit_thresholds, multi_hot, multilabel_metrics

SEPARATOR = ";"
TILES = 4  # a 2x2 grid
SPLITS = ("train", "val", "test")
METRICS = ("map", "micro_f1", "macro_f1", "exact_match")
ARMS = {"multi": "multi-label (one sigmoid model)", "ovr": "one-vs-rest (binary models)"}
# The same for both arms: no open-set score, leak check or TensorBoard log (time neither arm's result needs).
COMMON = [
    *("--set", "log.tensorboard=false", "--set", "eval.open_set=off", "--set", "data.leak_check=false"),
]


def object_name(number: int) -> str:
    return f"obj{number:03d}"


def views_by_split(coil: Path, objects: int) -> dict[str, dict[str, list[Path]]]:
    """{split: {object: [image paths]}}: the pose protocol's train poses; its val poses halved into val
    (angles 0, 40, ...) and test (20, 60, ...)."""
    views: dict[str, dict[str, list[Path]]] = {split: {} for split in SPLITS}
    with open(coil / "pose-split.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if int(row["label"].removeprefix("obj")) > objects:
                continue
            split = row["split"]
            if split == "val" and int(row["angle"]) % 40 == 20:
                split = "test"
            views[split].setdefault(row["label"], []).append(coil / row["path"])
    return views


def mosaic(paths: list[Path | None], size: int, tiles: dict[Path, Image.Image]) -> Image.Image:
    """A size x size RGB mosaic of 4 tiles in reading order, black where the path is None."""
    half = size // 2
    canvas = Image.new("RGB", (size, size))
    for index, path in enumerate(paths):
        if path is None:
            continue
        if path not in tiles:
            with Image.open(path) as image:
                tiles[path] = image.convert("RGB").resize((half, half), Image.Resampling.LANCZOS)
        canvas.paste(tiles[path], ((index % 2) * half, (index // 2) * half))
    return canvas


def draw_mosaic(rng: random.Random, views: dict[str, list[Path]]) -> tuple[list[Path | None], list[str]]:
    """One mosaic's tile paths (None = empty) and its sorted object names."""
    count = rng.randint(1, min(TILES, len(views)))
    chosen = sorted(rng.sample(sorted(views), count))
    places = rng.sample(range(TILES), count)
    paths: list[Path | None] = [None] * TILES
    for name, place in zip(chosen, places, strict=True):
        paths[place] = rng.choice(views[name])
    return paths, chosen


DATA_KEYS = ("objects", "size", "train", "val", "test", "data_seed")


def build_data(coil: Path, out: Path, args: argparse.Namespace) -> Path:
    """Write the mosaics and out/mosaics.csv (path,label,split; paths relative to the CSV). A folder built
    with the same arguments is kept (the files would be the same); other arguments need another --work."""
    manifest = out / "mosaics.csv"
    params = json.dumps({key: getattr(args, key) for key in DATA_KEYS})
    if (out / "params.json").is_file():
        if (out / "params.json").read_text() != params:
            sys.exit(
                f"{out} holds mosaics built with other arguments ({out / 'params.json'}): use another --work"
            )
        if manifest.is_file():
            return manifest
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.json").write_text(params)
    views = views_by_split(coil, args.objects)
    counts = {"train": args.train, "val": args.val, "test": args.test}
    tiles: dict[Path, Image.Image] = {}
    rows = []
    for split in SPLITS:
        rng = random.Random(f"{args.data_seed}-{split}")
        (out / split).mkdir(parents=True, exist_ok=True)
        for index in range(counts[split]):
            paths, names = draw_mosaic(rng, views[split])
            relative = f"{split}/{index:05d}.png"
            mosaic(paths, args.size, tiles).save(out / relative)
            rows.append([relative, SEPARATOR.join(names), split])
    partial = out / "mosaics.csv.partial"
    with open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    partial.replace(manifest)  # the manifest appears whole, once every mosaic is written
    return manifest


def read_manifest(manifest: Path) -> list[dict]:
    with open(manifest, newline="") as handle:
        return list(csv.DictReader(handle))


def binary_manifest(manifest: Path, name: str, out: Path) -> Path:
    """The same images labelled `yes` (object `name` in the mosaic) or `no` (absolute paths)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for row in read_manifest(manifest):
            present = name in row["label"].split(SEPARATOR)
            image = (manifest.parent / row["path"]).resolve()
            writer.writerow([str(image), "yes" if present else "no", row["split"]])
    return path


def resnetcls_cli(*args: str) -> float:
    """Run the CLI; its wall seconds. Exits with its message if it fails."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "resnetcls", *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"resnetcls {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    for line in result.stderr.splitlines():
        if line.startswith("auto recipe"):
            print(f"    {line}", flush=True)
    return time.perf_counter() - start


def loop_seconds(run_dir: Path) -> float:
    """The run's own training time (metrics.jsonl's summary: the epochs with their validation)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "summary"][-1]["seconds"]


def train(data: Path, run_dir: Path, epochs: int, seed: int, args: argparse.Namespace) -> tuple[float, float]:
    """`resnetcls train` (kept when run_dir/best exists, its recorded wall time reused): the command's wall
    seconds (start-up, data scan, training, calibration, the run's own eval and report) and the loop's."""
    timing = run_dir / "bench-wall.json"
    if (run_dir / "best").is_dir() and timing.is_file():
        return json.loads(timing.read_text())["wall_s"], loop_seconds(run_dir)
    flags = ["--model", args.model, "--image-size", str(args.size), "--epochs", str(epochs)]
    flags += ["--set", f"model.width={args.width}"]
    wall = resnetcls_cli(
        "train", str(data), *flags, "--seed", str(seed), "--out", str(run_dir), "--force", *COMMON
    )
    timing.write_text(json.dumps({"wall_s": wall}))
    return wall, loop_seconds(run_dir)


def multi_arm(manifest: Path, work: Path, seed: int, args: argparse.Namespace) -> dict:
    run_dir = work / f"multi-seed{seed}"
    wall, loop = train(manifest, run_dir, args.epochs, seed, args)
    out = run_dir / "eval"
    resnetcls_cli("eval", str(run_dir / "best"), str(manifest), "--out", str(out), "--precision", "fp32")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"wall_s": wall, "loop_s": loop, "epochs": args.epochs, **{key: metrics[key] for key in METRICS}}


def split_epochs(total: int, models: int) -> list[int]:
    """total epochs over `models` models: equal shares, the remainder to the first ones, at least 1 each."""
    share, extra = divmod(total, models)
    return [max(1, share + (1 if index < extra else 0)) for index in range(models)]


@torch.inference_mode()
def yes_scores(model_dir: Path, paths: list[Path]) -> torch.Tensor:
    """A binary model's `yes` probability (fp32) of every image."""
    predictor = resnetcls.load(model_dir, precision="fp32", device="cpu", open_set="off")
    column = predictor.classes.index("yes")
    images = [predictor.load(path) for path in paths]
    bad = [str(path) for path, image in zip(paths, images, strict=True) if not torch.is_tensor(image)]
    if bad:
        sys.exit(f"cannot read {bad[0]}")
    scores = [
        predictor.probabilities(torch.stack(images[i : i + 64]))[:, column] for i in range(0, len(images), 64)
    ]
    return torch.cat(scores)


def ovr_arm(manifest: Path, work: Path, seed: int, args: argparse.Namespace) -> dict:
    rows = read_manifest(manifest)
    names = sorted({name for row in rows for name in row["label"].split(SEPARATOR)})
    index = {name: i for i, name in enumerate(names)}
    scored = {split: [r for r in rows if r["split"] == split] for split in ("val", "test")}
    paths = {split: [manifest.parent / r["path"] for r in scored[split]] for split in scored}
    targets = {
        split: multi_hot([[index[n] for n in r["label"].split(SEPARATOR)] for r in scored[split]], len(names))
        for split in scored
    }
    probs = {split: torch.zeros(len(scored[split]), len(names)) for split in scored}
    wall = loop = 0.0
    epochs = split_epochs(args.epochs, len(names))
    for name, model_epochs in zip(names, epochs, strict=True):
        data = binary_manifest(manifest, name, work / "ovr-data")
        run_dir = work / f"ovr-seed{seed}" / name
        model_wall, model_loop = train(data, run_dir, model_epochs, seed, args)
        wall, loop = wall + model_wall, loop + model_loop
        for split in scored:
            probs[split][:, index[name]] = yes_scores(run_dir / "best", paths[split])
    thresholds = fit_thresholds(probs["val"], targets["val"])
    metrics = multilabel_metrics(probs["test"], targets["test"], thresholds)
    return {"wall_s": wall, "loop_s": loop, "epochs": sum(epochs), **{key: metrics[key] for key in METRICS}}


def row_text(arm: str, seed: int, row: dict) -> str:
    figures = "  ".join(f"{key} {row[key]:.3f}" for key in METRICS)
    times = f"wall {row['wall_s']:.0f} s (training loop {row['loop_s']:.0f} s)"
    return f"seed {seed}  {arm:<6} {figures}  epochs {row['epochs']}  {times}"


def table(results: dict[str, list[dict]]) -> str:
    lines = [
        "| arm | epochs | seeds | mAP | micro F1 | macro F1 | exact match | train wall (s) | loop (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm, rows in results.items():
        if not rows:
            continue
        medians = " | ".join(f"{statistics.median(r[key] for r in rows):.3f}" for key in METRICS)
        walls = ", ".join(f"{r['wall_s']:.0f}" for r in rows)
        loops = ", ".join(f"{r['loop_s']:.0f}" for r in rows)
        lines.append(f"| {ARMS[arm]} | {rows[0]['epochs']} | {len(rows)} | {medians} | {walls} | {loops} |")
    return "\n".join(lines)


def results_name(args: argparse.Namespace) -> str:
    """One file an invocation, so that seeds and arms run side by side do not write over each other."""
    return f"results-{'-'.join(args.arms)}-seeds{'-'.join(map(str, args.seeds))}.json"


def parse_args() -> argparse.Namespace:
    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coil", type=Path, default=root.parent / "shared" / "data" / "coil100-a")
    parser.add_argument("--work", type=Path, default=Path("runs/multilabel"))
    parser.add_argument("--objects", type=int, default=10, help="COIL-100 objects 1..N (default 10)")
    parser.add_argument("--size", type=int, default=64, help="mosaic side in px, even (default 64)")
    parser.add_argument("--train", type=int, default=400, help="training mosaics (default 400)")
    parser.add_argument("--val", type=int, default=100, help="val mosaics (default 100)")
    parser.add_argument("--test", type=int, default=200, help="test mosaics (default 200)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds")
    parser.add_argument("--epochs", type=int, default=10, help="the multi-label model's epochs (default 10)")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--width", type=int, default=16, help="model.width (default 16; 64 is torchvision's)")
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=sorted(ARMS))
    parser.add_argument("--data-only", action="store_true", help="build the mosaics and stop")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    print(f"# {machine_line()}\n# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", flush=True)
    manifest = build_data(args.coil, args.work / "data", args)
    print(f"data: {manifest} ({args.train}/{args.val}/{args.test} mosaics, {args.objects} objects)")
    if args.data_only:
        return
    results: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    arms = {"multi": multi_arm, "ovr": ovr_arm}
    for seed in args.seeds:
        for arm in args.arms:
            row = arms[arm](manifest, args.work, seed, args)
            results[arm].append({"seed": seed, **row})
            print(row_text(arm, seed, row), flush=True)
            (args.work / results_name(args)).write_text(json.dumps(results, indent=1))
    print("\n" + table(results))


if __name__ == "__main__":
    main()
