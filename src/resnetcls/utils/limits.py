"""Sane bounds shared by the training config (config.py) and the model file (modelfile.py), so a model
directory accepts exactly what training can produce.

They are generous for real use and small enough that one bad number cannot ask for gigabytes: an image
side of 10**6 or a width of 4096 (about 10**11 parameters for ResNet-50) is a typo or an attack.
"""

from __future__ import annotations

import math

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 4096  # model input side in pixels (ResNets are used at 32..1024)
MAX_WIDTH = 256  # stem/layer1 channels; torchvision's ResNets use 64
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841
# The full C x C confusion matrix goes into JSON records (metrics.jsonl's val_confusion per epoch, eval's
# metrics.json) up to this many classes (10,000 cells); above it eval's confusion_matrix.csv holds it.
MATRIX_IN_JSON_MAX_CLASSES = 100
MEAN_RANGE = (0.0, 1.0)  # normalisation acts on pixels scaled to [0, 1]
STD_RANGE = (1e-3, 10.0)  # a zero std divides by zero: inf for every pixel


def is_number(value) -> bool:
    """A real int or float (bool is not a number here, although Python says it is an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    return is_number(value) and math.isfinite(value)


def rgb_problem(values, bounds: tuple[float, float]) -> str:
    """'' when values are three finite numbers within bounds, else what is wrong with them."""
    if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(is_number(v) for v in values):
        return f"{values!r} must be three numbers (R, G, B)"
    if not all(math.isfinite(v) for v in values):
        return f"{list(values)!r} must be finite (no NaN or Inf)"
    lo, hi = bounds
    if not all(lo <= v <= hi for v in values):
        return f"{list(values)!r}: each must be between {lo:g} and {hi:g}"
    return ""
