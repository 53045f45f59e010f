"""The plan of a `train` run: every choice made once, before anything is written.

make_plan() makes the data paths absolute and validates the config, checks the device, resolves the data
splits once (the file list: nothing is decoded), finds the checkpoint to resume (refusing changed settings)
and checks the model (its name, the pretrained weights) and the open-set settings (a class named "unknown",
the --unknown folder: engine/openset.py); only then does it make the automatic choices, in
this order: the auto recipe (what the user left open: engine/recipe.py), the batch size
(`--batch-size auto`, engine/autobatch.py), the learning rate (`--lr auto`, engine/lrfind.py), the epochs that
fit a time budget (`--time`, engine/budget.py: a short speed measurement with the real model and data, which
may build the decoded cache, kept outside the run directory) or, when the auto recipe has candidates to
race under --time, the race's plan (engine/race.py: each candidate measured so, the rungs that fit
train.race_share of the budget, each candidate's epochs), the precision and the progressive sizes.

The Plan it returns is the final config and the list of decisions, each with what was chosen and why; the
lines a user reads about them (the auto recipe's, the budget's, --batch-size/--lr auto's) are renderings of
these decisions. A failed plan leaves no run directory behind. Training (engine/train.py) then writes
config.yaml once from plan.cfg, and never changes the config. A resumed run keeps the choices of its
config.yaml (the recipe keys, the budgeted epochs) and measures nothing again; a race stopped before its
winner was trained on resumes from RUN/race.json (the same candidates, rungs and scores so far).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import Config, ExplicitSettings, parse_duration, validate_config
from ..data.augment import resolve_augment_on
from ..data.sampler import progressive_sizes
from ..data.sources import Splits
from ..models import create_model
from ..models.pretrained import load_pretrained
from ..utils.hardware import precision_name
from . import distributed
from .autobatch import pick_batch_size
from .budget import BudgetChoice, epochs_for_budget, measure_speed, pixel_shares
from .distill import TeacherIdentity, build_distill_hooks, check_teacher, distill_line
from .loop import StepContext
from .lrfind import LRCurve, auto_lr
from .multilabel import multi_label_choices
from .openset import check_open_set
from .optim import build_loss, build_optimization
from .prepare import (
    DataPipeline,
    arch_args,
    build_context,
    build_data,
    build_model,
    find_run,
    resolve_splits,
    sync_bn_applies,
    warn,
)
from .race import MIN_RUNG_STEPS as MIN_RACE_STEPS
from .race import (
    RacePlan,
    load_race,
    plan_race,
    race_candidates,
    race_settings_kept,
    race_under_way,
)
from .recipe import apply_recipe, pick_for_data, saved_recipe
from .recipe_choice import recipe_blocker

DROP_NOTE = 0.10  # the share of the train images an epoch may leave out without a note


@dataclass
class Decision:
    """One automatic choice: its name; chosen, the dotted config keys it set (or, for precision and
    progressive, the values the config resolves to on this machine, which config.yaml keeps as given); why;
    and how a user reads it: lines, logged at the start of the run (logged=True) or said on stderr as the plan
    made it, and record, the metrics.jsonl record that keeps its measurements (None: none)."""

    name: str  # recipe, batch_size, lr, time_budget, resume, precision, progressive
    chosen: dict[str, Any]
    why: str
    lines: list[str] = field(default_factory=list)
    record: dict | None = None
    logged: bool = True


@dataclass
class TrainRequest:
    """What `train` was asked: the config built from defaults, --config, --set and flags; where; what to
    resume; and the automatic choices asked for by flag (explicit: see engine/recipe_choice.py's
    recipe_blocker)."""

    cfg: Config
    out_dir: Path
    resume: str | None = None
    force: bool = False
    lr_auto: bool = False
    batch_auto: bool = False
    explicit: ExplicitSettings | None = None


@dataclass
class Plan:
    """A finished plan: the final config, where the run goes, the checkpoint it resumes (None: a new run),
    the splits, this rank's device, the decisions in the order they were made, --lr auto's sweep (written into
    the run directory for the report) and the provenance."""

    cfg: Config
    run_dir: Path
    resumed: tuple[dict, dict] | None
    splits: Splits
    device_name: str | None
    env: dict
    decisions: list[Decision] = field(default_factory=list)
    lr_curve: LRCurve | None = None
    race: RacePlan | None = None  # the raced auto recipe (engine/race.py): its candidates, then its plan
    teacher: TeacherIdentity | None = None  # --teacher: the distillation teacher (engine/distill.py)

    def decision(self, name: str) -> Decision | None:
        return next((made for made in self.decisions if made.name == name), None)


def make_plan(request: TrainRequest, device_name: str | None = None) -> Plan:
    """Every refusal knowable from the flags, the config and the data's file list, then every choice (see the
    module docstring); nothing is written into the run directory."""
    cfg = request.cfg
    validate_config(cfg)  # ranges and choices, before anything else
    ctx = build_context(cfg.train, device_name)  # --device cuda without a GPU
    run_dir = Path(request.out_dir if request.resume in (None, "auto") else request.resume)
    recipe_on = not recipe_blocker(request.explicit, cfg.train.auto_recipe)
    resuming = request.resume is not None and any((run_dir / "checkpoints").glob("step-*.json"))
    racing = race_under_way(run_dir, request.resume, resuming)
    if (recipe_on and resuming or racing) and (run_dir / "config.yaml").is_file():
        cfg = saved_recipe(cfg, run_dir)  # compared with the checkpoint's settings as the run's own
    # a race under way: its run folder holds no checkpoint of its own yet (engine/race.py)
    found = find_run(cfg, request.out_dir, None if racing else request.resume, request.force)
    splits = resolve_splits(found.cfg.data, found.cfg.train.seed)
    check_parts(found.cfg, len(splits.classes), ctx)
    check_open_set(found.cfg.eval, splits.classes)  # a class named "unknown", the --unknown folder
    teacher = check_teacher(found.cfg.distill, splits.classes, found.resumed, request.force)
    plan = Plan(found.cfg, found.run_dir, found.resumed, splits, device_name, found.env, teacher=teacher)
    if plan.resumed is not None:
        plan.decisions.append(kept_choices(plan))
    elif racing:
        race_settings_kept(plan.cfg, run_dir, request.force)
        plan.race = load_race(run_dir)
        plan.decisions.append(Decision("race", {}, "the race resumes where it stopped (race.json)"))
    elif recipe_on and not resuming:
        decide(plan, decide_recipe(plan, request))
    elif request.explicit is not None and not resuming:
        plan.decisions.append(recipe_off())
    multi = multi_label_choices(plan.cfg, splits)  # engine/multilabel.py: bce, val_map, no open-set score
    if multi[0]:
        decide(plan, Decision("multi_label", multi[0], "multi-label data", multi[1]))
    if request.batch_auto:
        decide(plan, decide_batch_size(plan))
    if request.lr_auto:
        decide(plan, decide_lr(plan))
    if parse_duration(plan.cfg.train.time_budget) and plan.resumed is None and not racing:
        decide(plan, decide_race(plan) if plan.race is not None else decide_time_budget(plan))
    dropped = dropped_images(plan)
    if dropped is not None:
        plan.decisions.append(dropped)
    plan.decisions.append(decide_precision(plan))
    if plan.cfg.data.progressive > 0:
        plan.decisions.append(decide_progressive(plan.cfg))
    if teacher is not None:  # what the run distils from: said at the start, kept in metrics.jsonl
        line = distill_line(teacher, plan.cfg.distill, DataPipeline(plan.cfg.data, 1, False).preprocess)
        plan.decisions.append(Decision("distill", {}, teacher.path, [line], teacher.record("distill")))
    return plan


def decide(plan: Plan, made: Decision) -> None:
    """Apply a decision's config keys to the plan's config and keep it; one said at once is printed now."""
    plan.cfg = apply_recipe(plan.cfg, made.chosen) if made.chosen else plan.cfg
    plan.decisions.append(made)
    if not made.logged:
        for line in made.lines:
            warn(line)


def kept_choices(plan: Plan) -> Decision:
    """A resumed run measures nothing: it keeps its config.yaml's choices, the epochs a time budget chose when
    it started among them (prepare.with_saved_total)."""
    budgeted = bool(parse_duration(plan.cfg.train.time_budget))
    chosen = {"train.epochs": plan.cfg.train.epochs} if budgeted else {}
    why = "a resumed run keeps the choices of its config.yaml" + (
        f", the {plan.cfg.train.epochs} epochs its --time budget chose among them" if budgeted else ""
    )
    return Decision("resume", chosen, why)


def check_parts(cfg: Config, num_classes: int, ctx: StepContext) -> None:
    """Refuse an unknown model, pretrained weights that cannot be had or do not fit, SyncBatchNorm off CUDA
    and transforms that cannot be built, before anything is measured or decoded (the run builds them again,
    seeded)."""
    model_cfg, train_cfg = cfg.model, cfg.train
    device_augment = resolve_augment_on(cfg.data.augment_on, ctx.device)
    DataPipeline(cfg.data, train_cfg.batch_size, ctx.device.type == "cuda", device_augment)  # decodes nothing
    if not train_cfg.pretrained:
        with torch.device("meta"):  # the name and the architecture only: no memory, no time
            create_model(model_cfg.name, num_classes, **arch_args(model_cfg))
    else:
        model = create_model(model_cfg.name, num_classes, **arch_args(model_cfg))
        load_pretrained(model, train_cfg.pretrained, model_cfg.name, log=lambda line: None)
    sync_bn_applies(train_cfg, ctx)


def decide_recipe(plan: Plan, request: TrainRequest) -> Decision:
    """The auto recipe (engine/recipe.py): what the user left open of the model, width, image size,
    augmentation, optimizer, batch size, epochs and checkpoints kept (--batch-size/--lr auto: given, chosen
    after it)."""
    choice = pick_for_data(plan.cfg, plan.splits, plan.device_name, request.explicit)
    for key, auto in (("train.batch_size", request.batch_auto), ("optim.lr", request.lr_auto)):
        if auto and key in choice.given:
            choice.given[key] = "auto"
    why = f"{choice.rule.name}: {choice.facts.train_images} train images, kept {sorted(choice.given)}"
    entries, plan.race = race_candidates(choice.run, choice.given, choice.facts)[0], None
    budget_s, share = parse_duration(plan.cfg.train.time_budget), plan.cfg.train.race_share
    if budget_s and share > 0 and len(entries) > 1 and distributed.world_from_env().size == 1:
        plan.race = RacePlan(entries, [], budget_s, share * budget_s)
    return Decision(
        "recipe", choice.config_values(), why, choice.lines(), {"kind": "recipe", **choice.record()}
    )


def recipe_off() -> Decision:
    """train.auto_recipe=false: the config as given, said once at the start of the run."""
    line = (
        "auto recipe: off (--no-auto-recipe, train.auto_recipe=false): the config as given, nothing chosen "
        "from the data"
    )
    return Decision("recipe", {}, "train.auto_recipe=false", [line])


def decide_batch_size(plan: Plan) -> Decision:
    """--batch-size auto (engine/autobatch.py), said on stderr as it is chosen."""
    choice = pick_batch_size(plan.cfg, plan.splits, plan.device_name)
    chosen = {"train.batch_size": choice.batch_size, "train.grad_accum_steps": choice.grad_accum_steps}
    return Decision("batch_size", chosen, "--batch-size auto", [choice.line], logged=False)


def decide_lr(plan: Plan) -> Decision:
    """--lr auto (engine/lrfind.py): the LR range test's suggestion, said on stderr as it is chosen; its curve
    goes into the run directory."""
    lr, plan.lr_curve, line = auto_lr(plan.cfg, plan.splits, plan.device_name)
    return Decision("lr", {"optim.lr": lr}, f"--lr auto: {plan.lr_curve.rule}", [line], logged=False)


def decide_time_budget(plan: Plan) -> Decision:
    """--time: the epochs whose steps, validations and checkpoints fit the budget (engine/budget.py), from a
    speed measurement with the run's model and data. Under torchrun every rank measures its share and takes
    rank 0's figures; only rank 0 times a checkpoint write. The budget counts from here: the data, the model
    and the measurement are set-up time (the auto recipe's, --batch-size's and --lr's measurements are
    not)."""
    started = time.perf_counter()
    measured, steps_per_epoch = measure_run_speed(plan)
    # Every rank takes rank 0's figures, its set-up time included: ranks that chose different numbers of
    # epochs would wait for each other in a collective.
    figures = distributed.gather_objects((*measured, time.perf_counter() - started))[0]
    return budget_decision(plan.cfg, figures, steps_per_epoch)


def budget_decision(cfg: Config, figures: tuple, steps_per_epoch: int, note: str = "") -> Decision:
    """The time budget's decision from the measured (step, validation, checkpoint, set-up) seconds."""
    step_s, val_s, save_s, setup_s = figures
    budget_s = parse_duration(cfg.train.time_budget)
    # Progressive resizing: the steps were timed at the final size, and each epoch is scaled by its pixels.
    data_cfg = cfg.data
    epochs = epochs_for_budget(
        max(0.0, budget_s - setup_s),
        step_s,
        steps_per_epoch,
        val_s,
        save_s,
        data_cfg.image_size,
        data_cfg.progressive,
    )
    shares = pixel_shares(epochs, data_cfg.image_size, data_cfg.progressive)
    choice = BudgetChoice(
        budget_s, step_s, val_s, steps_per_epoch, epochs, save_s, setup_s, sum(shares) / epochs
    )
    why = f"--time {cfg.train.time_budget}: {epochs} epochs fit"
    record = {"kind": "time_budget", **choice.record()}
    lines = [choice.line(), *([note] if note else [])]
    return Decision("time_budget", {"train.epochs": choice.epochs}, why, lines, record)


