"""The auto recipe: `resnetcls train DATA` chooses what the user left open (model, width, image size,
augmentation, optimizer, batch size, epochs, checkpoints kept) from the data and this machine's measured
speed.

Every recipe key the user gave (RECIPE_KEYS, by a flag, --set or a --config file: a packaged recipe such as
`--config small-data` or a file of one's own) is kept; the recipe chooses only the rest, consistently with it.
The rules (RULES below; the first whose limit the training set is under applies):

    training images   model                      image size (px)     recipe                 epochs
    < 5000            resnet18, width 64         128                 small data             clamp(50000 / N,
                                                                                            10, 200)
    otherwise         resnet50 (resnet34 on a    224 (160 on a CPU)  configs/default.yaml   clamp(1.5M / N,
                      CPU under 25 img/s)                            (crop_flip)            15, 40)

- Fine-tuning: with torchvision's ImageNet weights for the model (models/weights.py) the recipe fine-tunes:
  train.pretrained=torchvision, width 64, configs/finetune.yaml's values (FINETUNE), 224 px (160 on a CPU)
  and clamp(100000 / N, 10, 30) epochs. The weights come from the local cache or, when download.pytorch.org
  answers (checked once, at most 3 s; RESNETCLS_OFFLINE=1 skips the check), are downloaded for the picked
  depth (recipe_choice.ImageNetWeights). Offline or when the download fails it trains from scratch and says
  why and how to get them. Weights the user names (--pretrained) are fine-tuned the same way, and nothing is
  checked or downloaded for them.
- Image size: never above the median short side of the images (the largest multiple of 32 not above it, at
  least 64), read from the headers of at most 256 evenly spaced training files. Their median long/short side
  over 1.5 (recipe_choice.WHOLE_FRAME_ASPECT) picks data.resize=squash: the whole frame, not its centre.
- Small data: under MIN_STEPS full batches the batch halves (a power of two, never below MIN_BATCH) until an
  epoch has MIN_STEPS steps or the floor is reached; the loader drops an epoch's incomplete last batch, so no
  batch of 1 ever reaches BatchNorm (engine/plan.py says when that drops more than 10% of the images). Under
  5000 training images only the last and the best checkpoints are kept (ckpt.keep_last=1): the last is what
  an exact resume needs.
- Speed: a few training steps of the chosen model at the chosen size on random tensors (autobatch.time_batch),
  in training images per second; a validation image costs a third of a training one. Measured only when the
  epochs or the model depend on it.
- The cap: epochs that would take longer than 30 minutes on a CPU (4 hours on a GPU) are lowered to fit,
  never below 5, and a line says so. With --time the budget chooses the epochs (engine/budget.py).

- Class balance: when the largest training class has over IMBALANCED (3) times the images of the smallest,
  the recipe turns on BALANCE (data.sampler=balanced: measured against balanced loss weights in
  bench/imbalance.py) and says so, unless data.sampler or loss.class_weights was given (then yours is kept).

- The race (engine/race.py), under --time with train.race_share > 0 (off by default until measured against
  the fixed candidates; --set train.race_share=0.2 races on a fifth of the budget): the choice above races
  against its alternatives on the dimensions the user left open, successive halving on that share of the
  budget; the winner trains for the rest, continuing its own schedule:

    dimension      raced when                                   candidates
    augmentation   no augmentation key given, under 1000        the rule's, and the other one of heavy
                   training images a class                      (TrivialAugment, mixup 0.2, cutmix 1.0,
                                                                erasing 0.25) and light (crop_flip)
    resolution     no --image-size given                        the chosen size and 3/4 of it (a multiple
                                                                of 16, at least 32)

  At most 4 candidates ("heavy 128px", "light 128px", "heavy 96px", "light 96px"); when the measured speed
  leaves under 2 steps a candidate for the first rung, the first two race, then none.

What is chosen is printed on stderr (what came from the user, what was chosen and why), written to
config.yaml and logged to metrics.jsonl as {"kind": "recipe", ...}. train.auto_recipe=false turns it off (the
config as given); a resumed run keeps its config.yaml and measures nothing.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import (
    Config,
    ExplicitSettings,
    config_to_dict,
    load_yaml,
    parse_duration,
    renamed,
    resolve_config_file,
    set_value,
)
from ..config.schema import flatten
from ..data.sources import Splits
from . import distributed
from .autobatch import StepRecipe, time_batch
from .optim import build_loss, build_optimizer
from .prepare import build_context, build_model
from .recipe_choice import (
    BALANCE_KEYS,
    FINETUNE_WIDTH,
    MIN_BATCH,
    MIN_STEPS,
    DataFacts,
    ImageNetWeights,
    RecipeChoice,
    Rule,
    class_balance,
    class_imbalance,
    fine_tune,
    median_short_side,
)

# The from-scratch recipe for a few hundred to a few thousand photos; configs/small-data.yaml holds the same.
SMALL_DATA = {
    "data.augment": "trivialaugment",
    "data.random_erasing": 0.25,
    "data.mixup": 0.2,
    "data.cutmix": 1.0,
    "data.min_crop_scale": 0.25,
    "loss.label_smoothing": 0.1,
    "optim.name": "adamw",
    "optim.lr": 2e-3,
    "optim.weight_decay": 0.05,
    "train.batch_size": 64,
    "sched.name": "cosine",
    "sched.warmup_epochs": 2.0,
}
# configs/default.yaml's crop_flip recipe for larger data sets (no mixing: enough images to learn from).
CROP_FLIP = {
    "data.augment": "crop_flip",
    "data.random_erasing": 0.0,
    "data.mixup": 0.0,
    "data.cutmix": 0.0,
    "data.min_crop_scale": 0.35,
    "loss.label_smoothing": 0.1,
    "optim.name": "adamw",
    "optim.lr": 2e-3,
    "optim.weight_decay": 0.05,
    "train.batch_size": 64,
    "sched.name": "cosine",
    "sched.warmup_epochs": 1.0,
}
# configs/finetune.yaml's fine-tuning values (the model, width, size and epochs are the recipe's).
FINETUNE = {
    "data.augment": "crop_flip",
    "data.random_erasing": 0.0,
    "data.mixup": 0.0,
    "data.cutmix": 0.0,
    "data.min_crop_scale": 0.5,
    "loss.label_smoothing": 0.1,
    "optim.name": "sgd",
    "optim.lr": 0.01,
    "optim.momentum": 0.9,
    "optim.nesterov": True,
    "optim.weight_decay": 1e-4,
    "optim.decay_norm_and_bias": False,
    "train.batch_size": 32,
    "sched.name": "cosine",
    "sched.warmup_epochs": 0.5,
}
FINETUNE_SIZE, FINETUNE_CPU_SIZE = 224, 160
FINETUNE_IMAGES_SEEN, FINETUNE_EPOCHS = 100_000, (10, 30)
# The keys the recipe chooses; the ones the user gave (flag, --set, --config file) it keeps.
RECIPE_KEYS = frozenset(
    {
        "model.name",
        "model.width",
        "data.image_size",
        "data.resize",
        "train.epochs",
        "train.pretrained",
        "ckpt.keep_last",
        *SMALL_DATA,
        *CROP_FLIP,
        *FINETUNE,
        *BALANCE_KEYS,
    }
)
SMALL_RUN_KEEP = 1  # ckpt.keep_last for small data: the last checkpoint (exact resume) and the best


RULES = (
    Rule(
        "small data", 5000, "resnet18", 64, 128, 128, "small-data", SMALL_DATA, 50_000, 10, 200, keep_last=1
    ),
    Rule(
        "larger data",
        float("inf"),
        "resnet50",
        64,
        224,
        160,
        "crop_flip",
        CROP_FLIP,
        1_500_000,
        15,
        40,
        slow_model="resnet34",
        slow_images_per_s=25.0,
    ),
)
CAP_S = {"cuda": 4 * 3600.0}  # the longest run picked without being asked; other devices: CPU_CAP_S
CPU_CAP_S = 30 * 60.0
MIN_EPOCHS = 5  # the cap never lowers the epochs below this
VAL_COST = 1 / 3  # a validation image's time relative to a training image's (forward only)
MIN_SIZE, SIZE_STEP = 64, 32


def pick_rule(train_images: int) -> Rule:
    """The first rule whose limit the training set is under."""
    return next(rule for rule in RULES if train_images < rule.below_images)


def image_size_for(largest: int, median_short_side: int | None) -> int:
    """largest, lowered to the largest multiple of SIZE_STEP not above the median short side (at least
    MIN_SIZE)."""
    if not median_short_side:
        return largest
    return max(MIN_SIZE, min(largest, median_short_side // SIZE_STEP * SIZE_STEP))


def epochs_for(rule: Rule, train_images: int) -> int:
    """About rule.images_seen training images, within the rule's bounds."""
    return int(min(rule.max_epochs, max(rule.min_epochs, round(rule.images_seen / max(1, train_images)))))


