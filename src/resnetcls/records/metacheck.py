"""The checks of a parsed model.json (DESIGN.md section 5): every field, types first, then ranges; a
UserError naming the file and the field. modelfile.py runs them on load and before it writes.
"""

from __future__ import annotations

from pathlib import Path

from ..data.geometry import INTERPOLATIONS
from ..errors import UserError
from ..models import MODELS
from ..models.resnet import STEMS
from ..utils.limits import (
    MAX_CLASSES,
    MAX_IMAGE_SIZE,
    MAX_WIDTH,
    MEAN_RANGE,
    MIN_IMAGE_SIZE,
    STD_RANGE,
    is_finite_number,
    is_number,
    rgb_problem,
)
from ..utils.openset import QUANTILES, SCORES

FORMAT = "resnetcls.model/1"
OPEN_SET_FILE = "open_set.safetensors"  # the open-set score's tensors (utils/openset.py), beside the weights
WEIGHTS = "model.safetensors"
ARCH_ARGS = {"stem": str, "stride_on_1x1": bool, "zero_init_residual": bool, "width": int}
RESIZE_MODES = ("shorter_side", "square", "letterbox")


def _check(cond: bool, where: Path, message: str) -> None:
    if not cond:
        raise UserError(f"{where}: {message}")


def _check_arch(meta: dict, where: Path) -> None:
    arch = meta["arch"]
    _check(isinstance(arch, str), where, f"arch must be a name such as 'resnet50', got {arch!r}")
    _check(arch in MODELS, where, f"unknown arch {arch!r}; this resnetcls knows {', '.join(MODELS)}")
    args = meta["arch_args"]
    _check(isinstance(args, dict), where, "arch_args must be an object")
    unknown = sorted(set(args) - set(ARCH_ARGS))
    _check(
        not unknown, where, f"unknown arch_args {', '.join(unknown)}; expected some of {', '.join(ARCH_ARGS)}"
    )
    for key, value in args.items():
        kind = ARCH_ARGS[key]
        typed = is_number(value) and isinstance(value, int) if kind is int else isinstance(value, kind)
        _check(
            typed,
            where,
            f"arch_args.{key}={value!r} must be {'an integer' if kind is int else kind.__name__}",
        )
        ok = value in STEMS if key == "stem" else 1 <= value <= MAX_WIDTH if kind is int else True
        _check(
            ok,
            where,
            f"arch_args.{key}={value!r} is not valid"
            + (
                f" (1 to {MAX_WIDTH})"
                if kind is int
                else f" (one of {', '.join(STEMS)})"
                if key == "stem"
                else ""
            ),
        )


def _check_classes(classes, where: Path) -> None:
    _check(isinstance(classes, list) and classes, where, "classes must be a non-empty list of names")
    _check(
        len(classes) <= MAX_CLASSES, where, f"{len(classes)} classes: at most {MAX_CLASSES:,} are supported"
    )
    _check(
        all(isinstance(c, str) and c for c in classes), where, "every class name must be a non-empty string"
    )
    for c in classes:
        try:
            c.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: an undecodable byte smuggled in by an old reader
            raise UserError(f"{where}: class name {c!r} is not valid Unicode text") from None
    dupes = sorted({c for c in classes if classes.count(c) > 1}) if len(set(classes)) < len(classes) else []
    _check(not dupes, where, f"class names listed twice: {', '.join(dupes)}")


def _check_preprocess(pre, where: Path) -> None:
    _check(isinstance(pre, dict), where, "preprocess must be an object")
    missing = [k for k in ("image_size", "resize", "interpolation", "mean", "std") if k not in pre]
    _check(not missing, where, f"preprocess lacks {', '.join(missing)}")
    for key in ("image_size", "resize"):
        value = pre[key]
        _check(
            is_number(value) and isinstance(value, int),
            where,
            f"preprocess.{key}={value!r} must be an integer",
        )
        _check(
            MIN_IMAGE_SIZE <= value <= MAX_IMAGE_SIZE,
            where,
            f"preprocess.{key}={value} must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE}",
        )
    for key, choices in (("resize_mode", RESIZE_MODES), ("interpolation", tuple(INTERPOLATIONS))):
        value = pre.get(key, "shorter_side")
        _check(
            isinstance(value, str) and value in choices,
            where,
            f"preprocess.{key}={value!r}; expected one of {', '.join(choices)}",
        )
    for key, bounds in (("mean", MEAN_RANGE), ("std", STD_RANGE)):
        problem = rgb_problem(pre[key], bounds)
        _check(not problem, where, f"preprocess.{key}={problem}")
    pad = pre.get("pad", [0, 0, 0])  # letterbox's padding colour (absent: the mean's)
    _check(
        isinstance(pad, list) and len(pad) == 3 and all(type(v) is int and 0 <= v <= 255 for v in pad),
        where,
        f"preprocess.pad={pad!r} must be 3 integers from 0 to 255 (an RGB colour)",
    )


