"""Learning quality from scratch at equal wall time: a fixed recipe vs the auto recipe.

    python bench/small_data_recipe.py flowers ../shared/data/flowers12 --seeds 0 1
    python bench/small_data_recipe.py coil ../shared/data/coil100-a/pose-split.csv --seeds 0 1
    python bench/small_data_recipe.py progressive ../shared/data/flowers12 --seeds 0 --epochs 40
    python bench/small_data_recipe.py race ../shared/data/flowers12 --time 2m --seeds 0 1 --target 98

flowers: per seed, first a fixed recipe (ResNet-50, 224 px, random-resized-crop + flip, 10 epochs, batch 32,
with train.auto_recipe=false), timed from the command's start to its end; then the auto recipe (`resnetcls
train DATA` with no recipe flags) with
`--time` set to that wall time, so both get the same minutes. Both best models are evaluated on DATA's test
split (`resnetcls eval`). Prints each run, then the mean and spread (half the range) over seeds.
coil: the auto recipe on the COIL-100 pose split: best val top-1 and the wall time at which 98% was reached.
progressive: the small-data recipe (`--config small-data`, what the auto recipe picks for small data) at a
fixed --epochs with and without data.progressive=0.5: wall time, and the time each first reached the fixed
run's best val top-1 minus one point.
race: the raced auto recipe (`--time T --set train.race_share=0.2`) against each candidate its race
considered, run alone for the same --time (train.race_share=0 and the candidate's values as given keys: its
augmentation keys, data.sampler, and --image-size). The candidates come from the race's own rule
(engine/race.race_candidates) on the raced run's recipe record (the auto recipe's values, the keys given,
the data's facts): all of them, also when the measured speed left the race time for only the first two or
for none (its plan line, printed under the raced run, names those that raced). Prints best val top-1 (and
test top-1 of best/ when DATA has a test split) per arm and seed, each arm's mean, and raced - best fixed in
points; with --target P, the wall seconds from the command's start to the first epoch at val top-1 >= P%
(metrics.jsonl; the raced arm's are its winner's epochs, its race epochs included). --train-args adds train
flags to every arm (a quick check on a slow machine: --train-args "--set model.width=8").
Every figure is measured here; the header names the machine. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import tempfile
import time
from dataclasses import fields
from pathlib import Path

from runcli import resnetcls

from resnetcls.engine.race import race_candidates
from resnetcls.engine.recipe_choice import DataFacts
from resnetcls.records.envinfo import machine_line
from resnetcls.records.runsplit import split_rows

FIXED_RECIPE = [
    *("--model", "resnet50", "--image-size", "224", "--epochs", "10", "--batch-size", "32"),
    *("--set", "train.auto_recipe=false"),
]
COMMON = ["--set", "log.tensorboard=false"]
SMALL_DATA = "small-data"  # the packaged recipe
RACE_SHARE = 0.2  # the raced arm's train.race_share
RACED = "raced"


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


def train_and_test(data: str, run_dir: Path, args: list[str]) -> dict:
    """Train, then evaluate best/ on DATA's test split: wall time, epochs, val and test top-1."""
    started = time.time()
    wall, log = resnetcls("train", data, "--out", str(run_dir), *COMMON, *args)
    summary = records(run_dir, "summary")[-1]
    _, _ = resnetcls(
        "eval", str(run_dir / "best"), data, "--out", str(run_dir / "eval"), "--precision", "fp32"
    )
    test = json.loads((run_dir / "eval" / "metrics.json").read_text())
    recipe = [line for line in log.splitlines() if line.startswith(("auto recipe", "time budget"))]
    return {
        "wall_s": wall,
        "epochs": summary["epochs_run"],
        "val_top1": summary["best_val_top1"],
        "test_top1": test["top1"],
        "started": started,
        "notes": recipe,
    }


def spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    half_range = (max(values) - min(values)) / 2
    return f"{mean:.2%} ± {half_range:.2%}"


def flowers(data: str, seeds: list[int], work: Path) -> None:
    rows = {"fixed recipe": [], "auto recipe": []}
    for seed in seeds:
        old = train_and_test(data, work / f"fixed-{seed}", [*FIXED_RECIPE, "--seed", str(seed)])
        new = train_and_test(
            data, work / f"auto-{seed}", ["--time", f"{old['wall_s']:.0f}s", "--seed", str(seed)]
        )
        for name, row in (("fixed recipe", old), ("auto recipe", new)):
            rows[name].append(row)
            print(
                f"seed {seed}  {name:<17} wall {row['wall_s']:6.0f} s  epochs {row['epochs']:3d}  "
                "best val top-1 "
                f"{row['val_top1']:.2%}  test top-1 {row['test_top1']:.2%}",
                flush=True,
            )
            for note in row["notes"]:
                print(f"    {note}", flush=True)
    print(
        "\n| recipe | seeds | wall time per run (s) | test top-1 (mean ± half range) |\n"
        "| --- | --- | --- | --- |"
    )
    for name, runs in rows.items():
        walls = ", ".join(f"{r['wall_s']:.0f}" for r in runs)
        print(f"| {name} | {len(runs)} | {walls} | {spread([r['test_top1'] for r in runs])} |")
    gain = statistics.mean(r["test_top1"] for r in rows["auto recipe"]) - statistics.mean(
        r["test_top1"] for r in rows["fixed recipe"]
    )
    print(f"\nauto recipe - fixed recipe: {gain * 100:+.1f} points of test top-1")


