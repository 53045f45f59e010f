"""The search space of `resnetcls tune`: config keys -> Optuna distributions, as YAML-able data.

A space is a mapping from a dotted config key (the keys `--set` takes) to one of
  {type: float, low: L, high: H, log: true|false}      (log: sample log-uniformly, for rates)
  {type: int, low: L, high: H, step: S, log: false}
  {type: categorical, choices: [a, b, ...]}
`--space space.yaml` replaces DEFAULT_SPACE; a key given on the command line (a flag or --set) is fixed
and left out of the search. Every problem is one UserError naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..config import Config, set_value
from ..errors import UserError

# Learning rate (log-uniform), weight decay, label smoothing, augmentation strength (the lower bound of
# random-resized-crop's area: smaller crops are stronger), image size and model depth.
DEFAULT_SPACE: dict[str, dict] = {
    "optim.lr": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
    "optim.weight_decay": {"type": "float", "low": 1e-5, "high": 0.1, "log": True},
    "loss.label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
    "data.min_crop_scale": {"type": "float", "low": 0.08, "high": 1.0},
    "data.image_size": {"type": "categorical", "choices": [128, 160, 224]},
    "model.name": {"type": "categorical", "choices": ["resnet18", "resnet34", "resnet50"]},
}

FIELDS = {"float": {"low", "high", "log"}, "int": {"low", "high", "step", "log"}, "categorical": {"choices"}}


def load_space(path: str | Path | None) -> dict[str, dict]:
    """The space in path (YAML), or DEFAULT_SPACE; checked (check_space)."""
    if path is None:
        return check_space(DEFAULT_SPACE, "default space")
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: search space file not found") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(tree, dict) or not tree:
        raise UserError(
            f"{path}: a search space is a non-empty mapping of config keys, e.g. "
            "optim.lr: {type: float, low: 1e-4, high: 1e-1, log: true}"
        )
    return check_space(tree, str(path))


def _number(where: str, name: str, value, kind) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not isinstance(value, int))
    ):
        raise UserError(
            f"{where}: {name} must be {'an integer' if kind is int else 'a number'}, got {value!r}"
        )
    return value


def check_entry(key: str, spec, source: str) -> dict:
    """One entry of a space, checked: known config key, known type and fields, values the config accepts."""
    where = f"{source}: {key}"
    if not isinstance(spec, dict) or spec.get("type") not in FIELDS:
        raise UserError(f"{where}: expected a mapping with type float, int or categorical, got {spec!r}")
    kind = spec["type"]
    unknown = sorted(set(spec) - FIELDS[kind] - {"type"})
    if unknown:
        raise UserError(
            f"{where}: unknown field {unknown[0]!r} for type {kind} (allowed: "
            f"{', '.join(sorted(FIELDS[kind]))})"
        )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: choices must be a non-empty list, got {choices!r}")
        samples = choices
    else:
        if "low" not in spec or "high" not in spec:
            raise UserError(f"{where}: type {kind} needs low and high")
        number = int if kind == "int" else float
        low, high = (_number(where, n, spec[n], number) for n in ("low", "high"))
        if not low <= high:
            raise UserError(f"{where}: low ({low}) must not exceed high ({high})")
        if not isinstance(spec.get("log", False), bool):
            raise UserError(f"{where}: log must be true or false, got {spec['log']!r}")
        if spec.get("log") and low <= 0:
            raise UserError(f"{where}: log: true needs low > 0, got {low}")
        if "step" in spec:
            _number(where, "step", spec["step"], int)
        samples = [low, high]
    for value in samples:  # the config's own checks: unknown key or wrong type name the key
        set_value(Config(), key, value, source=source)
    return dict(spec)


def check_space(tree: dict, source: str) -> dict[str, dict]:
    """Every entry of tree checked (check_entry); the space as plain data."""
    return {str(key): check_entry(str(key), spec, source) for key, spec in tree.items()}


def without_fixed(space: dict[str, dict], fixed: set[str]) -> tuple[dict[str, dict], list[str]]:
    """The space minus the keys the user fixed on the command line, and those keys (sorted)."""
    dropped = sorted(k for k in space if k in fixed)
    return {k: v for k, v in space.items() if k not in fixed}, dropped


def suggest(trial, space: dict[str, dict]) -> dict:
    """One point of the space, sampled through an Optuna trial (its parameter names are the config keys)."""
    params = {}
    for key, spec in space.items():
        if spec["type"] == "float":
            params[key] = trial.suggest_float(key, spec["low"], spec["high"], log=spec.get("log", False))
        elif spec["type"] == "int":
            params[key] = trial.suggest_int(
                key, spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False)
            )
        else:
            params[key] = trial.suggest_categorical(key, spec["choices"])
    return params
