"""Range, choice and duration checks on a built configuration: each problem names the key, its value and
what is allowed."""

from __future__ import annotations

import re

from ..errors import UserError
from ..utils.limits import (
    MAX_IMAGE_SIZE,
    MAX_WIDTH,
    MEAN_RANGE,
    MIN_IMAGE_SIZE,
    STD_RANGE,
    is_finite_number,
    rgb_problem,
)
from .schema import Config, config_to_dict, flatten

_BIG = 2**31 - 1
# key -> (lowest, highest, lowest excluded?, highest excluded?); ints and floats alike.
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "model.width": (1, MAX_WIDTH, False, False),
    "data.image_size": (MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, False, False),
    "data.min_crop_scale": (0, 1, True, False),
    "data.progressive": (0, 1, False, True),  # 1 would be the final size from the start: off, said as 0
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
    "train.race_share": (0, 0.9, False, False),
    "optim.lr": (0, 10, True, False),
    "optim.weight_decay": (0, 10, False, False),
    "optim.momentum": (0, 1, False, True),
    "sched.warmup_epochs": (0, 1_000_000, False, False),
    "sched.min_lr_ratio": (0, 1, False, False),
    "loss.label_smoothing": (0, 1, False, True),
    "ckpt.keep_last": (1, 1_000_000, False, False),
    "ckpt.every_steps": (0, _BIG, False, False),
    "log.every_steps": (0, _BIG, False, False),
    "distill.temperature": (0, 1e3, True, False),
    "distill.alpha": (0, 1, False, False),
    "lifelong.bins": (0, 100_000, False, False),
    "lifelong.buffer_size": (0, _BIG, False, False),
    "lifelong.ewc_lambda": (0, 1e12, False, False),
    "lifelong.lwf_alpha": (0, 1e6, False, False),
    "lifelong.lwf_temperature": (0, 1e3, True, False),
    "lifelong.derpp_alpha": (0, 1e6, False, False),
    "lifelong.derpp_beta": (0, 1e6, False, False),
    "eval.open_set_accept": (0, 1, True, False),
    "serve.port": (1, 65535, False, False),
    "serve.workers": (1, 256, False, False),
    "serve.max_body_mb": (0, 1e6, True, False),
    "serve.max_pixels": (1, 1e12, False, False),
    "serve.max_batch": (1, 4096, False, False),
    "serve.batch_wait_ms": (0, 60_000, False, False),
    "serve.max_decode_mb": (0, 1e9, True, False),
    "serve.max_queue": (1, _BIG, False, False),
    "serve.max_batch_pixels": (1, 1e15, False, False),
    "serve.admission_wait_s": (0, 86400, False, False),
    "serve.stall_s": (0, 86400, True, False),
    "serve.keep_alive_s": (0, 86400, True, False),
    "serve.header_timeout_s": (0, 86400, True, False),
    "serve.body_timeout_s": (0, 86400, True, False),
    "serve.max_connections": (1, _BIG, False, False),
    "serve.max_idle_connections": (1, _BIG, False, False),
    "serve.max_idle_per_client": (1, _BIG, False, False),
    "serve.unknown_accept": (0, 1, False, False),
    "serve.threshold": (-1, 1, False, False),  # -1: each class's own; else a probability (serve checks it)
}
# Sizes where 0 means "derived from data.image_size".
SIZE_OR_ZERO = ("data.resize_size", "data.cache_size")
# The inference backends and precisions of predict, eval, rank and serve (inference/predictor.py's BACKENDS
# and PRECISIONS; repeated here so the command line's --help loads no torch: tests/cli checks they agree).
BACKENDS = ("auto", "torch", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8")
INFERENCE_PRECISIONS = ("auto", "bf16", "fp32")
# eval.open_set: utils/openset.py's SCORES, "auto" (its DEFAULT_SCORE) and "off" (repeated for the same
# reason; tests/config checks they agree)
OPEN_SET_CHOICES = ("auto", "msp", "energy", "mahalanobis", "knn", "off")
CHOICES = {
    "train.nonfinite": ("stop", "skip"),
    "train.precision": ("auto", "bf16", "fp16", "fp32"),
    "data.worker_start": ("auto", "fork", "spawn"),
    "data.cache_format": ("auto", "decoded", "compressed"),
    "data.interpolation": ("nearest", "bilinear", "bicubic"),
    "data.resize": ("crop", "letterbox", "squash"),
    "data.augment": ("crop_flip", "resize", "trivialaugment", "randaugment"),
    "data.augment_on": ("auto", "host", "device"),
    "data.multi_label": ("auto", "on", "off"),
    "ckpt.metric": ("val_top1", "val_top5", "val_loss", "val_map"),
    "lifelong.strategy": ("naive", "replay", "derpp", "ncm", "ewc", "lwf", "joint"),
    "log.wandb_mode": ("offline", "online", "disabled"),
    "log.on_tracker_error": ("stop", "warn"),
    "eval.open_set": OPEN_SET_CHOICES,
    "serve.backend": BACKENDS,
    "serve.precision": INFERENCE_PRECISIONS,
    "serve.open_set": ("auto", "on", "off"),
}


DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """'90s', '20m', '1.5h' (a bare number is seconds) -> seconds; '' or '0' -> 0 (off). ValueError
    otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*", str(text).lower())
    if str(text).strip() == "":
        return 0.0
    if match is None:
        raise ValueError("expected a duration such as 90s, 20m or 1.5h (0 = off)")
    seconds = float(match.group(1)) * DURATION_UNITS[match.group(2)]
    if seconds > 365 * 86400:
        raise ValueError("expected a duration of at most a year")
    return seconds


def _bound_text(bound: float) -> str:
    """A range's end as the message shows it: 1, not 1.0; 1e+06 for a large float."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _range_problem(value, lo, hi, lo_open, hi_open) -> str:
    if not is_finite_number(value):
        return "must be a finite number"
    if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        return f"must be in {left}{_bound_text(lo)}, {_bound_text(hi)}{right}"
    return ""


def validate_config(cfg: Config) -> Config:
    """Range checks after the type checks of set_value: every numeric key within sane bounds, mean/std three
    finite numbers (std > 0), enumerations known. Raises UserError naming the key, the value and the range."""
    flat = flatten(config_to_dict(cfg))
    problems = [
        f"{key}={flat[key]!r}: {_range_problem(flat[key], *bounds)}"
        for key, bounds in RANGES.items()
        if _range_problem(flat[key], *bounds)
    ]
    for key in SIZE_OR_ZERO:
        if flat[key] != 0 and _range_problem(flat[key], MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, False, False):
            problems.append(
                f"{key}={flat[key]!r}: must be 0 (automatic) or in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]"
            )
    for key, bounds in (("data.mean", MEAN_RANGE), ("data.std", STD_RANGE)):
        if rgb_problem(flat[key], bounds):
            problems.append(f"{key}={rgb_problem(flat[key], bounds)}")
    try:
        parse_duration(flat["train.time_budget"])
    except ValueError as e:
        problems.append(f"train.time_budget={flat['train.time_budget']!r}: {e}")
    problems += [
        f"{key}={flat[key]!r}: expected one of {', '.join(choices)}"
        for key, choices in CHOICES.items()
        if flat[key] not in choices
    ]
    if problems:
        raise UserError(
            f"config key {problems[0]}"
            + (f" (and {len(problems) - 1} more: {'; '.join(problems[1:4])})" if len(problems) > 1 else "")
        )
    return cfg
