"""The resize geometry shared by the decoded cache (what is stored) and the transforms (what the model
sees): the interpolation names, the resize modes, the aspect-ratio guard, the letterbox and the stored resize.
A leaf of data/: the cache and the transforms both import it, so neither imports the other.

data.resize chooses how a photo becomes the model's square input:
- crop (default): the short side resized, the centre square kept (the long side's edges are cut off);
- letterbox: the long side resized to the input size keeping the aspect ratio, the rest padded evenly on both
  sides with the normalisation mean colour (round(255 * mean): zero after normalisation, the value an
  ImageNet-trained network treats as "nothing here", and the colour random erasing already fills with);
- squash: both sides resized to the input size, the aspect ratio ignored.
Nothing of the frame is lost with letterbox or squash."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from torchvision.transforms.functional import InterpolationMode
from torchvision.transforms.v2 import functional as F  # the same resize the eval transform uses

from .decode import MAX_PIXELS, decode_drafted, decode_image

RESIZE_MODES = ("crop", "letterbox", "squash")

# data.resize's mode -> the preprocess record's resize_mode (the names model.json has always carried).
RECORD_MODES = {"crop": "shorter_side", "letterbox": "letterbox", "squash": "square"}
STORE_MODES = {record: mode for mode, record in RECORD_MODES.items()}
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


def letterbox_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) of an image whose long side is resized to `size`, keeping its aspect ratio (each side
    rounded to the nearest pixel, at least 1)."""
    long = max(width, height)
    return max(1, round(width * size / long)), max(1, round(height * size / long))


def pad_colour(mean) -> tuple[int, int, int]:
    """The letterbox padding: the normalisation mean as an RGB uint8 colour (about 0 once normalised)."""
    return tuple(int(round(255 * m)) for m in mean)


def letterbox_fill(preprocess: dict) -> tuple[int, int, int]:
    """The padding colour of a preprocess record: its "pad", else the mean's colour."""
    return tuple(preprocess.get("pad") or pad_colour(preprocess["mean"]))


class Letterbox:
    """PIL image -> size x size PIL image: the long side resized to `size` (letterbox_size), centred on a
    canvas of `fill` (left and top padding (size - w) // 2 and (size - h) // 2)."""

    def __init__(self, size: int, interpolation: str, fill) -> None:
        self.size, self.interpolation, self.fill = size, interpolation, tuple(fill)

    def __call__(self, image):
        width, height = letterbox_size(*image.size, self.size)
        resized = F.resize(
            image, [height, width], interpolation=INTERPOLATIONS[self.interpolation], antialias=True
        )
        canvas = Image.new("RGB", (self.size, self.size), self.fill)
        canvas.paste(resized, ((self.size - width) // 2, (self.size - height) // 2))
        return canvas

    def __repr__(self) -> str:
        return f"Letterbox(size={self.size}, interpolation={self.interpolation}, fill={self.fill})"


# Training in letterbox and squash modes keeps the whole frame in view: the frame is shrunk by a random factor
# of its side in FRAME_SCALE, placed at a random position on the padded canvas (and flipped half the time).
FRAME_SCALE = (0.8, 1.0)


def frame_box(size: int, stored: tuple[int, int], mode: str, draw: list[float]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a training frame on a size x size canvas: a stored (height, width)
    image letterboxed (or squashed) to a side of size x FRAME_SCALE's draw[0], at the place draw[2], draw[3]
    (uniform numbers in [0, 1) pick top and left among the positions that keep it all on the canvas)."""
    lo, hi = FRAME_SCALE
    side = max(1, round(size * (lo + draw[0] * (hi - lo))))
    width, height = letterbox_size(stored[1], stored[0], side) if mode == "letterbox" else (side, side)
    top = min(int(draw[2] * (size - height + 1)), size - height)
    return top, min(int(draw[3] * (size - width + 1)), size - width), height, width


@dataclass(frozen=True)
class StoreGeometry:
    """How images are stored, with the model's interpolation, exactly as the eval transform's first resize
    does: mode "crop" resizes the short side to `size` (after CropToAspect), "squash" to size x size,
    "letterbox" the long side to `size` keeping the aspect ratio (unpadded: the transforms pad)."""

    size: int
    mode: str = "crop"
    interpolation: str = "bilinear"

    @property
    def square(self) -> bool:
        return self.mode == "squash"


def stored_shape(width: int, height: int, geometry: StoreGeometry) -> tuple[int, int]:
    """(height, width) an image of this size is stored at (before CropToAspect's cut of extreme aspects)."""
    if geometry.mode == "squash":
        return geometry.size, geometry.size
    if geometry.mode == "letterbox":
        new_width, new_height = letterbox_size(width, height, geometry.size)
        return new_height, new_width
    scale = geometry.size / min(width, height)
    return round(height * scale), round(width * scale)


def decode_resized(path: str, geometry: StoreGeometry) -> np.ndarray:
    """decode_image + the stored resize -> HWC uint8 array. Raises DecodeError naming the file."""
    image = decode_image(path)
    if geometry.mode == "letterbox":
        width, height = letterbox_size(*image.size, geometry.size)
        size = [height, width]
    elif geometry.mode == "squash":
        size = [geometry.size, geometry.size]
    else:  # as the eval transform: the resize's output stays bounded by the model's input
        image, size = CropToAspect()(image), [geometry.size]
    resized = F.resize(image, size, interpolation=INTERPOLATIONS[geometry.interpolation], antialias=True)
    return np.array(resized, dtype=np.uint8)  # writable: torch.from_numpy wants that