def _check_calibration(record, where: Path) -> None:
    """The optional "calibration" record (engine/calibrate.py writes it): an object whose temperature, when
    given, is a positive finite number (it divides the logits)."""
    _check(isinstance(record, dict), where, "calibration must be an object")
    value = record.get("temperature", 1.0)
    _check(
        is_finite_number(value) and value > 0,
        where,
        f"calibration.temperature={value!r} must be a positive number",
    )


def _check_open_set(record, hashes, where: Path) -> None:
    """The optional "open_set" record (engine/openset.py writes it): its score, threshold, accepted share, the
    known scores' quantiles (non-decreasing) and the file of its tensors, hashed in sha256."""
    _check(isinstance(record, dict), where, "open_set must be an object")
    score = record.get("score")
    _check(score in SCORES, where, f"open_set.score={score!r}; expected one of {', '.join(SCORES)}")
    threshold, accept = record.get("threshold"), record.get("accept")
    _check(is_finite_number(threshold), where, f"open_set.threshold={threshold!r} must be a number")
    _check(
        is_finite_number(accept) and 0 < accept <= 1, where, f"open_set.accept={accept!r} must be in (0, 1]"
    )
    quantiles = record.get("quantiles")
    _check(
        isinstance(quantiles, list)
        and len(quantiles) == QUANTILES
        and all(is_finite_number(q) for q in quantiles)
        and all(a <= b for a, b in zip(quantiles, quantiles[1:])),
        where,
        f"open_set.quantiles must be {QUANTILES} non-decreasing numbers",
    )
    _check(
        record.get("file") == OPEN_SET_FILE and _is_digest(hashes.get(OPEN_SET_FILE)),
        where,
        f"open_set.file must be {OPEN_SET_FILE!r}, with its sha256 recorded",
    )


def _check_multi_label(record, num_classes: int, where: Path) -> None:
    """The optional "multi_label" record (the end of a multi-label train writes it): one decision threshold
    in [0, 1] a class (utils/multilabel.py), and the label separator the model's CSVs used."""
    _check(isinstance(record, dict), where, "multi_label must be an object")
    thresholds = record.get("thresholds")
    _check(
        isinstance(thresholds, list)
        and len(thresholds) == num_classes
        and all(is_finite_number(value) and 0 <= value <= 1 for value in thresholds),
        where,
        f"multi_label.thresholds must be {num_classes} numbers in [0, 1], one a class",
    )
    separator = record.get("separator", ";")
    _check(
        isinstance(separator, str) and len(separator) == 1 and not separator.isalnum(),
        where,
        f"multi_label.separator={separator!r} must be one punctuation character",
    )


def _is_digest(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def check_meta(meta, where: Path) -> dict:
    """Check every field of a parsed model.json, types first, then ranges; raise UserError naming the field.

    The hash of model.json's own content (sha256."model.json") is checked by read_meta, after these checks,
    so that an edit is reported by what it broke when it broke something."""
    _check(isinstance(meta, dict), where, "model.json must hold a JSON object")
    got = meta.get("format")
    if isinstance(got, str) and got.startswith("resnetcls.model/") and got != FORMAT:
        raise UserError(f"{where}: format {got!r} is not {FORMAT!r} (written by another resnetcls version)")
    _check(got == FORMAT, where, f"format {got!r} is not {FORMAT!r}")
    for key in ("arch", "arch_args", "classes", "preprocess", "sha256"):
        _check(key in meta, where, f"missing key {key!r}")
    _check_arch(meta, where)
    _check_classes(meta["classes"], where)
    _check_preprocess(meta["preprocess"], where)
    _check(isinstance(meta.get("metrics", {}), dict), where, "metrics must be an object")
    _check_calibration(meta.get("calibration", {}), where)
    hashes = meta["sha256"]
    _check(
        isinstance(hashes, dict) and _is_digest(hashes.get(WEIGHTS)),
        where,
        f"sha256.{WEIGHTS} must be a 64-digit hex digest",
    )
    bad = next(
        (
            k
            for k, v in hashes.items()
            if not _is_digest(v) or not isinstance(k, str) or "/" in k or "\\" in k or k in ("", ".", "..")
        ),
        None,
    )
    _check(bad is None, where, f"sha256.{bad} must be a 64-digit hex digest of a file in the model directory")
    if "open_set" in meta:
        _check_open_set(meta["open_set"], hashes, where)
    if "multi_label" in meta:
        _check_multi_label(meta["multi_label"], len(meta["classes"]), where)
    return meta