def decide_race(plan: Plan) -> Decision:
    """The raced auto recipe (engine/race.py): each candidate's speed measured as the time budget measures
    it, then the rungs that fit train.race_share of the budget and each candidate's epochs; when not even two
    candidates fit, no race: the auto recipe's choice gets the whole budget (said in a line)."""
    started, entries = time.perf_counter(), plan.race.entries
    for entry in entries:
        probe = dataclasses.replace(plan, cfg=apply_recipe(plan.cfg, entry.values))
        (entry.step_s, entry.val_s, entry.save_s), entry.steps_per_epoch = measure_run_speed(probe)
    setup_s, cfg = time.perf_counter() - started, plan.cfg
    fit = {"image_size": cfg.data.image_size, "progressive": cfg.data.progressive}
    race = plan_race(list(entries), plan.race.budget_s, cfg.train.race_share, setup_s, fit)
    if race is None:
        plan.race, first = None, entries[0]
        note = (
            f"auto recipe race: none ({len(entries)} candidates would get under {MIN_RACE_STEPS} steps each "
            f"in train.race_share={cfg.train.race_share:g} of the budget)"
        )
        figures = (first.step_s, first.val_s, first.save_s, setup_s)
        return budget_decision(cfg, figures, first.steps_per_epoch, note)
    plan.race = race
    why = f"--time {cfg.train.time_budget}: {len(race.entries)} candidates raced on {race.rungs} steps"
    return Decision("race", {"train.epochs": race.entries[0].epochs}, why, [race.plan_line()])


