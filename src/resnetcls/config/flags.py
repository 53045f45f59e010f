"""The one table of the training flags: flag, config key, how the command line reads it, help, and which
commands take it. `resnetcls train`, tune, lr-find and lifelong build their argparse flags from it
(cli/flags.py) and the Python API's train(...) checks and maps its keywords with it, so both accept the same
names.

A flag's keyword is its name with "_" for "-": --batch-size is batch_size=. None means the flag was not given
(the auto recipe, the config file or the defaults decide)."""

from __future__ import annotations

import os
import textwrap
import typing
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from .checks import CHOICES

TRAIN_FAMILY = ("train", "tune", "lr-find", "lifelong")
# How the command line reads a value (cli/flags.py has the argparse type of each):
KINDS = ("text", "path", "count", "count0", "size", "seed", "lr", "duration", "choice", "switch")


@dataclass(frozen=True)
class Flag:
    """One row of the table: name (the keyword; the flag is --name with "-" for "_"), the config key it sets,
    its kind (KINDS), help, the commands that take it, choices (kind "choice"), the metavar, and auto: "auto"
    is accepted and leaves the key to train's auto recipe (train only)."""

    name: str
    key: str
    kind: str
    help: str
    commands: tuple[str, ...] = TRAIN_FAMILY
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    auto: bool = False

    @property
    def option(self) -> str:
        """The command-line flag, e.g. --batch-size."""
        return "--" + self.name.replace("_", "-")


BATCH_HELP = (
    "batch size (default train.batch_size, 32), or auto (train only): on a CPU the most images/s among 16, "
    "32, 64, 128 (a few timed steps each); on a CUDA GPU the largest that fits its memory (tried with real "
    "steps, 90%% of it, a multiple of 8), with train.grad_accum_steps raised to keep the recipe's batch "
    "where memory is short; config.yaml records the choice"
)
FLAGS: tuple[Flag, ...] = (
    Flag(
        "val",
        "data.val",
        "path",
        "separate validation DATA (kept out of lr-find's sweep; default: a hold-out of DATA)",
        ("train", "tune", "lr-find"),
        metavar="DATA",
    ),
    Flag(
        "model",
        "model.name",
        "text",
        "resnet18|34|50|101|152 (default: train's auto recipe picks it, else model.name, resnet50)",
    ),
    Flag(
        "epochs",
        "train.epochs",
        "count",
        "training epochs, per task in lifelong (default: train's auto recipe picks them, capped at 30 min on "
        "a CPU, 4 h on a GPU; else train.epochs, 10)",
        ("train", "tune", "lifelong"),
    ),
    Flag(
        "time",
        "train.time_budget",
        "duration",
        "fit the whole schedule to this wall-clock time, e.g. 90s, 20m, 1.5h: a short measurement at the "
        "start chooses --epochs (train.time_budget; default 0 = off)",
        ("train",),
        metavar="DURATION",
    ),
    Flag("batch_size", "train.batch_size", "count", BATCH_HELP, metavar="B|auto", auto=True),
    Flag(
        "image_size",
        "data.image_size",
        "size",
        "training input size in px (default: train's auto recipe picks it, else data.image_size, 224)",
    ),
    Flag(
        "lr",
        "optim.lr",
        "lr",
        "learning rate (default optim.lr, 0.002), or auto (train only): a short LR range test (see lr-find) "
        "picks it first and leaves its curve (lr_find.json/.csv/.png) in the run and its report",
        ("train", "tune", "lifelong"),
        metavar="LR|auto",
        auto=True,
    ),
    Flag(
        "auto_recipe",
        "train.auto_recipe",
        "switch",
        "the auto recipe chooses what you left open from the data and this machine (default: on); "
        "--no-auto-recipe trains with the config as given (train.auto_recipe=false)",
        ("train",),
    ),
    Flag("device", "train.device", "text", "auto|cpu|cuda|cuda:N (default auto: the GPU when there is one)"),
    Flag("seed", "train.seed", "seed", "seed of the split, the order and the augmentation (default 0)"),
    Flag(
        "pretrained",
        "train.pretrained",
        "path",
        "initial weights: a torchvision/timm ResNet state_dict (.safetensors, or .pth read with "
        "weights_only=True), or 'torchvision' to download them (default: none, from scratch)",
        ("train", "tune", "lr-find"),
        metavar="PATH",
    ),
    Flag(
        "precision",
        "train.precision",
        "choice",
        "training precision: auto (bf16 + channels_last where this CPU/GPU computes bf16 natively, else "
        "fp32), bf16, fp16 (with a gradient scaler) or fp32 (default train.precision, auto)",
        choices=CHOICES["train.precision"],
    ),
    Flag(
        "unknown",
        "eval.open_set_unknown",
        "path",
        "a folder of images of things that are none of the classes: the open-set threshold (predict's "
        "'unknown' answer) is then the one that best tells them from the val images, instead of the one "
        "accepting eval.open_set_accept of the val images (default: none)",
        ("train",),
        metavar="FOLDER",
    ),
    Flag(
        "teacher",
        "distill.teacher",
        "path",
        "distil from this trained model (a model or run directory of the same classes, in the same order): "
        "the loss mixes the task loss with the KL divergence to the teacher's softened outputs "
        "(distill.alpha, 0.5; distill.temperature, 4) (default: none)",
        ("train",),
        metavar="MODEL_DIR",
    ),
    Flag(
        "tasks",
        "lifelong.tasks",
        "text",
        "CSV column whose values are the tasks, or 'batches' for OpenLORIS batchK folders (default: one "
        "task per DATA)",
        ("lifelong",),
        metavar="COLUMN|batches",
    ),
    Flag(
        "order",
        "lifelong.order",
        "text",
        "task values in training order; 'a-b' is a numeric range, e.g. 0-115,120-235,240-355 (default: "
        "sorted)",
        ("lifelong",),
        metavar="V1,V2,...",
    ),
    Flag(
        "bins",
        "lifelong.bins",
        "count",
        "cut a numeric --tasks column into N ranges (default: off)",
        ("lifelong",),
        metavar="N",
    ),
    Flag(
        "strategy",
        "lifelong.strategy",
        "choice",
        "how to fight forgetting (default lifelong.strategy, naive: plain fine-tuning)",
        ("lifelong",),
        choices=CHOICES["lifelong.strategy"],
    ),
    Flag(
        "buffer_size",
        "lifelong.buffer_size",
        "count0",
        "replay buffer size (default lifelong.buffer_size, 200)",
        ("lifelong",),
        metavar="IMAGES",
    ),
)
BY_NAME = {flag.name: flag for flag in FLAGS}


