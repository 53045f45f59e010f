"""The configuration tree: defaults, then a YAML file, then `--set a.b=value`, then explicit flags.

Unknown keys and wrong types are UserErrors that name the key (and the closest valid one).
Functions elsewhere take the sub-config they need (cfg.data, cfg.optim, ...), never the whole tree.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .limits import (MAX_IMAGE_SIZE, MAX_WIDTH, MEAN_RANGE, MIN_IMAGE_SIZE, STD_RANGE, is_finite_number,
                     rgb_problem)


@dataclass
class ModelConfig:
    name: str = "resnet50"
    stem: str = "imagenet"          # "imagenet" (7x7/2 + maxpool) or "small" (3x3/1 + maxpool)
    stride_on_1x1: bool = False     # paper/seed bottleneck stride placement instead of torchvision's v1.5
    zero_init_residual: bool = True
    width: int = 64                 # channels of the stem and layer1; small values for tiny test models


@dataclass
class DataConfig:
    train: str = ""                 # DATA argument
    val: str = ""                   # optional separate validation DATA
    image_size: int = 224           # training / model input size
    resize_size: int = 0            # eval resize of the short side; 0 = image_size / 0.875
    augment: str = "crop_flip"      # crop_flip (random-resized-crop + flip) | resize (the seed: none) |
                                    # trivialaugment | randaugment (crop_flip, then that per-image policy)
    random_erasing: float = 0.0     # probability of erasing one rectangle per training image; 0 = off
    mixup: float = 0.0              # Mixup's Beta alpha (e.g. 0.2); 0 = off
    cutmix: float = 0.0             # CutMix's Beta alpha (e.g. 1.0); 0 = off; with mixup, one per batch
    min_crop_scale: float = 0.25    # lower bound of random-resized-crop's area scale
    interpolation: str = "bilinear"
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])
    val_fraction: float = 0.1       # stratified hold-out when DATA has no split
    split_by: str = ""              # CSV column whose groups stay on one side of the hold-out
    num_workers: int = -1           # DataLoader workers; -1 = one per core, at most 4
    on_bad: str = "skip"            # bad image during training: "skip" (warn + count) or "fail"
    batches: str = ""               # OpenLORIS layout: batch numbers to use, e.g. "1,2"; "" = all
    color_jitter: float = 0.0       # brightness/contrast/saturation strength for training, e.g. 0.4
    cache: bool = True              # decode each image once into a uint8 memory-mapped cache
    cache_dir: str = ""             # "" = $RESNETCLS_CACHE or ~/.cache/resnetcls
    cache_size: int = 0             # stored short side; 0 = the eval resize (image_size / 0.875)
    sampler: str = "shuffle"        # shuffle | balanced (each class drawn equally often, with replacement)
    cache_max_gb: float = 50.0      # least-recently-used stores are deleted beyond this total; 0 = no limit
    worker_start: str = "auto"      # DataLoader workers: auto (fork on Linux, else spawn) | fork | spawn


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    amp: str = "auto"               # auto | bf16 | fp16 | fp32
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    pretrained: str = ""
    grad_accum_steps: int = 1
    grad_clip_norm: float = 0.0     # 0 = no clipping
    ema_decay: float = 0.0          # exponential moving average of the weights (e.g. 0.999); 0 = off
    sync_bn: bool = False           # torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA)
    dist_timeout_s: float = 300.0   # torchrun: a collective waits at most this long for the other ranks
    nonfinite: str = "stop"         # a NaN/Inf loss: stop (exit 2, last good checkpoint kept) | skip (counted)
    time_budget: str = ""           # e.g. 90s, 20m, 1.5h: epochs chosen to fit the whole schedule; ""/0 = off
    patience: int = 0               # stop after N epochs without an improvement of ckpt.metric; 0 = off


@dataclass
class OptimConfig:
    name: str = "adamw"             # adamw | adam | sgd
    lr: float = 2e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    decay_norm_and_bias: bool = False  # False: no weight decay on BN parameters and biases


@dataclass
class SchedConfig:
    name: str = "cosine"            # cosine | constant
    interval: str = "step"          # step: lr changes every optimizer step; epoch: once per epoch
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01


@dataclass
class LossConfig:
    name: str = "ce"                # ce (softmax cross-entropy) | bce (the seed's sigmoid on one-hot)
    label_smoothing: float = 0.1
    class_weights: str = "none"     # none | balanced (weight each class by 1 / its share of the train set)


@dataclass
class CkptConfig:
    keep_last: int = 3
    every_steps: int = 0            # 0 = only at the end of each epoch
    metric: str = "val_top1"        # chooses best/ and the kept best checkpoint: val_top1 | val_top5 | val_loss


@dataclass
class LogConfig:
    tensorboard: bool = True
    every_steps: int = 0            # also log train metrics every N steps; 0 = per epoch only


@dataclass
class LifelongConfig:
    tasks: str = ""                 # CSV column whose values are the tasks, "batches" (OpenLORIS) or "" (one task
                                    # per DATA argument)
    order: str = ""                 # comma-separated task values in training order; "a-b" = numeric range
    bins: int = 0                   # numeric column: N equal-count ranges of its values instead of --order
    strategy: str = "naive"         # naive | replay | ewc | lwf | joint
    buffer_size: int = 200          # replay: images kept (class-balanced reservoir)
    ewc_lambda: float = 100.0       # ewc: weight of the quadratic penalty
    lwf_alpha: float = 1.0          # lwf: weight of the distillation loss
    lwf_temperature: float = 2.0
    datasets: list = field(default_factory=list)  # one DATA per task (when `tasks` is "")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ckpt: CkptConfig = field(default_factory=CkptConfig)
    log: LogConfig = field(default_factory=LogConfig)
    lifelong: LifelongConfig = field(default_factory=LifelongConfig)


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
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise UserError(f"{source}: config key {key!r} expects {expected.__name__}, got {value!r}")


def set_value(cfg: Config, key: str, value: Any, source: str = "--set") -> None:
    """Set a dotted key (e.g. 'optim.lr') on the tree, checking that it exists and its type."""
    node: Any = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        child = getattr(node, part, None) if dataclasses.is_dataclass(node) else None
        if not dataclasses.is_dataclass(child):
            raise _unknown_key(key, cfg, source)
        node = child
    leaf = parts[-1]
    if not dataclasses.is_dataclass(node) or leaf not in {f.name for f in dataclasses.fields(node)} \
            or dataclasses.is_dataclass(getattr(node, leaf)):
        raise _unknown_key(key, cfg, source)
    setattr(node, leaf, _coerce(key, value, getattr(node, leaf), source))


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


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
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.lr=0.01")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def build_config(config_file: str | None = None, overrides: typing.Sequence[str] = (),
                 flags: dict[str, Any] | None = None, base: dict | None = None) -> Config:
    """Defaults <- YAML file <- --set overrides <- explicit flags (those that are not None).

    base, when given (a run's saved config, for `train --resume RUN_DIR` without DATA), replaces the defaults.
    """
    cfg = config_from_dict(base, "saved run config") if base is not None else Config()
    if config_file:
        for key, value in _flatten(load_yaml(config_file)).items():
            set_value(cfg, key, value, source=str(config_file))
    for text in overrides:
        key, value = parse_override(text)
        set_value(cfg, key, value, source="--set")
    for key, value in (flags or {}).items():
        if value is not None:
            set_value(cfg, key, value, source="command line")
    validate_config(cfg)
    return cfg


_BIG = 2**31 - 1
# key -> (lowest, highest, lowest excluded?, highest excluded?); ints and floats alike.
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "model.width": (1, MAX_WIDTH, False, False),
    "data.image_size": (MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, False, False),
    "data.min_crop_scale": (0, 1, True, False),
    "data.val_fraction": (0, 1, True, True),
    "data.num_workers": (-1, 256, False, False),
    "data.color_jitter": (0, 1, False, False),
    "data.random_erasing": (0, 1, False, False),
    "data.mixup": (0, 100, False, False),
    "data.cutmix": (0, 100, False, False),
    "data.cache_max_gb": (0, 1e6, False, False),
    "train.epochs": (1, 1_000_000, False, False),
    "train.batch_size": (1, 1 << 16, False, False),
    "train.seed": (0, 2**32 - 1, False, False),  # NumPy's seed range
    "train.grad_accum_steps": (1, 1 << 16, False, False),
    "train.grad_clip_norm": (0, 1e9, False, False),
    "train.ema_decay": (0, 1, False, True),
    "train.dist_timeout_s": (0, 7 * 86400, True, False),
    "train.patience": (0, 1_000_000, False, False),
    "optim.lr": (0, 10, True, False),
    "optim.weight_decay": (0, 10, False, False),
    "optim.momentum": (0, 1, False, True),
    "sched.warmup_epochs": (0, 1_000_000, False, False),
    "sched.min_lr_ratio": (0, 1, False, False),
    "loss.label_smoothing": (0, 1, False, True),
    "ckpt.keep_last": (1, 1_000_000, False, False),
    "ckpt.every_steps": (0, _BIG, False, False),
    "log.every_steps": (0, _BIG, False, False),
    "lifelong.bins": (0, 100_000, False, False),
    "lifelong.buffer_size": (0, _BIG, False, False),
    "lifelong.ewc_lambda": (0, 1e12, False, False),
    "lifelong.lwf_alpha": (0, 1e6, False, False),
    "lifelong.lwf_temperature": (0, 1e3, True, False),
}
# Sizes where 0 means "derived from data.image_size".
SIZE_OR_ZERO = ("data.resize_size", "data.cache_size")
CHOICES = {"train.nonfinite": ("stop", "skip"), "data.worker_start": ("auto", "fork", "spawn"),
           "data.interpolation": ("nearest", "bilinear", "bicubic"),
           "data.augment": ("crop_flip", "resize", "trivialaugment", "randaugment"),
           "ckpt.metric": ("val_top1", "val_top5", "val_loss"),
           "lifelong.strategy": ("naive", "replay", "ewc", "lwf", "joint")}


DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """'90s', '20m', '1.5h' (a bare number is seconds) -> seconds; '' or '0' -> 0 (off). ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*", str(text).lower())
    if str(text).strip() == "":
        return 0.0
    if match is None:
        raise ValueError("expected a duration such as 90s, 20m or 1.5h (0 = off)")
    seconds = float(match.group(1)) * DURATION_UNITS[match.group(2)]
    if seconds > 365 * 86400:
        raise ValueError("expected a duration of at most a year")
    return seconds


def _range_problem(value, lo, hi, lo_open, hi_open) -> str:
    if not is_finite_number(value):
        return "must be a finite number"
    if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        show = lambda x: str(int(x)) if float(x).is_integer() else f"{x:g}"
        return f"must be in {left}{show(lo)}, {show(hi)}{right}"
    return ""


def validate_config(cfg: Config) -> Config:
    """Range checks after the type checks of set_value: every numeric key within sane bounds, mean/std three
    finite numbers (std > 0), enumerations known. Raises UserError naming the key, the value and the range."""
    flat = _flatten(config_to_dict(cfg))
    problems = [f"{key}={flat[key]!r}: {_range_problem(flat[key], *bounds)}" for key, bounds in RANGES.items()
                if _range_problem(flat[key], *bounds)]
    for key in SIZE_OR_ZERO:
        if flat[key] != 0 and _range_problem(flat[key], MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, False, False):
            problems.append(f"{key}={flat[key]!r}: must be 0 (automatic) or in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]")
    for key, bounds in (("data.mean", MEAN_RANGE), ("data.std", STD_RANGE)):
        if rgb_problem(flat[key], bounds):
            problems.append(f"{key}={rgb_problem(flat[key], bounds)}")
    try:
        parse_duration(flat["train.time_budget"])
    except ValueError as e:
        problems.append(f"train.time_budget={flat['train.time_budget']!r}: {e}")
    problems += [f"{key}={flat[key]!r}: expected one of {', '.join(choices)}"
                 for key, choices in CHOICES.items() if flat[key] not in choices]
    if problems:
        raise UserError(f"config key {problems[0]}"
                        + (f" (and {len(problems) - 1} more: {'; '.join(problems[1:4])})" if len(problems) > 1 else ""))
    return cfg


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(tree: dict, source: str = "config") -> Config:
    cfg = Config()
    for key, value in _flatten(tree).items():
        set_value(cfg, key, value, source=source)
    return cfg


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


# Keys that may differ between a run and its resumption without changing what it computes.
RESUME_SAFE_KEYS = ("train.device", "train.compile", "train.dist_timeout_s", "data.num_workers", "data.on_bad",
                    "data.cache_max_gb", "data.worker_start", "train.nonfinite", "ckpt.", "log.")


def result_affecting_changes(saved: dict, current: Config) -> list[str]:
    """'key: old -> new' for every setting that differs from a checkpoint's config and changes the result."""
    # A key the saved config lacks was added since it was written: it ran as that key's default does.
    old = {**_flatten(config_to_dict(Config())), **_flatten(saved)}
    new, changes = _flatten(config_to_dict(current)), []
    for key in sorted(set(old) | set(new)):
        if key.startswith(RESUME_SAFE_KEYS):
            continue
        a, b = old.get(key), new.get(key)
        if key in ("data.train", "data.val") and a and b:
            a, b = str(Path(a).resolve()), str(Path(b).resolve())  # same data, however the path was typed
        if a != b:
            changes.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return changes
