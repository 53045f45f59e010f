"""The resize geometry shared by the decoded cache (what is stored) and the transforms (what the model
sees): the interpolation names, the aspect-ratio guard and the stored resize. A leaf of data/: the cache and
the transforms both import it, so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from torchvision.transforms.functional import InterpolationMode
from torchvision.transforms.v2 import functional as F  # the same resize the eval transform uses

from .decode import MAX_PIXELS, decode_drafted, decode_image

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
# JPEG draft decoding stops at the scale that leaves the shorter side at least this many times what the
# eval geometry needs, so the final resize still filters over 2 or more decoded pixels. Measured against
# the exact path on every hymenoptera photo (a 64 px model, the most drafted case): 99.5% top-1 agreement
# and max |dp| 0.013 at 2, 98.7% and 0.068 at 1 (docs/benchmarks.md).
DRAFT_MARGIN = 2


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


# Pillow's resampling filters for the interpolation names (what torchvision's resize uses on a PIL image).
PIL_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def aspect_box(width: int, height: int, max_aspect: float = MAX_ASPECT) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) region of a width x height image that CropToAspect keeps."""
    keep = max(1, int(max_aspect * min(width, height)))
    if max(width, height) <= keep:
        return 0, 0, width, height
    if width > height:
        left = (width - keep) // 2
        return left, 0, left + keep, height
    top = (height - keep) // 2
    return 0, top, width, top + keep


def eval_crop_box(width: int, height: int, preprocess: dict) -> tuple[float, float, float, float] | None:
    """The region (left, top, right, bottom, in pixels, fractional) of an upright width x height image that
    the eval transform's geometry turns into the model's S x S input, or None where it has no such region
    (a resize mode other than shorter_side and square, or a centre crop larger than the resize, which pads).

    shorter_side: CropToAspect, the short side resized to R by torchvision's size rule (the long side
    int(R * long / short)), then the centre S x S crop (its offset rounded as torchvision's CenterCrop).
    Resizing this box straight to S x S puts every output pixel's centre, and the filter's scale, where the
    resize of the whole image put them: the same pixels up to rounding (a level or two of 255)."""
    mode, size = preprocess.get("resize_mode", "shorter_side"), preprocess["image_size"]
    if mode == "square":
        return 0.0, 0.0, float(width), float(height)
    resize = preprocess["resize"]
    if mode != "shorter_side" or resize < size:
        return None
    x0, y0, x1, y1 = aspect_box(width, height)
    w, h = x1 - x0, y1 - y0
    nh, nw = (
        (int(resize * h / w), resize) if h > w else (resize, int(resize * w / h)) if w > h else (resize,) * 2
    )
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    sx, sy = w / nw, h / nh
    return x0 + left * sx, y0 + top * sy, x0 + (left + size) * sx, y0 + (top + size) * sy


def draft_short_side(preprocess: dict) -> int:
    """The shorter side a draft decode keeps: DRAFT_MARGIN times what the eval geometry needs, the resize R
    (shorter_side) or S (square); 0 where eval_crop_box has no region (no draft decoding then)."""
    if eval_crop_box(2, 2, preprocess) is None:
        return 0
    need = preprocess["image_size"] if preprocess.get("resize_mode") == "square" else preprocess["resize"]
    return need * DRAFT_MARGIN


def crop_resize(
    image: Image.Image, preprocess: dict, full_size: tuple[int, int] | None = None, scale: int = 1
) -> Image.Image | None:
    """The eval geometry in one resize: eval_crop_box of the full-size image, mapped onto `image` (decoded
    at 1/scale of full_size, see decode_drafted), resized straight to S x S; None where there is no box."""
    width, height = full_size or image.size
    box = eval_crop_box(width, height, preprocess)
    if box is None:
        return None
    size = preprocess["image_size"]
    # a 1/scale JPEG decode puts full-size pixel x at x / scale exactly (each DCT block shrinks by scale)
    box = tuple(min(v / scale, limit) for v, limit in zip(box, image.size * 2))
    return image.resize((size, size), PIL_FILTERS[preprocess["interpolation"]], box=box)


def decode_eval(
    source, preprocess: dict, name: str | None = None, max_pixels: int = MAX_PIXELS
) -> Image.Image | None:
    """A file (path or bytes) -> the model's S x S RGB input by the eval geometry, decoding a JPEG at the
    smallest draft scale that keeps the shorter side at draft_short_side (decode_drafted); None where the
    geometry has no crop box (use the exact transform). Raises DecodeError naming the file."""
    min_short = draft_short_side(preprocess)
    if not min_short:
        return None
    decoded = decode_drafted(source, min_short, name, max_pixels)
    return crop_resize(decoded.image, preprocess, decoded.full_size, decoded.scale)


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
