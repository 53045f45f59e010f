"""The configuration tree: defaults, then a YAML file, then `--set a.b=value`, then explicit flags, then the
RESNETCLS_SET environment variable (environment.py) where the command reads it.

Unknown keys and wrong types are UserErrors that name the key (and the closest valid one). schema.py holds the
dataclasses, checks.py the ranges and choices. Functions elsewhere take the sub-config they need (cfg.data,
cfg.optim, ...), never the whole tree.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from ..utils.redact import mask_secrets
from .checks import CHOICES, RANGES, SIZE_OR_ZERO, parse_duration, validate_config
from .environment import ENV_NAME, environment_note, environment_overrides
from .recipes import recipe_names, resolve_config_file
from .schema import (
    CkptConfig,
    Config,
    DataConfig,
    DistillConfig,
    EvalConfig,
    LifelongConfig,
    LogConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    SchedConfig,
    ServeConfig,
    TrainConfig,
    config_to_dict,
    flatten,
)

__all__ = [
    "CHOICES",
    "CkptConfig",
    "Config",
    "DataConfig",
    "DistillConfig",
    "EvalConfig",
    "ExplicitSettings",
    "LifelongConfig",
    "LogConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "RANGES",
    "SIZE_OR_ZERO",
    "SchedConfig",
    "ServeConfig",
    "TrainConfig",
    "build_config",
    "config_from_dict",
    "config_to_dict",
    "dump_yaml",
    "environment_overrides",
    "explicit_settings",
    "load_yaml",
    "parse_duration",
    "recipe_names",
    "renamed",
    "resolve_config_file",
    "result_affecting_changes",
    "set_value",
    "validate_config",
]


# Keys that have a new name: a config file, --set or a saved run that uses the old one still works.
RENAMED_KEYS = {"train.amp": "train.precision"}


def renamed(key: str, source: str = "") -> str:
    """key under its current name; with a source (a config file, --set), a one-line note on stderr when the
    key was renamed, so the user can update it."""
    new = RENAMED_KEYS.get(key)
    if new is None:
        return key
    if source:
        print(f"{key} is now {new}; {source}: read as {new} (write {new} there)", file=sys.stderr)
    return new


def _all_keys(obj: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys += _all_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _unknown_key(key: str, cfg: Config, source: str) -> UserError:
    close = difflib.get_close_matches(key, _all_keys(cfg), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return UserError(f"{source}: unknown config key {key!r}{hint}")


# Text keys that take the word "off": YAML reads `--set eval.open_set=off` as false.
WORD_KEYS = ("eval.open_set", "serve.open_set")


def _coerce(key: str, value: Any, current: Any, source: str) -> Any:
    """Check value against the type of the default it replaces; ints are accepted for floats."""
    expected = type(current)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
        except ValueError:
            pass
    if expected is float and isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{source}: config key {key!r} must be a finite number, got {value!r}")
    if expected is list and isinstance(value, (list, tuple)):
        return list(value)
    if expected is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if expected is str and isinstance(value, bool) and key in WORD_KEYS:
        return "on" if value else "off"  # YAML 1.1 reads the words off/on (and no/yes) as false/true
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise UserError(
        f"{source}: config key {key!r} expects {expected.__name__}, got {mask_secrets(repr(value))}"
    )


def set_value(cfg: Config, key: str, value: Any, source: str = "--set") -> None:
    """Set a dotted key (e.g. 'optim.lr', or its old name: RENAMED_KEYS) on the tree, checking that it exists
    and its type."""
    key = renamed(key)
    node: Any = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        child = getattr(node, part, None) if dataclasses.is_dataclass(node) else None
        if not dataclasses.is_dataclass(child):
            raise _unknown_key(key, cfg, source)
        node = child
    leaf = parts[-1]
    if (
        not dataclasses.is_dataclass(node)
        or leaf not in {f.name for f in dataclasses.fields(node)}
        or dataclasses.is_dataclass(getattr(node, leaf))
    ):
        raise _unknown_key(key, cfg, source)
    setattr(node, leaf, _coerce(key, value, getattr(node, leaf), source))


def load_yaml(path: str | Path) -> dict:
    """Read a config YAML file as a nested dict; errors name the file."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise UserError(f"{path}: a config file must be a mapping of sections")
    return tree