def measure_run_speed(plan: Plan) -> tuple[tuple[float, float, float], int]:
    """((seconds per optimizer step, per validation pass, per checkpoint), steps per epoch) on this rank, with
    a throwaway model of the run's shape (no pretrained weights: the shapes cost the time) over the run's
    loaders."""
    cfg = plan.cfg
    probe_train = dataclasses.replace(cfg.train, pretrained="", sync_bn=False)
    ctx = build_context(probe_train, plan.device_name)
    data = build_data(cfg.data, probe_train, ctx, plan.splits, leak_check=False)
    steps_per_epoch = math.ceil(len(data.train_loader) / max(1, cfg.train.grad_accum_steps))
    classes = len(plan.splits.classes)
    model = build_model(cfg.model, probe_train, classes, ctx)
    loss_fn = build_loss(cfg.loss, classes, plan.splits.train.labels).to(ctx.device)

    def build_opt(probe: torch.nn.Module):
        return build_optimization(probe, cfg.optim, cfg.sched, cfg.train, steps_per_epoch, ctx)

    hooks = build_distill_hooks(plan.teacher, cfg.distill, data.pipeline.preprocess, ctx)
    with probe_folder(plan.run_dir) as probe_dir:
        measured = measure_speed(
            model, data.train_loader, data.val_loader, loss_fn, ctx, build_opt, probe_dir, hooks
        )
    return measured, steps_per_epoch


