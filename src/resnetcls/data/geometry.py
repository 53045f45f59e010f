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

from .decode import decode_image

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