def parse_override(text: str) -> tuple[str, Any]:
    """'a.b=value' -> ('a.b', parsed value); the value is read as YAML (numbers, true/false, lists)."""
    if "=" not in text:
        raise UserError(f"--set {mask_secrets(repr(text))}: expected KEY=VALUE, e.g. --set optim.lr=0.01")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def build_config(
    config_file: str | None = None,
    overrides: typing.Sequence[str] = (),
    flags: dict[str, Any] | None = None,
    base: dict | None = None,
    environment: typing.Sequence[str] = (),
) -> Config:
    """Defaults <- YAML file <- --set overrides <- explicit flags (those that are not None) <- environment.

    config_file: a path, or a packaged recipe's name ("small-data": config/recipes.py). base, when given (a
    run's saved config, for `train --resume RUN_DIR` without DATA), replaces the defaults. environment: the
    KEY=VALUE pairs of RESNETCLS_SET (environment_overrides()), checked as --set's are and applied last;
    when there are any, a note on stderr names them.
    """
    cfg = config_from_dict(base, "saved run config") if base is not None else Config()
    if config_file:
        path = resolve_config_file(config_file)
        for key, value in flatten(load_yaml(path)).items():
            set_value(cfg, renamed(key, str(path)), value, source=str(path))
    for text in overrides:
        key, value = parse_override(text)
        set_value(cfg, renamed(key, "--set"), value, source="--set")
    for key, value in (flags or {}).items():
        if value is not None:
            set_value(cfg, key, value, source="command line")
    for text in environment:
        key, value = parse_override(text)
        set_value(cfg, renamed(key, ENV_NAME), value, source=ENV_NAME)
    if environment:
        print(environment_note(environment), file=sys.stderr)
    validate_config(cfg)
    return cfg


@dataclass(frozen=True)
class ExplicitSettings:
    """What the user chose themselves on top of the defaults: a config file, and the dotted keys given by
    --set or a flag. The auto recipe (engine/recipe.py) keeps the recipe choices among them."""

    config_file: str = ""
    keys: frozenset = frozenset()


def explicit_settings(
    config_file: str | None = None,
    overrides: typing.Sequence[str] = (),
    flags: dict[str, Any] | None = None,
    environment: typing.Sequence[str] = (),
) -> ExplicitSettings:
    """The keys build_config(config_file, overrides, flags, environment=environment) sets explicitly (flags
    that are None are not set): the one place the CLI and the Python API tell train() what the user chose."""
    keys = {renamed(parse_override(text)[0]) for text in [*overrides, *environment]}
    keys |= {key for key, value in (flags or {}).items() if value is not None}
    return ExplicitSettings(str(config_file or ""), frozenset(keys))


def config_from_dict(tree: dict, source: str = "config") -> Config:
    cfg = Config()
    for key, value in flatten(tree).items():
        set_value(cfg, key, value, source=source)
    return cfg


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


# Keys that may differ between a run and its resumption without changing what it computes (a resumed run
# never re-picks its recipe, whatever train.auto_recipe says; eval.* is what happens after the last epoch).
RESUME_SAFE_KEYS = (
    "train.device",
    "train.compile",
    "train.auto_recipe",
    "train.dist_timeout_s",
    "data.num_workers",
    "data.on_bad",
    "data.cache_max_gb",
    "data.worker_start",
    "train.nonfinite",
    "ckpt.",
    "log.",
    "eval.",
    "serve.",
)


def result_affecting_changes(saved: dict, current: Config) -> list[str]:
    """'key: old -> new' for every setting that differs from a checkpoint's config and changes the result."""
    # A key the saved config lacks was added since it was written: it ran as that key's default does.
    saved_flat = {renamed(key): value for key, value in flatten(saved).items()}
    old = {**flatten(config_to_dict(Config())), **saved_flat}
    new, changes = flatten(config_to_dict(current)), []
    for key in sorted(set(old) | set(new)):
        if key.startswith(RESUME_SAFE_KEYS):
            continue
        a, b = old.get(key), new.get(key)
        if key in ("data.train", "data.val") and a and b:
            a, b = str(Path(a).resolve()), str(Path(b).resolve())  # same data, however the path was typed
        if a != b:
            changes.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return changes