def finetune_epochs(train_images: int) -> int:
    """About FINETUNE_IMAGES_SEEN training images, within FINETUNE_EPOCHS."""
    low, high = FINETUNE_EPOCHS
    return int(min(high, max(low, round(FINETUNE_IMAGES_SEEN / max(1, train_images)))))


def small_batch(train_images: int, batch: int) -> int:
    """batch, halved while an epoch has fewer than MIN_STEPS full batches, never below MIN_BATCH."""
    while batch > MIN_BATCH and train_images < MIN_STEPS * batch:
        batch //= 2
    return batch


def needs_speed(rule: Rule, given: dict[str, Any], budget_s: float, device: str) -> bool:
    """Whether anything left to choose depends on this machine's speed: the epochs, or a slow CPU's model."""
    epochs_open = "train.epochs" not in given and not budget_s
    return epochs_open or ("model.name" not in given and bool(rule.slow_model) and device != "cuda")


def pick_model(
    rule: Rule, given: dict, device: str, measure: Callable | None, width: int, size: int
) -> tuple:
    """(model, images/s, slow note) for what the user left open; images/s is 0 when not measured (measure
    None: nothing depends on the speed)."""
    model = given.get("model.name", rule.model)
    if measure is None:
        return model, 0.0, ""
    speed, slow_note = measure(model, width, size), ""
    if device != "cuda" and rule.slow_model and "model.name" not in given and speed < rule.slow_images_per_s:
        slow_note = f"; {rule.model}: {speed:.0f} img/s, under {rule.slow_images_per_s:g} on this CPU"
        model, speed = rule.slow_model, measure(rule.slow_model, width, size)
    return model, speed, slow_note


