"""What the auto recipe (engine/recipe.py) works from and what it chose: the rules' rows, the facts about the
data, and the choice with the lines a user reads about it (what came from the user, what was chosen and why).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from ..config import ExplicitSettings
from ..errors import UserError
from ..models import weights as imagenet
from .budget import format_seconds

MIN_STEPS, MIN_BATCH = 4, 8  # small data: at least this many steps an epoch, batches not below this
FINETUNE_WIDTH = 64  # torchvision's ImageNet weights are for width 64
HEADER_SAMPLE = 256  # image headers read for the median size
# The auto recipe keeps the whole frame (data.resize=squash) when the training images' median long side /
# short side is above this: crop mode's centre square would cut off a third of such frames. Squash, not
# letterbox: on 2:1 frames letterbox spent half the input on padding and was the least accurate
# (docs/benchmarks.md).
WHOLE_FRAME_ASPECT = 1.5
OFFLINE_ENV = "RESNETCLS_OFFLINE"  # =1: never look for download.pytorch.org (no wait when offline)
# The class balance: over IMBALANCED (largest / smallest training class) the recipe turns on BALANCE, the
# variant measured best on long-tailed data (bench/imbalance.py), unless a BALANCE_KEYS key was given.
IMBALANCED = 3.0
BALANCE_KEYS = frozenset({"data.sampler", "loss.class_weights"})
BALANCE = {"data.sampler": "balanced"}
BALANCE_NAMES = {
    "loss.class_weights": "balanced class weights in the loss",
    "data.sampler": "the balanced sampler, each class drawn equally often",
}


class ImageNetWeights:
    """has_weights for the auto recipe: arch's ImageNet file in the cache, else downloaded now (hash-checked,
    progress on stderr) when download.pytorch.org answers; that is checked once, within can_download's 3 s,
    and not at all with RESNETCLS_OFFLINE=1. probe(arch) says whether they could be had without downloading;
    notes[arch] says where they came from ("downloaded now") or why there are none."""

    def __init__(self) -> None:
        self.online: bool | None = None  # None: not checked
        self.notes: dict[str, str] = {}

    def reachable(self) -> bool:
        if os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0"):
            return False
        if self.online is None:
            self.online = imagenet.can_download()
        return self.online

    def cached(self, arch: str) -> Path | None:
        return imagenet.imagenet_weights_available(arch)

    def probe(self, arch: str) -> bool:
        return bool(self.cached(arch)) or (arch in imagenet.IMAGENET_WEIGHTS and self.reachable())

    def __call__(self, arch: str) -> Path | None:
        cached = imagenet.imagenet_weights_available(arch)
        if cached or arch not in imagenet.IMAGENET_WEIGHTS or not self.reachable():
            if not cached and self.online is False:
                host = imagenet.DOWNLOAD_HOST
                self.notes[arch] = f"offline: {host} did not answer; set {OFFLINE_ENV}=1 to skip this check"
            return cached
        try:
            path, _ = imagenet.download(arch)
        except (UserError, OSError) as e:
            reason = str(e).split("; ")[0].removeprefix(f"ImageNet weights for {arch}: ")
            self.notes[arch] = reason if reason.startswith("download of") else f"download failed: {reason}"
            return None
        self.notes[arch] = "downloaded now"
        return path


def fine_tune(
    model: str, given: dict[str, Any], has_weights: Callable[[str], Any], fetch: bool = True
) -> tuple[bool, str]:
    """(fine-tune?, the line that says why): the user's --pretrained, else ImageNet weights (has_weights) for
    the model at the standard width, unless the user chose the optimizer (fine-tuning needs its own). fetch
    False: whether they could be had (has_weights.probe), nothing downloaded."""
    if "train.pretrained" in given:
        return bool(given["train.pretrained"]), pretrained_line(given) if given["train.pretrained"] else ""
    width = given.get("model.width", FINETUNE_WIDTH)
    if width != FINETUNE_WIDTH:
        return False, f"auto recipe: from scratch: ImageNet weights need width 64 (model.width={width} given)"
    mine = sorted(given.keys() & {"optim.name", "optim.lr"})
    if mine and getattr(has_weights, "cached", has_weights)(
        model
    ):  # a from-scratch optimizer of the user's (e.g. --config small-data)
        return False, (
            f"auto recipe: from scratch: you chose {', '.join(mine)} (with ImageNet weights for {model} in "
            "the cache, --pretrained torchvision fine-tunes with them)"
        )
    if mine:
        return False, no_weights_line(model, has_weights)
    if (has_weights if fetch else getattr(has_weights, "probe", has_weights))(model):
        where = getattr(has_weights, "notes", {}).get(model, "cache")
        return True, (
            f"auto recipe: fine-tuning from ImageNet weights ({where}) for {model} "
            "(train.pretrained=torchvision, configs/finetune.yaml's values)"
        )
    return False, no_weights_line(model, has_weights)


def pretrained_line(given: dict[str, Any]) -> str:
    """The line for weights the user named: fine-tuning, with what of theirs is kept."""
    kept = [f"{key}={given[key]}" for key in ("model.width", "optim.name", "optim.lr") if key in given]
    if given.get("model.width", FINETUNE_WIDTH) == FINETUNE_WIDTH:
        kept = [part for part in kept if not part.startswith("model.width")]
    yours = f"; yours kept: {', '.join(kept)}" if kept else ""
    return (
        f"auto recipe: fine-tuning from your weights (train.pretrained={given['train.pretrained']}; "
        f"configs/finetune.yaml's values for the rest{yours})"
    )


def no_weights_line(model: str, has_weights: Callable[[str], Any]) -> str:
    """From scratch for want of weights: why (offline, the download failed), and how to get them."""
    why = getattr(has_weights, "notes", {}).get(model, "")
    return (
        f"auto recipe: from scratch: no ImageNet weights for {model} in the cache{f', {why}' if why else ''} "
        f"(`resnetcls weights download {model}` to fine-tune)"
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
    keep_last: int = 0  # ckpt.keep_last it sets (0: the config's)


@dataclass(frozen=True)
class DataFacts:
    """What the recipe knows about the data set (after the split)."""

    train_images: int
    val_images: int
    classes: int
    median_short_side: int | None  # None: no header could be read
    headers_read: int = 0
    imbalance: float = 1.0  # the largest training class's image count over the smallest's
    median_aspect: float = 1.0  # the median long side / short side (the headers median_short_side reads)

    def with_aspect(self, paths: list[str]) -> DataFacts:
        """These facts with the median aspect ratio of these training files (median_aspect)."""
        return replace(self, median_aspect=median_aspect(paths))

    def resize_choice(self) -> dict[str, Any]:
        """data.resize=squash when the median aspect ratio is over WHOLE_FRAME_ASPECT, else nothing."""
        return {"data.resize": "squash"} if self.median_aspect > WHOLE_FRAME_ASPECT else {}


def class_imbalance(labels: list[int]) -> float:
    """The largest class's count of labels over the smallest's, among the classes that have any (1.0 with
    fewer than two such classes)."""
    counts: dict[int, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return max(counts.values()) / min(counts.values()) if len(counts) > 1 else 1.0


def recipe_blocker(explicit: ExplicitSettings | None, enabled: bool) -> str:
    """Why the auto recipe does not apply ("" when it does)."""
    if explicit is None:
        return "the caller built the config"
    return "" if enabled else "train.auto_recipe=false"


def class_balance(facts: DataFacts, given: dict[str, Any]) -> dict[str, Any]:
    """BALANCE when the training classes are over IMBALANCED and the user gave no BALANCE_KEYS key, else
    nothing."""
    return dict(BALANCE) if facts.imbalance > IMBALANCED and not given.keys() & BALANCE_KEYS else {}


@dataclass
class RecipeChoice:
    """What was picked and why (printed, recorded in config.yaml and metrics.jsonl): chosen, the dotted keys
    the recipe sets; run, every recipe key as the run has it (chosen and given); given, the user's keys."""

    rule: Rule
    chosen: dict[str, Any]
    run: dict[str, Any]
    given: dict[str, Any]
    facts: DataFacts
    device: str
    cap_s: float  # the longest run chosen without being asked, on this device
    recipe_batch: int  # the recipe's batch size before small data halved it
    uncapped_epochs: int = 0
    budget_s: float = 0.0
    images_per_s: float = 0.0  # 0: not measured (nothing depended on it)
    epoch_s: float = 0.0
    slow_note: str = ""
    weights_line: str = ""  # fine-tuning or from scratch, and why
    config_file: str = ""  # --config, whose keys are among given

    @property
    def recipe(self) -> str:
        return "finetune" if self.run.get("train.pretrained") else self.rule.recipe

    def config_values(self) -> dict[str, Any]:
        """The dotted config keys this choice sets."""
        return dict(self.chosen)

    def lines(self) -> list[str]:
        """What came from the user and what was chosen, why; the weights; the cap when it lowered the
        epochs."""
        mine = sorted((key, value) for key, value in self.given.items() if key not in BALANCE_KEYS)
        given = ", ".join(f"{key}={value}" for key, value in mine) or "nothing"
        source = f" (with --config {self.config_file})" if self.config_file else ""
        first = (
            f"auto recipe: from you{source}: {given}; chosen: {'; '.join(self.chosen_parts()) or 'nothing'}"
            " (--no-auto-recipe to turn it off)"
        )
        return [first, *([self.weights_line] if self.weights_line else []), *self.cap_lines()]

    def chosen_parts(self) -> list[str]:
        """The chosen values as a user reads them, each with its reason."""
        run, chosen, facts = self.run, self.chosen, self.facts
        parts = []
        model = " ".join(
            text
            for key, text in (
                ("model.name", run["model.name"]),
                ("model.width", f"width {run['model.width']}"),
                ("data.image_size", f"at {run['data.image_size']} px"),
            )
            if key in chosen
        )
        median = f"median image {facts.median_short_side} px" if facts.median_short_side else "sizes unread"
        if model:
            parts.append(
                f"{model} ({facts.train_images} train images in {facts.classes} classes: {self.rule.name}, "
                f"{median}{self.slow_note})"
            )
        if chosen.keys() & {"data.augment", "data.mixup", "data.cutmix", "optim.name", "optim.lr"}:
            parts.append(f"{self.recipe} recipe ({', '.join(self.recipe_extras())})")
        if "train.batch_size" in chosen:
            parts.append(f"batch {run['train.batch_size']}{self.batch_reason()}")
        if "train.epochs" in chosen or self.budget_s:
            parts.append(self.epochs_text())
        if "data.resize" in chosen:
            parts.append(
                f"{run['data.resize']} (median aspect ratio {facts.median_aspect:.2f}:1, over "
                f"{WHOLE_FRAME_ASPECT}: the whole frame kept instead of its centre square)"
            )
        if "ckpt.keep_last" in chosen:
            parts.append(f"keeps the last and the best checkpoints only (ckpt.keep_last=1: {self.rule.name})")
        parts += [self.balance_text(key) for key in sorted(chosen.keys() & BALANCE_KEYS)]
        return parts

    def balance_text(self, key: str) -> str:
        """The class balance chosen, and why."""
        return (
            f"{BALANCE_NAMES[key]} ({key}={self.run[key]}: the largest training class has "
            f"{self.facts.imbalance:.1f}x the images of the smallest, over {IMBALANCED:g})"
        )

    def recipe_extras(self) -> list[str]:
        run = self.run
        mixing = [
            f"{name} {run[key]}"
            for name, key in (
                ("mixup", "data.mixup"),
                ("cutmix", "data.cutmix"),
                ("erasing", "data.random_erasing"),
            )
            if run.get(key)
        ]
        return [run["data.augment"], *mixing, f"{run['optim.name']} lr {run['optim.lr']:g}"]

    def batch_reason(self) -> str:
        batch, wanted = self.run["train.batch_size"], self.recipe_batch
        if batch == wanted:
            return ""
        return (
            f" ({self.facts.train_images} train images are under {MIN_STEPS} batches of {wanted}: halved to "
            f"{batch}{', the floor' if batch == MIN_BATCH else ''}; the incomplete last batch is dropped, "
            "never a batch of 1 for BatchNorm)"
        )

    def epochs_text(self) -> str:
        if self.budget_s:
            return f"epochs fitted to the --time {format_seconds(self.budget_s)} budget"
        epochs = self.run["train.epochs"]
        capped = " (time cap)" if epochs < self.uncapped_epochs else ""
        return (
            f"{epochs} epochs{capped} ≈ {format_seconds(epochs * self.epoch_s)} at {self.images_per_s:.0f} "
            f"img/s measured"
        )

    def cap_lines(self) -> list[str]:
        """The second line when the cap lowered the epochs."""
        epochs = self.run.get("train.epochs", 0)
        if "train.epochs" not in self.chosen or epochs >= self.uncapped_epochs or self.budget_s:
            return []
        device, cap = self.device.upper() if self.device == "cpu" else self.device, format_seconds(self.cap_s)
        within = (
            f" to stay within {cap} on this {device}"
            if epochs * self.epoch_s <= self.cap_s
            else f", the floor, still over the {cap} cap on this {device} (a smaller --model or "
            f"--image-size is faster)"
        )
        return [
            f"auto recipe: lowered to {epochs} epochs{within} ({self.uncapped_epochs} epochs would "
            f"take ≈ {format_seconds(self.uncapped_epochs * self.epoch_s)}); ask for more with --epochs N "
            f"or --time DURATION"
        ]

    def record(self) -> dict:
        """The metrics.jsonl record: the choice, the measurements and the facts it came from."""
        return {
            "rule": self.rule.name,
            "recipe": self.recipe,
            "values": self.config_values(),
            "given": self.given,
            "images_per_s": round(self.images_per_s, 1),
            "epoch_s": round(self.epoch_s, 2),
            "cap_s": self.cap_s,
            "uncapped_epochs": self.uncapped_epochs,
            "budget_s": self.budget_s,
            "device": self.device,
            "reasons": self.lines(),
            **asdict(self.facts),
        }


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


def median_aspect(paths: list[str], limit: int = HEADER_SAMPLE) -> float:
    """The median long side / short side over the headers median_short_side reads (1.0 when none reads)."""
    step, ratios = max(1, len(paths) // limit), []
    for path in paths[::step][:limit]:
        try:
            with Image.open(path) as image:  # reads the header only
                ratios.append(max(image.size) / max(1, min(image.size)))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return round(statistics.median(ratios), 3) if ratios else 1.0
