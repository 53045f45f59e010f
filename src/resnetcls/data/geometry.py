"""The resize geometry shared by the decoded cache (what is stored) and the transforms (what the model
sees): the interpolation names, the aspect-ratio guard and the stored resize. A leaf of data/: the cache and
the transforms both import it, so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torchvision.transforms.functional import InterpolationMode
from torchvision.transforms.v2 import functional as F  # the same resize the eval transform uses

from .decode import decode_image

INTERPOLATIONS = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}

# The shorter-side preprocessing keeps at most this many short sides of the long side (centred) before it
# resizes: the eval centre crop needs under one short side, and training's random-resized-crop (aspect at
# most 4/3) loses little. It bounds the resize's output by the model's input whatever the aspect ratio (a
# 20000x16 strip would otherwise resize to 256x320000).
MAX_ASPECT = 4.0


class CropToAspect:
    """Centre-crop a PIL image's long side to at most max_aspect times its short side (else unchanged)."""

    def __init__(self, max_aspect: float = MAX_ASPECT) -> None:
        self.max_aspect = max_aspect

    def __call__(self, image):
        w, h = image.size
        short = min(w, h)
        keep = max(1, int(self.max_aspect * short))
        if max(w, h) <= keep:
            return image
        if w > h:
            left = (w - keep) // 2
            return image.crop((left, 0, left + keep, h))
        top = (h - keep) // 2
        return image.crop((0, top, w, top + keep))

    def __repr__(self) -> str:
        return f"CropToAspect(max_aspect={self.max_aspect})"


@dataclass(frozen=True)
class StoreGeometry:
    """How images are stored: the short side resized to `size` (or squashed to size x size when `square`),
    with the model's interpolation, exactly as the eval transform's first resize does."""

    size: int
    square: bool = False
    interpolation: str = "bilinear"


def decode_resized(path: str, geometry: StoreGeometry) -> np.ndarray:
    """decode_image + the stored resize -> HWC uint8 array. Raises DecodeError naming the file."""
    image = decode_image(path)
    if not geometry.square:  # as the eval transform: the resize's output stays bounded by the model's input
        image = CropToAspect()(image)
    size = [geometry.size, geometry.size] if geometry.square else [geometry.size]
    resized = F.resize(image, size, interpolation=INTERPOLATIONS[geometry.interpolation], antialias=True)
    return np.array(resized, dtype=np.uint8)  # writable: torch.from_numpy wants that
