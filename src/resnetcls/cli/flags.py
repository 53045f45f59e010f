"""The argparse types that check numbers and durations, and the training flags of config/flags.py's table
added to a subcommand's parser (train, tune, lr-find, lifelong take theirs from there, as the Python API
does)."""

from __future__ import annotations

import argparse
import math
import typing

from ..config import parse_duration, recipe_names
from ..config.flags import Flag, flags_of


def number(kind=int, low: float = 1, high: float = math.inf, low_open: bool = False):
    """An argparse type: a finite `kind` within [low, high] ((low, high] with low_open); argparse then exits 2
    naming the flag, e.g. "argument --topk: must be at least 1, got -1"."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
            bound = (
                f"between {low:g} and {high:g}"
                if high < math.inf
                else f"greater than {low:g}"
                if low_open
                else f"at least {low:g}"
            )
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def duration(text: str) -> str:
    """An argparse type for --time: '90s', '20m', '1.5h' or 0 (off), kept as typed (config.parse_duration)."""
    try:
        parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}, got {text!r}") from None
    return text


def or_auto(parse: typing.Callable) -> typing.Callable:
    """parse, or the word 'auto' as it is (--batch-size auto, --lr auto: train's auto recipe picks them)."""

    def parse_or_auto(text: str):
        return "auto" if text == "auto" else parse(text)

    parse_or_auto.__name__ = parse.__name__
    return parse_or_auto


SIZE = number(int, 8, 4096)  # image sides (limits.MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
POSITIVE = number(int, 1)
SEED = number(int, 0, 2**32 - 1)
LR = number(float, 0, 10, low_open=True)
SWEEP_LR = number(float, 0, 1e6, low_open=True)
BATCH = number(int, 1, 1 << 16)  # images per model call of eval, predict, rank
# How the command line reads each kind of the table (config/flags.py KINDS).
KIND_TYPES = {
    "text": str,
    "path": str,
    "count": POSITIVE,
    "count0": number(int, 0),
    "size": SIZE,
    "seed": SEED,
    "lr": LR,
    "duration": duration,
    "choice": str,
    "switch": bool,  # --name / --no-name (argparse.BooleanOptionalAction)
}


def add_flag(parser: argparse.ArgumentParser, flag: Flag) -> None:
    """One row of the table as an option; its default None means "not given" (the config decides)."""
    if flag.kind == "switch":
        parser.add_argument(
            flag.option, dest=flag.name, action=argparse.BooleanOptionalAction, help=flag.help
        )
        return
    parse = KIND_TYPES[flag.kind]
    parser.add_argument(
        flag.option,
        dest=flag.name,
        type=or_auto(parse) if flag.auto else parse,
        choices=flag.choices or None,
        metavar=flag.metavar,
        help=flag.help,
    )


def add_table_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """Every flag of the table that `command` takes, in table order."""
    for flag in flags_of(command):
        add_flag(parser, flag)


def add_config_flags(parser: argparse.ArgumentParser, example: str) -> None:
    """--config NAME|FILE and --set KEY=VALUE (repeatable, into args.overrides), as every command built on the
    config has."""
    names = ", ".join(recipe_names())
    parser.add_argument(
        "--config",
        metavar="NAME|FILE",
        help=f"a packaged recipe ({names}) or a YAML file, e.g. {example} (default: none)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a config key, e.g. --set optim.lr=0.01 (repeatable; default: none)",
    )


def table_values(args: argparse.Namespace, command: str) -> dict[str, typing.Any]:
    """The parsed values of `command`'s table flags, {name: value} (None: not given), for flag_settings or the
    Python API's train(**flags)."""
    return {flag.name: getattr(args, flag.name) for flag in flags_of(command)}
