"""The raced auto recipe: under --time, a short successive-halving race among a few candidate recipes on the
user's data, then the winner trained for the rest of the budget.

Which candidates (race_candidates; the table in engine/recipe.py's docstring): the auto recipe's choice, and
on the dimensions the user left open, its alternative: the augmentation (heavy: TrivialAugment with mixup,
cutmix and random erasing; light: crop_flip) while the training set has under HEAVY_PER_CLASS images a
class, and the resolution (the chosen size and one SMALLER times it, in steps of SIZE_STEP, not below
MIN_RACE_SIZE): at most 4 candidates (halving to 2, then 1). A dimension the user fixed (a flag, --set or
--config key) is not raced, nor is the class balance, which the auto recipe itself chooses from the class
counts (engine/recipe_choice.py) and every candidate keeps.

How long (plan_race): engine/plan.py measures each candidate's step, validation and checkpoint times (the
time budget's measurement). The race gets train.race_share of the budget: every candidate trains RUNG0
steps (the first rung), the better half continues to twice as many, and so on until one is left; the first
rung's steps are the most whose predicted time (the survivors counted as the slowest candidates) fits the
share. Each candidate trains with its own schedule (its epochs fitted to the budget left after the race,
plus its own race steps), so the winner simply continues it, keeping its progress.

How (run_race): each candidate is an ordinary run in RUN/race/NAME (config.yaml, checkpoints: exact resume
is the checkpoint's); a rung trains it to its step target (a checkpoint there), then it is scored on the
validation split (top-1 of the shipped model; the lower loss breaks a tie). RUN/race.json keeps the plan,
every score and the winner, written after each one: a run killed during the race resumes it where it was
(`--resume RUN`; for a run without --out, --resume latest or --resume auto finds it: engine/rundir.py). The
winner's last checkpoint, metrics and best model are copied into RUN, whose config.yaml then holds the
winner's values, and the run resumes from there to the end of the winner's schedule.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, dump_yaml, load_yaml, result_affecting_changes
from ..errors import UserError
from ..utils.atomic import write_text_atomic
from .budget import epochs_for_budget, format_seconds
from .checkpoint import list_checkpoints, load_latest
from .loop import evaluate
from .prepare import warn
from .recipe import apply_recipe
from .recipe_choice import DataFacts
from .runner import StopRequest

RACE_FILE, RACE_DIR = "race.json", "race"
HEAVY = {
    "data.augment": "trivialaugment",
    "data.random_erasing": 0.25,
    "data.mixup": 0.2,
    "data.cutmix": 1.0,
    "data.min_crop_scale": 0.25,
}
LIGHT = {
    "data.augment": "crop_flip",
    "data.random_erasing": 0.0,
    "data.mixup": 0.0,
    "data.cutmix": 0.0,
    "data.min_crop_scale": 0.35,
}
HEAVY_PER_CLASS = 1000  # at or above this many training images a class only the rule's augmentation runs
SMALLER, SIZE_STEP, MIN_RACE_SIZE = 0.75, 16, 32
MIN_RUNG_STEPS = 2  # a first rung shorter than this says nothing: fewer candidates, or no race


@dataclass
class Entry:
    """A candidate: its name ("heavy 128px"), the recipe keys it sets over the plan's config, and once
    measured its seconds per step, validation and checkpoint, steps per epoch, and the epochs of its own
    schedule."""

    name: str
    values: dict[str, Any]
    step_s: float = 0.0
    val_s: float = 0.0
    save_s: float = 0.0
    steps_per_epoch: int = 1
    epochs: int = 1

    @property
    def folder(self) -> str:
        return self.name.replace(" ", "-")


@dataclass
class RacePlan:
    """The race: its candidates in order (the auto recipe's first), each rung's cumulative step target, the
    budget, its share and the set-up time spent; then the scores (one dict a rung, candidate -> validation
    top-1) and validation losses, the measured seconds of each candidate's rungs, and the winner."""

    entries: list[Entry]
    rungs: list[int]
    budget_s: float
    share_s: float
    setup_s: float = 0.0
    scores: list[dict[str, float]] = field(default_factory=list)
    losses: list[dict[str, float]] = field(default_factory=list)  # validation loss: breaks a tie of top-1
    seconds: dict[str, float] = field(default_factory=dict)
    winner: str = ""

    def entry(self, name: str) -> Entry:
        return next(entry for entry in self.entries if entry.name == name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(saved: dict) -> RacePlan:
        entries = [Entry(**entry) for entry in saved["entries"]]
        return RacePlan(**{**saved, "entries": entries})

    def plan_line(self) -> str:
        rungs = " and ".join(str(steps) for steps in self.rungs)
        return (
            f"auto recipe race: {', '.join(entry.name for entry in self.entries)} on "
            f"{format_seconds(self.share_s)} of the {format_seconds(self.budget_s)} budget "
            f"(train.race_share), rungs to {rungs} steps, the better half going on each time; the winner "
            "continues its schedule"
        )

    def result_line(self) -> str:
        last = {name: score for rung in self.scores for name, score in rung.items()}
        parts = ", ".join(f"{entry.name} {last[entry.name]:.1%}" for entry in self.entries)
        spent = format_seconds(sum(self.seconds.values()))
        return f"race: {parts} -> {self.winner} ({spent} of a {format_seconds(self.share_s)} share)"

    def record(self) -> dict:
        return {"kind": "race", **self.to_dict()}


def entry_name(values: dict[str, Any]) -> str:
    """A candidate's name: its augmentation (heavy, light, or the augment's own name) and size."""
    augment = values["data.augment"]
    kind = {HEAVY["data.augment"]: "heavy", LIGHT["data.augment"]: "light"}.get(augment, augment)
    return f"{kind} {values['data.image_size']}px"


def smaller_size(size: int) -> int:
    """The resolution raced against size: SMALLER times it, down to a multiple of SIZE_STEP (size itself
    when that would be under MIN_RACE_SIZE)."""
    smaller = int(size * SMALLER) // SIZE_STEP * SIZE_STEP
    return smaller if smaller >= MIN_RACE_SIZE else size


def race_candidates(run: dict[str, Any], given: dict[str, Any], facts: DataFacts) -> tuple[list[Entry], str]:
    """(candidates, why) for the auto recipe's run values, the keys the user gave and the data: the
    augmentations by the resolutions raced, the auto recipe's choice first. The augmentation is raced when no
    augmentation key was given and the training set has under HEAVY_PER_CLASS images a class; the resolution
    when data.image_size was not given and a smaller one exists."""
    ours = {key: run[key] for key in HEAVY}
    other = LIGHT if run["data.augment"] == HEAVY["data.augment"] else HEAVY
    per_class = facts.train_images / max(1, facts.classes)
    augments, sizes, why = [ours], [run["data.image_size"]], []
    if given.keys() & HEAVY.keys():
        why.append("augmentation given")
    elif per_class >= HEAVY_PER_CLASS:
        why.append(f"{per_class:.0f} images a class: the rule's augmentation only")
    else:
        augments.append(other)
    if "data.image_size" in given:
        why.append("image size given")
    elif smaller_size(sizes[0]) < sizes[0]:
        sizes.append(smaller_size(sizes[0]))
    entries = []
    for size in sizes:
        for augment in augments:
            values = {**augment, "data.image_size": size}
            entries.append(Entry(entry_name(values), values))
    return entries, "; ".join(why)


def rung_steps(entries: list[Entry], share_s: float) -> list[int]:
    """Each rung's cumulative step target (RUNG0, 2 x RUNG0, ...): the largest first rung whose race fits
    share_s, counting every rung's validation and checkpoint and the survivors of later rungs as the slowest
    candidates; [] when not even MIN_RUNG_STEPS fit."""
    survivors = [len(entries)]
    while survivors[-1] > 1:
        survivors.append(survivors[-1] // 2)
    later = survivors[1:-1] if len(survivors) > 2 else []
    slowest = max(entry.step_s for entry in entries)
    fixed = sum(entry.val_s + entry.save_s for entry in entries) + sum(later) * max(
        entry.val_s + entry.save_s for entry in entries
    )
    per_step = sum(entry.step_s for entry in entries) + sum(
        count * 2 ** (rung - 1) * slowest for rung, count in enumerate(later, start=1)
    )
    first = int((share_s - fixed) // per_step) if per_step > 0 else MIN_RUNG_STEPS
    if first < MIN_RUNG_STEPS:
        return []
    return [first * 2**rung for rung in range(len(survivors) - 1)]


def plan_race(
    entries: list[Entry], budget_s: float, share: float, setup_s: float, fit: dict
) -> RacePlan | None:
    """The race for measured entries, or None when even two candidates do not fit its share (the first two:
    the resolution is dropped first). fit: image_size and progressive, as epochs_for_budget takes them."""
    share_s = share * budget_s
    while len(entries) >= 2:
        rungs = rung_steps(entries, share_s)
        if rungs:
            after = max(0.0, budget_s - setup_s - share_s)
            for entry in entries:
                own = rungs[-1] * entry.step_s  # the winner's own race steps are part of its schedule
                size = entry.values.get("data.image_size", fit["image_size"])
                entry.epochs = epochs_for_budget(
                    after + own, entry.step_s, entry.steps_per_epoch, entry.val_s, entry.save_s,
                    size, fit["progressive"],
                )  # fmt: skip
            return RacePlan(entries, rungs, budget_s, share_s, setup_s)
        entries = entries[:2] if len(entries) > 2 else []
    return None


def race_under_way(run_dir: Path, resume: str | None, resuming: bool) -> bool:
    """Whether a resumed run continues a race under way (RUN/race.json, and no checkpoint of RUN's own yet);
    a new run into a race's folder is refused."""
    held = (Path(run_dir) / RACE_FILE).is_file()
    if held and resume is None:
        raise UserError(
            f"{run_dir}: holds a recipe race ({RACE_FILE}); continue it with --resume auto, or choose "
            "another --out"
        )
    return held and resume is not None and not resuming


def race_settings_kept(cfg: Config, run_dir: Path, force: bool) -> None:
    """A race resumed (engine/race.py) with settings that change the result is refused, as a resumed run
    is (the epochs aside: each candidate has its own, in race.json); --force resumes it anyway."""
    saved = load_yaml(run_dir / "config.yaml")
    changes = [
        change for change in result_affecting_changes(saved, cfg) if not change.startswith("train.epochs:")
    ]
    if changes and not force:
        raise UserError(
            f"{run_dir}: refusing to resume the race with settings that change the result ("
            + "; ".join(changes)
            + "); use the run's settings, or --force to resume anyway"
        )


def load_race(run_dir: Path) -> RacePlan | None:
    """RUN/race.json's race (None: no race there)."""
    path = Path(run_dir) / RACE_FILE
    return RacePlan.from_dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None


def save_race(race: RacePlan, run_dir: Path) -> None:
    write_text_atomic(run_dir / RACE_FILE, json.dumps(race.to_dict(), indent=1) + "\n")


class RungStop(StopRequest):
    """A stop request that also comes when the run reaches its rung's step target; signalled() is only the
    user's SIGINT/SIGTERM, whose line says to resume RUN (the race), not the candidate's folder."""

    def __init__(self, state, target: int, resume_dir: Path) -> None:
        self.state, self.target, self.asked = state, target, False
        super().__init__(resume_dir)

    @property
    def requested(self) -> bool:
        return self.asked or self.state.global_step >= self.target

    @requested.setter
    def requested(self, value: bool) -> None:
        self.asked = value

    def signalled(self) -> bool:
        return self.asked

    def at_target(self) -> bool:
        return not self.asked and self.state.global_step >= self.target


@dataclass
class RaceHooks:
    """What the race trains with (engine/train.py): open(plan) -> a TrainingRun (restored from the plan's
    checkpoint), train(run) -> its epochs until the run's stop request."""

    open: Callable
    train: Callable


def candidate_plan(plan, entry: Entry):
    """The candidate's run: the plan's config with the candidate's values and epochs (and no trackers), in
    RUN/race/NAME, resumed from its newest checkpoint, deciding nothing."""
    # no tracker runs for the candidates: the run in RUN is the one a tracker follows
    quiet = {"log.mlflow": False, "log.wandb": False}
    cfg = apply_recipe(plan.cfg, {**entry.values, "train.epochs": entry.epochs, **quiet})
    run_dir = plan.run_dir / RACE_DIR / entry.folder
    resumed = load_latest(run_dir / "checkpoints", warn)
    return dataclasses.replace(plan, cfg=cfg, run_dir=run_dir, resumed=resumed, decisions=[], race=None)


def run_rung(plan, entry: Entry, target: int, hooks: RaceHooks) -> tuple[float, float]:
    """Train the candidate to its step target (or its schedule's end), checkpointed there; its validation
    top-1 and loss. A stop request (Ctrl-C) saves it and ends the run: `--resume RUN` continues the race."""
    run = hooks.open(candidate_plan(plan, entry))
    if run.state.global_step < target:
        run.parts.stop = RungStop(run.state, target, plan.run_dir)  # Ctrl-C: `--resume RUN` goes on
        hooks.train(run)
    stats = evaluate(run.eval_model, run.data.val_loader, run.parts.loss_fn, run.parts.ctx)
    run.parts.logger.close()
    return stats.top1, stats.loss


def race_rungs(plan, race: RacePlan, hooks: RaceHooks) -> str:
    """The rungs not yet scored (race.json says which), each candidate's score saved as it comes; the
    winner's name."""
    alive = [entry.name for entry in race.entries]
    for rung, target in enumerate(race.rungs):
        if len(race.scores) <= rung:
            race.scores.append({})
            race.losses.append({})
        for name in alive:
            if name in race.scores[rung]:
                continue  # scored before the run was stopped
            started = time.perf_counter()
            scored = run_rung(plan, race.entry(name), target, hooks)
            race.scores[rung][name], race.losses[rung][name] = scored
            race.seconds[name] = race.seconds.get(name, 0.0) + time.perf_counter() - started
            save_race(race, plan.run_dir)
        scores, losses = race.scores[rung], race.losses[rung]
        ranked = sorted(alive, key=lambda name: (-scores[name], losses[name], alive.index(name)))
        alive = ranked[: max(1, len(alive) // 2)]
    return alive[0]


def run_race(plan, hooks: RaceHooks):
    """The race of plan.race (a new one, or RUN/race.json's, resumed where it stopped), then the winner's
    progress copied into RUN: the plan of the winner's run, resumed from its checkpoint there, with the race's
    result in its decisions."""
    race = plan.race
    if not (plan.run_dir / RACE_FILE).is_file():  # config.yaml lets `--resume RUN` find the race's settings
        write_text_atomic(plan.run_dir / "config.yaml", dump_yaml(plan.cfg))
        save_race(race, plan.run_dir)
    warn(race.plan_line())
    if not race.winner:
        race.winner = race_rungs(plan, race, hooks)
        save_race(race, plan.run_dir)
    winner = candidate_plan(plan, race.entry(race.winner))
    adopt_winner(winner.run_dir, plan.run_dir)
    resumed = load_latest(plan.run_dir / "checkpoints", warn)
    cfg = dataclasses.replace(winner.cfg, log=plan.cfg.log)
    return dataclasses.replace(plan, cfg=cfg, resumed=resumed, decisions=with_race(plan, race))


def with_race(plan, race: RacePlan) -> list:
    """The plan's decisions with the race's: its result line (logged as the winner's run opens), its
    metrics.jsonl record."""
    made = [decision for decision in plan.decisions if decision.name != "race"]
    race_decision = plan.decision("race")
    if race_decision is None:
        return made
    lines = [race.result_line()]
    return [*made, dataclasses.replace(race_decision, lines=lines, record=race.record())]


def adopt_winner(winner_dir: Path, run_dir: Path) -> None:
    """The winner's newest checkpoint, metrics.jsonl, TensorBoard logs and best model copied into RUN, which
    then resumes from them (nothing when RUN already holds a checkpoint)."""
    if any((run_dir / "checkpoints").glob("step-*.json")):
        return
    for name in ("metrics.jsonl",):
        if (winner_dir / name).is_file():
            shutil.copy2(winner_dir / name, run_dir / name)
    for name in ("tb", "best"):
        if (winner_dir / name).is_dir():
            shutil.copytree(winner_dir / name, run_dir / name, dirs_exist_ok=True)
    saved = list_checkpoints(winner_dir / "checkpoints")
    if saved:  # the .pt first: a .json without its .pt is never complete
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        stem = saved[-1][0].stem
        shutil.copy2(winner_dir / "checkpoints" / f"{stem}.pt", run_dir / "checkpoints" / f"{stem}.pt")
        shutil.copy2(winner_dir / "checkpoints" / f"{stem}.json", run_dir / "checkpoints" / f"{stem}.json")
