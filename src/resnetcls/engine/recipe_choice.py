"""What the auto recipe (engine/recipe.py) works from and what it chose: the rules' rows, the facts about the
data, and the choice with the lines a user reads about it (what came from the user, what was chosen and why).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .budget import format_seconds

MIN_STEPS, MIN_BATCH = 4, 8  # small data: at least this many steps an epoch, batches not below this


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
        given = ", ".join(f"{key}={value}" for key, value in sorted(self.given.items())) or "nothing"
        source = f" (with --config {self.config_file})" if self.config_file else ""
        first = (
            f"auto recipe: from you{source}: {given}; chosen: {'; '.join(self.chosen_parts()) or 'nothing'}"
            " (train.auto_recipe=false: the config as given)"
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
        if "ckpt.keep_last" in chosen:
            parts.append(f"keeps the last and the best checkpoints only (ckpt.keep_last=1: {self.rule.name})")
        return parts

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