def first_time_at(run_dir: Path, started: float, target: float) -> float | None:
    """Seconds from the command's start to the first epoch whose val top-1 reached target (None: never)."""
    hits = [r["time"] - started for r in records(run_dir, "epoch") if r["val/top1"] >= target]
    return hits[0] if hits else None


def coil(data: str, seeds: list[int], work: Path) -> None:
    for seed in seeds:
        run_dir = work / f"coil-{seed}"
        started = time.time()
        wall, log = resnetcls("train", data, "--out", str(run_dir), *COMMON, "--seed", str(seed))
        summary = records(run_dir, "summary")[-1]
        reached = first_time_at(run_dir, started, 0.98)
        print(
            f"seed {seed}  wall {wall:.0f} s  epochs {summary['epochs_run']}  best val top-1 "
            f"{summary['best_val_top1']:.2%}  98% reached "
            f"{'never' if reached is None else f'after {reached:.0f} s'}",
            flush=True,
        )
        for line in log.splitlines():
            if line.startswith("auto recipe"):
                print(f"    {line}")


def progressive(data: str, seeds: list[int], epochs: int, work: Path) -> None:
    for seed in seeds:
        runs = {}
        for name, extra in (("fixed size", []), ("progressive 0.5", ["--set", "data.progressive=0.5"])):
            run_dir = work / f"{name.split()[0]}-{seed}"
            started = time.time()
            wall, _ = resnetcls(
                "train",
                data,
                "--out",
                str(run_dir),
                *COMMON,
                "--seed",
                str(seed),
                "--config",
                SMALL_DATA,
                "--epochs",
                str(epochs),
                *extra,
            )
            runs[name] = (run_dir, started, wall, records(run_dir, "summary")[-1]["best_val_top1"])
        target = runs["fixed size"][3] - 0.01
        for name, (run_dir, started, wall, best) in runs.items():
            reached = first_time_at(run_dir, started, target)
            print(
                f"seed {seed}  {name:<16} wall {wall:5.0f} s  best val top-1 {best:.2%}  "
                f"reached {target:.2%} "
                f"{'never' if reached is None else f'after {reached:.0f} s'}",
                flush=True,
            )


def race_run(data: str, run_dir: Path, args: list[str], target: float | None) -> dict:
    """Train under --time; best val top-1, test top-1 of best/ when the run's split has a test split (None
    otherwise), epochs, wall seconds and the seconds at which val top-1 first reached target."""
    started = time.time()
    wall, log = resnetcls("train", data, "--out", str(run_dir), *COMMON, *args)
    summary = records(run_dir, "summary")[-1]
    test = None
    if any(split == "test" for _, split in split_rows(run_dir / "split.csv")):
        resnetcls("eval", str(run_dir / "best"), data, "--out", str(run_dir / "eval"), "--precision", "fp32")
        test = json.loads((run_dir / "eval" / "metrics.json").read_text())["top1"]
    reached = first_time_at(run_dir, started, target) if target is not None else None
    notes = [line for line in log.splitlines() if line.startswith(("auto recipe race", "race: "))]
    return {
        "wall_s": wall,
        "epochs": summary["epochs_run"],
        "val_top1": summary["best_val_top1"],
        "test_top1": test,
        "reached_s": reached,
        "notes": notes,
    }


def candidate_args(values: dict) -> list[str]:
    """A race candidate's values (race.json) as train flags: --image-size, and --set for the rest."""
    args = []
    for key, value in values.items():
        args += ["--image-size", str(value)] if key == "data.image_size" else ["--set", f"{key}={value}"]
    return args


def considered(run_dir: Path) -> list[tuple[str, dict]]:
    """(name, values) of each candidate the raced run's race considered: race_candidates on its recipe
    record."""
    record = records(run_dir, "recipe")[-1]
    facts = DataFacts(**{field.name: record[field.name] for field in fields(DataFacts)})
    given = record["given"]
    entries, _ = race_candidates({**record["values"], **given}, given, facts)
    return [(entry.name, entry.values) for entry in entries]


