"""The auto recipe: with no recipe choice given, `resnetcls train DATA` picks the model, its width, the image
size, the augmentation and the epochs from the data and this machine's measured speed.

The rules (RULES below; the first whose limit the training set is under applies):

    training images   model                          image size (px)      recipe                epochs
    < 5000            resnet18, width 64             128                  small data            clamp(50000 /
    N, 10, 200)
    otherwise         resnet50 (resnet34 on a CPU    224 (160 on a CPU)   configs/default.yaml  clamp(1.5M /
    N, 15, 40)
                      under 25 img/s with resnet50)                       (crop_flip)

- Image size: never above the median short side of the images (the largest multiple of 32 not above it, at
  least 64): upsampling small photos costs time and adds nothing. The median comes from the headers of at
  most 256 evenly spaced training files (PIL reads only the header).
- Speed: a few training steps of the chosen model at the chosen size on random tensors (autobatch.time_batch,
  the run's precision and memory format), in training images per second; a validation image costs about a
  third of a training one (forward only). Epoch time = train images / speed + val images / (3 x speed).
- The cap: when the epochs would take longer than 30 minutes on a CPU (4 hours on a GPU), they are lowered to
  fit it, never below 5, and the line says so and names --epochs / --time to ask for more. With --time the
  budget chooses the epochs (engine/budget.py) and the recipe only the rest.

What is chosen is printed on stderr in one or two lines, written to config.yaml (the resolved values: the
train loop needs nothing new) and logged to metrics.jsonl as {"kind": "recipe", ...} with the reasons.
Nothing is picked when the user chose anything the recipe sets (RECIPE_KEYS, by a flag or --set), gave
--config, or set train.auto_recipe=false; a resumed run keeps its config.yaml and measures nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..config import Config, ExplicitSettings, load_yaml, parse_duration, set_value
from ..config.schema import flatten
from ..data.sources import Splits
from . import distributed
from .autobatch import StepRecipe, time_batch
from .budget import format_seconds
from .optim import build_loss, build_optimizer
from .prepare import build_context, build_model

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
# Given by a flag, --set or a config file, any of these means the user chose the recipe: nothing is picked.
# train.pretrained too: fine-tuning has its own recipe (configs/finetune.yaml) and the weights fix the model.
RECIPE_KEYS = frozenset(
    {
        "model.name",
        "model.width",
        "data.image_size",
        "train.epochs",
        "train.pretrained",
        *SMALL_DATA,
        *CROP_FLIP,
    }
)


@dataclass(frozen=True)
class Rule:
    """One row of the table in the module docstring."""

    name: str  # printed: "small data", "larger data"
    below_images: float  # applies to training sets with fewer images than this
    model: str
    width: int
    image_size: int  # on a GPU; lowered to the median short side
    cpu_image_size: int  # on a CPU (or any device that is not CUDA)
    recipe: str  # printed name of the augmentation recipe
    values: dict  # the recipe's config keys
    images_seen: int  # epochs ~ images_seen / training images ...
    min_epochs: int  # ... clamped to [min_epochs, max_epochs]
    max_epochs: int
    slow_model: str = ""  # on a CPU slower than slow_images_per_s with `model`: this one instead
    slow_images_per_s: float = 0.0


RULES = (
    Rule("small data", 5000, "resnet18", 64, 128, 128, "small-data", SMALL_DATA, 50_000, 10, 200),
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
HEADER_SAMPLE = 256  # image headers read for the median size


@dataclass(frozen=True)
class DataFacts:
    """What the recipe knows about the data set (after the split)."""

    train_images: int
    val_images: int
    classes: int
    median_short_side: int | None  # None: no header could be read
    headers_read: int = 0


@dataclass
class RecipeChoice:
    """What was picked and why (printed, recorded in config.yaml and metrics.jsonl)."""

    rule: str
    recipe: str
    model: str
    width: int
    image_size: int
    values: dict
    epochs: int
    images_per_s: float
    epoch_s: float
    facts: DataFacts
    device: str
    cap_s: float
    uncapped_epochs: int
    budget_s: float = 0.0
    slow_note: str = ""

    def config_values(self) -> dict[str, Any]:
        """The dotted config keys this choice sets."""
        picked = {
            "model.name": self.model,
            "model.width": self.width,
            "data.image_size": self.image_size,
            **self.values,
        }
        return picked if self.budget_s else {**picked, "train.epochs": self.epochs}

    def lines(self) -> list[str]:
        """One line, two when the cap lowered the epochs."""
        v, f = self.values, self.facts
        extras = [v["data.augment"]] + [
            f"{name} {v[key]}"
            for name, key in (
                ("mixup", "data.mixup"),
                ("cutmix", "data.cutmix"),
                ("erasing", "data.random_erasing"),
            )
            if v[key]
        ]
        epochs = (
            f"epochs fitted to the --time {format_seconds(self.budget_s)} budget"
            if self.budget_s
            else f"{self.epochs} epochs ≈ {format_seconds(self.epochs * self.epoch_s)}"
        )
        median = f"median image {f.median_short_side} px" if f.median_short_side else "image sizes unread"
        first = (
            f"auto recipe: {self.model} width {self.width} at {self.image_size} px, {self.recipe} "
            f"augmentation ({', '.join(extras)}), {epochs} at {self.images_per_s:.0f} img/s "
            f"measured{self.slow_note} — "
            f"{f.train_images} train images in {f.classes} classes ({self.rule}), {median}; give "
            f"--model/--image-size/--epochs or --config to choose yourself (or --set train.auto_recipe=false)"
        )
        if self.epochs >= self.uncapped_epochs or self.budget_s:
            return [first]
        device, cap = self.device.upper() if self.device == "cpu" else self.device, format_seconds(self.cap_s)
        within = (
            f" to stay within {cap} on this {device}"
            if self.epochs * self.epoch_s <= self.cap_s
            else f", the floor, still over the {cap} cap on this {device} (a smaller --model or "
            f"--image-size is faster)"
        )
        return [
            first,
            f"auto recipe: lowered to {self.epochs} epochs{within} ({self.uncapped_epochs} epochs would "
            f"take ≈ {format_seconds(self.uncapped_epochs * self.epoch_s)}); ask for more with --epochs N "
            f"or --time DURATION",
        ]

    def record(self) -> dict:
        """The metrics.jsonl record: the choice, the measurements and the facts it came from."""
        return {
            "rule": self.rule,
            "recipe": self.recipe,
            "values": self.config_values(),
            "images_per_s": round(self.images_per_s, 1),
            "epoch_s": round(self.epoch_s, 2),
            "cap_s": self.cap_s,
            "uncapped_epochs": self.uncapped_epochs,
            "budget_s": self.budget_s,
            "device": self.device,
            "reasons": self.lines(),
            **asdict(self.facts),
        }


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


def choose_recipe(
    facts: DataFacts, device: str, measure: Callable[[str, int, int], float], budget_s: float = 0.0
) -> RecipeChoice:
    """The rules of the module docstring as a function of the data (facts), the device type ("cpu", "cuda",
    ...) and measure(model, width, image_size) -> training images per second on this machine."""
    rule = pick_rule(facts.train_images)
    size = image_size_for(
        rule.image_size if device == "cuda" else rule.cpu_image_size, facts.median_short_side
    )
    model, speed, slow_note = rule.model, measure(rule.model, rule.width, size), ""
    if device != "cuda" and rule.slow_model and speed < rule.slow_images_per_s:
        slow_note = f" ({rule.model}: {speed:.0f} img/s, under {rule.slow_images_per_s:g} on this CPU)"
        model, speed = rule.slow_model, measure(rule.slow_model, rule.width, size)
    epoch_s = (facts.train_images + VAL_COST * facts.val_images) / max(speed, 1e-9)
    cap_s = CAP_S.get(device, CPU_CAP_S)
    wanted = epochs_for(rule, facts.train_images)
    fits = max(MIN_EPOCHS, int(cap_s // max(epoch_s, 1e-9)))
    epochs = wanted if budget_s else min(wanted, fits)
    return RecipeChoice(
        rule.name,
        rule.recipe,
        model,
        rule.width,
        size,
        dict(rule.values),
        epochs,
        speed,
        epoch_s,
        facts,
        device,
        cap_s,
        wanted,
        budget_s,
        slow_note,
    )


def median_short_side(paths: list[str], limit: int = HEADER_SAMPLE) -> tuple[int | None, int]:
    """(median short side, headers read) over at most limit evenly spaced files; unreadable ones are skipped
    (the loader reports bad files later)."""
    step = max(1, len(paths) // limit)
    sides = []
    for path in paths[::step][:limit]:
        try:
            with Image.open(path) as image:  # reads the header only
                sides.append(min(image.size))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return (int(statistics.median(sides)) if sides else None), len(sides)


def recipe_blocker(explicit: ExplicitSettings | None, enabled: bool) -> str:
    """Why the auto recipe does not apply ("" when it does)."""
    if explicit is None:
        return "the caller built the config"
    if not enabled:
        return "train.auto_recipe=false"
    if explicit.config_file:
        return f"--config {explicit.config_file}"
    given = sorted(explicit.keys & RECIPE_KEYS)
    return f"{given[0]} given" if given else ""


def apply_recipe(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of cfg with the dotted keys set (type-checked as --set is)."""
    cfg = copy.deepcopy(cfg)
    for key, value in values.items():
        set_value(cfg, key, value, source="auto recipe")
    return cfg