def largest_size(rule: Rule, device: str, tune: bool) -> int:
    """The image size before the median lowers it: fine-tuning's or the rule's, on this device."""
    if tune:
        return FINETUNE_SIZE if device == "cuda" else FINETUNE_CPU_SIZE
    return rule.image_size if device == "cuda" else rule.cpu_image_size


def size_and_width(rule: Rule, given: dict, device: str, tune: bool, facts: DataFacts) -> tuple[int, int]:
    """The image size and width the user left open, for fine-tuning or the rule's from-scratch run."""
    size = given.get("data.image_size") or image_size_for(
        largest_size(rule, device, tune), facts.median_short_side
    )
    return size, given.get("model.width", FINETUNE_WIDTH if tune else rule.width)


def pick_epochs(rule: Rule, facts: DataFacts, tune: bool, epoch_s: float, device: str) -> tuple[int, int]:
    """(epochs, epochs before the cap): about the images seen the recipe wants, lowered to fit the cap."""
    wanted = finetune_epochs(facts.train_images) if tune else epochs_for(rule, facts.train_images)
    if not epoch_s:
        return wanted, wanted
    fits = max(MIN_EPOCHS, int(CAP_S.get(device, CPU_CAP_S) // epoch_s))
    return min(wanted, fits), wanted


def no_weights(arch: str) -> None:
    return None


def choose_recipe(
    facts: DataFacts,
    device: str,
    measure: Callable[[str, int, int], float],
    budget_s: float = 0.0,
    given: dict[str, Any] | None = None,
    has_weights: Callable[[str], Any] = no_weights,
) -> RecipeChoice:
    """The rules of the module docstring as a function of the data (facts), the device type ("cpu", "cuda",
    ...), measure(model, width, image_size) -> training images per second on this machine, the --time budget,
    the recipe keys the user gave (kept) and has_weights(arch) (ImageNet weights for arch? its probe(arch) and
    cached(arch), when it has them: could they be had without downloading, are they in the cache)."""
    given = dict(given or {})
    rule = pick_rule(facts.train_images)
    # Whether weights could be had (no download yet): the size and the speed measured depend on it.
    could = fine_tune(given.get("model.name", rule.model), given, has_weights, fetch=False)[0]
    size, width = size_and_width(rule, given, device, could, facts)
    timing = measure if needs_speed(rule, given, budget_s, device) else None
    model, speed, slow_note = pick_model(rule, given, device, timing, width, size)
    tune, weights_line = fine_tune(model, given, has_weights)  # the picked depth's weights (downloaded now)
    if tune != could:  # the download failed: the from-scratch size, measured again
        size, width = size_and_width(rule, given, device, tune, facts)
        speed = timing(model, width, size) if timing else 0.0
    values = {**(FINETUNE if tune else rule.values), **facts.resize_choice()}  # squash: wide frames
    picked = {"model.name": model, "model.width": width, "data.image_size": size, **values}
    picked["train.batch_size"] = small_batch(facts.train_images, values["train.batch_size"])
    if tune:
        picked["train.pretrained"] = "torchvision"
    if rule.keep_last:
        picked["ckpt.keep_last"] = rule.keep_last
    picked.update(class_balance(facts, given))
    epoch_s = (facts.train_images + VAL_COST * facts.val_images) / speed if speed else 0.0
    epochs, wanted = pick_epochs(rule, facts, tune, epoch_s, device)
    if not budget_s:
        picked["train.epochs"] = epochs
    chosen = {key: value for key, value in picked.items() if key not in given}
    return RecipeChoice(
        rule,
        chosen,
        {**picked, **given},
        given,
        facts,
        device,
        CAP_S.get(device, CPU_CAP_S),
        values["train.batch_size"],
        uncapped_epochs=wanted,
        budget_s=budget_s,
        images_per_s=speed,
        epoch_s=epoch_s,
        slow_note=slow_note,
        weights_line=weights_line,
    )


def given_settings(cfg: Config, explicit: ExplicitSettings, among: frozenset = RECIPE_KEYS) -> dict[str, Any]:
    """The recipe keys (or those among `among`) the user gave (a flag, --set, or a key of the --config file),
    with cfg's values: the auto recipe keeps them and chooses the rest."""
    keys = set(explicit.keys)
    if explicit.config_file:
        keys |= {renamed(key) for key in flatten(load_yaml(resolve_config_file(explicit.config_file)))}
    values = flatten(config_to_dict(cfg))
    return {key: values[key] for key in sorted(keys & among)}


def apply_recipe(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of cfg with the dotted keys set (type-checked as --set is)."""
    cfg = copy.deepcopy(cfg)
    for key, value in values.items():
        set_value(cfg, key, value, source="auto recipe")
    return cfg


def saved_recipe(cfg: Config, run_dir: Path) -> Config:
    """cfg with the recipe keys of a run directory's config.yaml (a race's winner sets only those): a resumed
    run keeps what was picked for it and measures nothing (engine/plan.py calls it before comparing the
    settings with the checkpoint's)."""
    saved = flatten(load_yaml(run_dir / "config.yaml"))
    return apply_recipe(cfg, {k: v for k, v in saved.items() if k in RECIPE_KEYS})


def pick_for_data(
    cfg: Config, splits: Splits, device_name: str | None = None, explicit: ExplicitSettings | None = None
) -> RecipeChoice:
    """The auto recipe for these splits on this machine, keeping what explicit gave (engine/plan.py applies
    its config_values). Under torchrun every rank takes rank 0's choice."""
    explicit = explicit or ExplicitSettings()
    given = given_settings(cfg, explicit)
    if given.get("train.pretrained") not in (None, "", "torchvision"):  # a file: checked against this model
        given = {"model.name": cfg.model.name, "model.width": cfg.model.width, **given}
    median, read = median_short_side(splits.train.paths)
    imbalance = class_imbalance(splits.train.labels)
    facts = DataFacts(len(splits.train), len(splits.val), len(splits.classes), median, read, imbalance)
    facts = facts.with_aspect(splits.train.paths)
    ctx = build_context(cfg.train, device_name)

    def measure(name: str, width: int, size: int) -> float:
        return measure_images_per_s(cfg, name, width, size, max(2, facts.classes), device_name)

    budget_s = parse_duration(cfg.train.time_budget)
    choice = choose_recipe(facts, ctx.device.type, measure, budget_s, given, ImageNetWeights())
    choice.config_file = explicit.config_file
    return distributed.gather_objects(choice)[0]


# The batch both recipes train with (SMALL_DATA, CROP_FLIP): per-image speed depends on it. Timed at 16, a
# ResNet-18 at 128 px read 68 img/s on the Xeon-AMX where its run at 64 trained at about 105 (a 1.6x too long
# estimate, and a cap that bit too early).
MEASURE_BATCH = SMALL_DATA["train.batch_size"]


def measure_images_per_s(
    cfg: Config, name: str, width: int, image_size: int, num_classes: int, device_name: str | None
) -> float:
    """Training images per second of this model at this size (the run's precision, optimizer and loss) on
    random tensors, with a throwaway model (prepare_run seeds every RNG afterwards: the run is unaffected)."""
    probe_cfg = apply_recipe(cfg, {"model.name": name, "model.width": width})
    # The shapes cost the time, not the weights; no SyncBatchNorm, whose steps would wait on the others.
    probe_train = dataclasses.replace(cfg.train, pretrained="", sync_bn=False)
    ctx = build_context(probe_train, device_name)
    model = build_model(probe_cfg.model, probe_train, num_classes, ctx)
    optimizer, loss_fn = build_optimizer(model, cfg.optim), build_loss(cfg.loss, num_classes).to(ctx.device)
    step = StepRecipe(model, optimizer, loss_fn, ctx, image_size, num_classes)
    time_batch(step, 2)  # one-time costs, untimed
    return time_batch(step, MEASURE_BATCH)
