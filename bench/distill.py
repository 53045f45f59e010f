"""Knowledge distillation: a ResNet-18 student with `--teacher` (a ResNet-50) against the same student alone.

    python bench/distill.py flowers ../shared/data/flowers12 --seeds 0 1
    python bench/distill.py coil ../shared/data/coil100-a/pose-split.csv --objects 20 --seeds 0 1

First the teacher: a ResNet-50 trained on DATA with the small-data recipe for --teacher-epochs, or the
model directory given with --teacher. Then per seed two students with the same settings (the
small-data recipe, `--config small-data`, at --image-size px for --epochs epochs, ResNet-18): one alone, one
with `--teacher` (distill.alpha and distill.temperature at their defaults unless --set says otherwise).
Both arms train the same epochs; their wall times and training images/s are printed beside the accuracy,
and the cost of the teacher's pass is also timed directly: a training step of batch 64 with and without it,
called in turn (step_cost). Accuracy: best/ evaluated on DATA's test
split where it has one (`resnetcls eval`), else the best val top-1. Then the teacher's and the student's
size (parameters, MB of model.safetensors) and batch-1 latency (eager, the median of --latency-runs calls
on one image of the training size, in the precision `resnetcls predict` picks here).

coil: --objects N keeps the first N objects of the pose split (a CSV written under --work). Prints each run,
then a Markdown table: mean ± half range over the seeds. Every figure is measured here; the header names
the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from runcli import resnetcls, summary_of

from resnetcls.engine.distill import DistillHooks, TeacherInput
from resnetcls.records.envinfo import machine_line
from resnetcls.records.modelfile import load_model_dir, resolve_model_dir
from resnetcls.records.runsplit import split_rows
from resnetcls.utils.hardware import resolve_amp

COMMON = ["--set", "log.tensorboard=false"]


def accuracy(data: str, run_dir: Path) -> tuple[str, float]:
    """("test", top-1 of best/ on DATA's test split) where the run's split.csv has one, else ("val", best
    val top-1)."""
    if any(split == "test" for _, split in split_rows(run_dir / "split.csv")):
        resnetcls("eval", str(run_dir / "best"), data, "--out", str(run_dir / "eval"), "--precision", "fp32")
        return "test", json.loads((run_dir / "eval" / "metrics.json").read_text())["top1"]
    return "val", summary_of(run_dir)["best_val_top1"]


def train_student(data: str, run_dir: Path, args: list[str]) -> dict:
    """One student run: wall seconds, training images/s, the accuracy (test or val), its kind."""
    wall, _ = resnetcls("train", data, "--out", str(run_dir), *COMMON, *args)
    kind, top1 = accuracy(data, run_dir)
    speed = summary_of(run_dir)["train_images_per_s"]
    return {"wall_s": wall, "images_per_s": speed, "top1": top1, "on": kind}


def sizes_and_latencies(
    model_dirs: list[Path], image_size: int, runs: int
) -> list[tuple[str, int, float, float]]:
    """(architecture, parameters, MB of model.safetensors, batch-1 latency in ms) of each model: eager,
    channels_last, one thread, in the precision predict picks on this CPU (bf16 where native); the models
    are called in turn (5 untimed rounds, then `runs` timed ones) so a load that changes meanwhile slows
    them alike; the median."""
    torch.set_num_threads(1)
    models = [load_model_dir(path) for path in model_dirs]
    image = torch.randn(1, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    dtype = resolve_amp("auto", torch.device("cpu"))
    times = [[] for _ in models]
    autocast = torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None)
    with torch.inference_mode(), autocast:
        for i in range(runs + 5):
            for loaded, timed in zip(models, times, strict=True):
                start = time.perf_counter()
                loaded.model.to(memory_format=torch.channels_last)(image)
                if i >= 5:
                    timed.append(time.perf_counter() - start)
    return [
        (
            loaded.meta["arch"],
            sum(p.numel() for p in loaded.model.parameters()),
            (loaded.path / "model.safetensors").stat().st_size / 1e6,
            statistics.median(timed) * 1000,
        )
        for loaded, timed in zip(models, times, strict=True)
    ]


def step_cost(teacher_dir: Path, student_dir: Path, image_size: int, batch: int, rounds: int) -> float:
    """The time of a distilled training step over a plain one: the student's forward, loss and backward on a
    random batch, alone and with the teacher's forward (engine/distill.py's hooks), in bf16 autocast where
    native, one thread, called in turn (2 untimed rounds) so a changing load slows both alike; the ratio of
    the medians."""
    torch.set_num_threads(1)
    teacher, student = load_model_dir(teacher_dir), load_model_dir(student_dir)
    model = student.model.train().to(memory_format=torch.channels_last)
    view = TeacherInput(student.preprocess, teacher.preprocess)
    hooks = DistillHooks(teacher.model.to(memory_format=torch.channels_last), view, 0.5, 4.0)
    images = torch.randn(batch, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, len(student.classes), (batch,))
    dtype = resolve_amp("auto", torch.device("cpu"))
    times = {False: [], True: []}
    for i in range(rounds + 2):
        for distil in (False, True):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                logits = model(images)
                loss = torch.nn.functional.cross_entropy(logits.float(), labels)
                if distil:
                    loss = 0.5 * loss + hooks.extra_loss(images, logits)
            loss.backward()
            model.zero_grad(set_to_none=True)
            if i >= 2:
                times[distil].append(time.perf_counter() - start)
    return statistics.median(times[True]) / statistics.median(times[False])


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.2%} ± {(max(values) - min(values)) / 2:.2%}"


def coil_subset(csv_path: str, objects: int, work: Path) -> str:
    """A copy of the pose split with its first `objects` objects (paths made absolute)."""
    source = Path(csv_path).resolve()
    with open(source, newline="") as f:
        rows = list(csv.DictReader(f))
    names = sorted({row["label"] for row in rows})[:objects]
    subset = work / f"coil-{objects}.csv"
    with open(subset, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            if row["label"] in names:
                writer.writerow({**row, "path": str(source.parent / row["path"])})
    return str(subset)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", choices=["flowers", "coil"])
    parser.add_argument("data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=12, help="each student's epochs")
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--teacher", help="a trained teacher's model directory (default: train one)")
    parser.add_argument("--objects", type=int, default=20, help="coil: the first N objects")
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--train-args", default="", help="more train flags for every student run")
    parser.add_argument("--work", type=Path, default=None, help="where runs go (default: a temporary folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="resnetcls-distill-"))
    work.mkdir(parents=True, exist_ok=True)
    data = coil_subset(args.data, args.objects, work) if args.dataset == "coil" else args.data
    print(f"machine: {machine_line()}\nruns in {work}", flush=True)
    teacher = args.teacher or train_teacher(data, work, args.image_size, args.teacher_epochs)
    student_args = [
        *("--config", "small-data", "--no-auto-recipe", "--model", "resnet18"),
        *("--image-size", str(args.image_size), "--epochs", str(args.epochs)),
        *args.train_args.split(),
    ]
    arms = {"alone": [], "with --teacher": []}
    for seed in args.seeds:
        for name, extra in (("alone", []), ("with --teacher", ["--teacher", teacher])):
            run_dir = work / f"{'kd' if extra else 'alone'}-{seed}"
            row = train_student(data, run_dir, [*student_args, "--seed", str(seed), *extra])
            arms[name].append(row)
            print(
                f"seed {seed}  {name:<15} wall {row['wall_s']:5.0f} s  {row['images_per_s']:.0f} train "
                f"img/s  {row['on']} top-1 {row['top1']:.2%}",
                flush=True,
            )
    teacher_run = resolve_model_dir(teacher).parent
    if (teacher_run / "split.csv").is_file():
        kind, top1 = accuracy(data, teacher_run)
        print(f"\nteacher {kind} top-1: {top1:.2%}")
    print_tables(arms, args, teacher, work / f"kd-{args.seeds[0]}" / "best")


def train_teacher(data: str, work: Path, image_size: int, epochs: int) -> str:
    """A ResNet-50 teacher trained on DATA with the small-data recipe; its best/."""
    run = work / "teacher"
    wall, _ = resnetcls(
        "train", data, "--out", str(run), *COMMON, "--config", "small-data", "--no-auto-recipe",
        *("--model", "resnet50", "--image-size", str(image_size), "--epochs", str(epochs)),
    )  # fmt: skip
    print(f"teacher: ResNet-50 trained in {wall:.0f} s", flush=True)
    return str(run / "best")


def print_tables(arms: dict, args: argparse.Namespace, teacher: str, student: Path) -> None:
    """The students' table, the difference and its cost, the models' size and latency table."""
    on = arms["alone"][0]["on"]
    print(
        f"\n| ResNet-18 student, {args.epochs} epochs | seeds | wall time per run (s) | train img/s | "
        f"{on} top-1 (mean ± half range) |\n| --- | --- | --- | --- | --- |"
    )
    for name, rows in arms.items():
        seeds = ", ".join(map(str, args.seeds))
        walls = ", ".join(f"{r['wall_s']:.0f}" for r in rows)
        speed = ", ".join(f"{r['images_per_s']:.0f}" for r in rows)
        print(f"| {name} | {seeds} | {walls} | {speed} | {spread([r['top1'] for r in rows])} |")
    kd, alone = arms["with --teacher"], arms["alone"]
    gain = statistics.mean(r["top1"] for r in kd) - statistics.mean(r["top1"] for r in alone)
    cost = statistics.mean(r["wall_s"] for r in kd) / statistics.mean(r["wall_s"] for r in alone)
    print(f"\nwith --teacher - alone: {gain * 100:+.1f} points of {on} top-1, at {cost:.2f}x the wall time")
    print(
        "\n| model | parameters | model.safetensors (MB) | batch-1 latency (ms) |\n| --- | --- | --- | --- |"
    )
    ratio = step_cost(Path(teacher), student, args.image_size, 64, 10)
    print(
        f"\na distilled training step (batch 64) takes {ratio:.2f}x a plain one (interleaved, median of 10)"
    )
    measured = sizes_and_latencies([Path(teacher), student], args.image_size, args.latency_runs)
    for name, (arch, params, megabytes, latency) in zip(("teacher", "student"), measured, strict=True):
        print(f"| {name} {arch} | {params / 1e6:.1f} M | {megabytes:.1f} | {latency:.2f} |")


if __name__ == "__main__":
    main()