def saved_recipe(cfg: Config, run_dir: Path) -> Config:
    """cfg with the recipe keys of a run directory's config.yaml: a resumed run keeps what was picked for it
    and measures nothing (engine/plan.py calls it before comparing the settings with the checkpoint's)."""
    saved = flatten(load_yaml(run_dir / "config.yaml"))
    return apply_recipe(cfg, {k: v for k, v in saved.items() if k in RECIPE_KEYS})


def pick_for_data(cfg: Config, splits: Splits, device_name: str | None = None) -> RecipeChoice:
    """The auto recipe for these splits on this machine (engine/plan.py applies its config_values). Under
    torchrun every rank takes rank 0's choice."""
    median, read = median_short_side(splits.train.paths)
    facts = DataFacts(len(splits.train), len(splits.val), len(splits.classes), median, read)
    ctx = build_context(cfg.train, device_name)

    def measure(name: str, width: int, size: int) -> float:
        return measure_images_per_s(cfg, name, width, size, max(2, facts.classes), device_name)

    choice = choose_recipe(facts, ctx.device.type, measure, parse_duration(cfg.train.time_budget))
    return distributed.gather_objects(choice)[0]


# The batch both recipes train with (SMALL_DATA, CROP_FLIP): per-image speed depends on it. Timed at 16, a
# ResNet-18 at 128 px read 68 img/s on the Xeon-AMX where its run at 64 trained at about 105 (a 1.6x too long
# estimate, and a cap that bit too early).
MEASURE_BATCH = SMALL_DATA["train.batch_size"]


def measure_images_per_s(
    cfg: Config, name: str, width: int, image_size: int, num_classes: int, device_name: str | None
) -> float:
    """Training images per second of this model at this size with the run's precision, optimizer and loss, on
    random tensors, with a throwaway model (prepare_run seeds every RNG afterwards, so the run is
    unaffected)."""
    probe_cfg = apply_recipe(cfg, {"model.name": name, "model.width": width})
    # The shapes are what costs time, not the weights; and no SyncBatchNorm, whose steps would wait on the
    # others.
    probe_train = dataclasses.replace(cfg.train, pretrained="", sync_bn=False)
    ctx = build_context(probe_train, device_name)
    model = build_model(probe_cfg.model, probe_train, num_classes, ctx)
    optimizer, loss_fn = build_optimizer(model, cfg.optim), build_loss(cfg.loss, num_classes).to(ctx.device)
    step = StepRecipe(model, optimizer, loss_fn, ctx, image_size, num_classes)
    time_batch(step, 2)  # one-time costs, untimed
    return time_batch(step, MEASURE_BATCH)