def race_arms(data: str, seed: int, budget: str, target: float | None, work: Path, extra: list[str]) -> dict:
    """One seed: the raced run, then each candidate its race considered alone; arm name -> race_run's row."""
    common = ["--time", budget, "--seed", str(seed), *extra]
    raced_dir = work / f"raced-{seed}"
    raced = race_run(data, raced_dir, [*common, "--set", f"train.race_share={RACE_SHARE}"], target)
    # no race.json: the measured speed left no room for a race (its line says so), the recipe's choice ran
    raced["raced"] = (raced_dir / "race.json").is_file()
    arms = {RACED: raced}
    for name, values in considered(raced_dir):
        fixed = ["--set", "train.race_share=0", *candidate_args(values)]
        run_dir = work / f"fixed-{name.replace(' ', '-')}-{seed}"
        arms[name] = race_run(data, run_dir, [*common, *fixed], target)
    return arms


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def print_race_row(seed: int, name: str, row: dict, target: float | None) -> None:
    reached = "" if target is None else "never" if row["reached_s"] is None else f"{row['reached_s']:.0f} s"
    print(
        f"seed {seed}  {name:<22} wall {row['wall_s']:5.0f} s  epochs {row['epochs']:3d}  best val top-1 "
        f"{row['val_top1']:.2%}  test top-1 {percent(row['test_top1'])}"
        + (f"  {target:.0%} reached {reached}" if target is not None else ""),
        flush=True,
    )
    for note in row["notes"]:
        print(f"    {note}", flush=True)


def mean_of(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs if run[key] is not None]
    return statistics.mean(values) if values and len(values) == len(runs) else None


def reached_cell(runs: list[dict], target: float | None) -> str:
    """The mean seconds to the target over the seeds that reached it, and how many never did."""
    if target is None:
        return "-"
    reached = [run["reached_s"] for run in runs if run["reached_s"] is not None]
    never = len(runs) - len(reached)
    mean = f"{statistics.mean(reached):.0f}" if reached else "never"
    return mean + (f" (never in {never} of {len(runs)})" if reached and never else "")


def print_race_table(rows: dict[str, list[dict]], target: float | None) -> None:
    """Per arm: seeds, mean val and test top-1, mean seconds to the target; then raced - best fixed."""
    print(
        "\n| arm | seeds | val top-1 (mean) | test top-1 (mean) | reached target (s, mean) |\n"
        "| --- | --- | --- | --- | --- |"
    )
    for name, runs in rows.items():
        print(
            f"| {name} | {len(runs)} | {percent(mean_of(runs, 'val_top1'))} | "
            f"{percent(mean_of(runs, 'test_top1'))} | {reached_cell(runs, target)} |"
        )
    for key, label in (("val_top1", "val"), ("test_top1", "test")):
        raced = mean_of(rows[RACED], key)
        fixed = {name: mean_of(runs, key) for name, runs in rows.items() if name != RACED}
        fixed = {name: value for name, value in fixed.items() if value is not None}
        if raced is None or not fixed:
            continue
        best = max(fixed, key=fixed.get)
        print(
            f"raced - best fixed ({best}): {(raced - fixed[best]) * 100:+.1f} points of {label} top-1",
            flush=True,
        )


def race(
    data: str, seeds: list[int], budget: str, target: float | None, work: Path, extra: list[str]
) -> None:
    rows: dict[str, list[dict]] = {}
    for seed in seeds:
        for name, row in race_arms(data, seed, budget, target, work, extra).items():
            rows.setdefault(name, []).append(row)
            print_race_row(seed, name, row, target)
    print_race_table(rows, target)
    raced = sum(run["raced"] for run in rows[RACED])
    print(f"the race ran in {raced} of {len(seeds)} seeds (the others: the auto recipe's choice alone)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["flowers", "coil", "progressive", "race"])
    parser.add_argument("data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=40, help="progressive: epochs of both runs")
    parser.add_argument("--time", default="2m", help="race: every arm's --time")
    parser.add_argument("--target", type=float, help="race: val top-1 in percent (98) to time each arm to")
    parser.add_argument("--train-args", default="", help="race: train flags added to every arm")
    parser.add_argument("--work", help="keep the run directories here (default: a temporary folder)")
    args = parser.parse_args()
    print(f"machine: {machine_line()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        if args.mode == "flowers":
            flowers(args.data, args.seeds, work)
        elif args.mode == "coil":
            coil(args.data, args.seeds, work)
        elif args.mode == "race":
            target = None if args.target is None else args.target / 100
            race(args.data, args.seeds, args.time, target, work, shlex.split(args.train_args))
        else:
            progressive(args.data, args.seeds, args.epochs, work)


if __name__ == "__main__":
    main()