@contextlib.contextmanager
def probe_folder(run_dir: Path):
    """A temporary folder beside the run directory-to-be (the same disk) for the checkpoint timing, removed
    afterwards; None on a rank that does not write."""
    if not distributed.is_main():
        yield None
        return
    parent = run_dir.absolute().parent
    while not parent.is_dir():
        parent = parent.parent
    with tempfile.TemporaryDirectory(prefix=".resnetcls-probe-", dir=parent) as folder:
        yield Path(folder)


def dropped_images(plan: Plan) -> Decision | None:
    """A note when the loader's dropped last batch (engine/prepare.py: an epoch's incomplete last batch is
    dropped, so BatchNorm never sees a batch of 1) leaves out more than DROP_NOTE of this rank's train
    images each epoch; None when it leaves out less."""
    images = math.ceil(len(plan.splits.train) / distributed.world_from_env().size)
    batch = plan.cfg.train.batch_size
    dropped = images % batch if images > batch else 0
    if dropped <= DROP_NOTE * images:
        return None
    why = f"{dropped} of {images} train images in an incomplete last batch of {batch}"
    line = (
        f"note: each epoch leaves out {dropped} of {images} train images ({dropped / images:.0%}): the "
        f"incomplete last batch of --batch-size {batch} is dropped (other images each epoch when the order "
        "is shuffled); a --batch-size that divides the images drops fewer"
    )
    return Decision("dropped", {}, why, [line])


def decide_precision(plan: Plan) -> Decision:
    """The precision train.precision resolves to on this device (utils/hardware.py's resolve_amp)."""
    ctx = build_context(plan.cfg.train, plan.device_name)
    name = precision_name(ctx.amp_dtype)
    why = f"train.precision={plan.cfg.train.precision} on {ctx.device.type}"
    return Decision("precision", {"precision": name}, why)


def decide_progressive(cfg: Config) -> Decision:
    """data.progressive's schedule of training sizes (a function of the epoch: resumable)."""
    data_cfg, epochs = cfg.data, cfg.train.epochs
    sizes = progressive_sizes(epochs, data_cfg.image_size, data_cfg.progressive)
    why = f"data.progressive={data_cfg.progressive}: {sizes[0]} -> {data_cfg.image_size} px"
    size = data_cfg.image_size
    line = (  # the opening line that states the schedule once
        f"progressive resizing: {sizes[0]} -> {size} px, full size from epoch "
        f"{sizes.index(size) + 1} of {epochs} (validation always at {size} px)"
    )
    return Decision("progressive", {"train_sizes": sorted(set(sizes))}, why, [line])