def flags_of(command: str) -> list[Flag]:
    """The table's flags that `command` takes, in table order."""
    return [flag for flag in FLAGS if command in flag.commands]


def check_names(names: typing.Iterable[str], command: str, others: typing.Sequence[str] = ()) -> None:
    """A UserError naming the first name that is not one of `command`'s flags (nor of `others`: the Python
    API's own keywords) and listing the known ones, as Python's TypeError would."""
    known = [*others, *(flag.name for flag in flags_of(command))]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise UserError(f"{command}: unknown keyword {unknown[0]!r}; the known ones are {', '.join(known)}")


def flag_settings(values: typing.Mapping[str, Any], command: str = "train") -> dict[str, Any]:
    """{flag name: value} (the API's keywords, or the parsed command line) -> {config key: value} for
    build_config; a value of None is a flag not given. "auto" for an auto flag (train only) becomes None: the
    key is left to the auto recipe (train's lr_auto/batch_auto). An unknown name is a UserError (check_names).
    """
    check_names(values, command)
    settings = {}
    for name, value in values.items():
        flag = BY_NAME[name]
        if value == "auto" and flag.auto:
            if command != "train":
                raise UserError(f"{flag.option} auto: not in {command} (only train picks it; give a value)")
            value = None
        elif flag.kind == "path" and value is not None:
            value = os.fspath(value)
        settings[flag.key] = value
    return settings


def flag_doc(command: str = "train") -> str:
    """The flags of `command` as docstring lines: "name: help [config key]", wrapped."""
    return "\n".join(
        textwrap.fill(
            f"{flag.name}: {flag.help.replace('%%', '%')} [{flag.key}]",
            width=110,
            initial_indent="    ",
            subsequent_indent="        ",
        )
        for flag in flags_of(command)
    )
