"""One robust image decode used everywhere (train, eval, predict, serve, `data check`, the cache).

Every image comes out as an upright 8-bit RGB PIL image, or a DecodeError naming the file and the reason.

The rules (documented in the README, tested in tests/data/test_decode.py):
- EXIF orientation is applied, so phone photos come out upright.
- Animated images (GIF, APNG, WebP): the first frame.
- Alpha (RGBA, LA, PA, P with transparency): composited onto black, the background of most object data sets
  (COIL, OpenLORIS turntables), so a transparent cut-out looks like its photographed siblings.
- 16-bit and 32-bit integer grayscale (I;16*, I): the 0-65535 range maps linearly onto 0-255 (value / 257),
  values outside it are clipped. Float grayscale (F): 0.0-1.0 maps onto 0-255 when the image's maximum is
  at most 1, else its values are taken as 0-255; both are clipped.
- L, CMYK, YCbCr, LAB, HSV, 1-bit: Pillow's own conversion to RGB.
- More than `max_pixels` pixels (decompression bombs), truncated and unreadable files: a DecodeError.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (about 9459 x 9459)
# Bumped whenever a rule above changes, so decoded caches made under the old rules are not reused.
DECODE_VERSION = 1


class DecodeError(UserError):
    """An image that cannot be used; str() names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # picklable, so process pools can send it back
        return (DecodeError, (self.path, self.reason))


def is_image_file(path: str | os.PathLike) -> bool:
    """By extension, case-insensitively."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _scale_to_uint8(img: Image.Image) -> Image.Image:
    """I;16*, I and F grayscale -> L by the documented range rule (Pillow's own convert clips instead)."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
    else:
        scale = 1.0 / 257.0
    values = np.nan_to_num(values * scale, nan=0.0)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB by the rules in the module docstring."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return _scale_to_uint8(img).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _reason(error: Exception, size: int | None) -> str:
    """A short, user-facing reason for a Pillow failure."""
    text = str(error)
    if size == 0:
        return "empty file (0 bytes)"
    if isinstance(error, UnidentifiedImageError):
        return "not an image Pillow can read (unknown format or not an image at all)"
    if any(word in text.lower() for word in ("truncated", "broken data stream", "premature end")):
        return f"truncated file ({text})"
    return f"cannot decode image: {text}"


def decode_image(source: str | os.PathLike | bytes, name: str | None = None,
                 max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open, apply EXIF orientation and convert to RGB; raise DecodeError naming the file on any problem."""
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    size = len(source) if isinstance(source, bytes) else None
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        if size is None:
            size = os.stat(fp).st_size
        with warnings.catch_warnings():
            # Pillow warns (rather than raises) between 1x and 2x its limit; our own check below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                if img.width * img.height > max_pixels:
                    raise DecodeError(label, f"image is {img.width}x{img.height} pixels, above the limit of "
                                             f"{max_pixels} (possible decompression bomb)")
                img.seek(0)  # first frame of animated images
                img.load()
                return to_rgb(ImageOps.exif_transpose(img))
    except DecodeError:
        raise
    except FileNotFoundError:
        raise DecodeError(label, "file not found") from None
    except IsADirectoryError:
        raise DecodeError(label, "is a folder, not an image file") from None
    except Image.DecompressionBombError as e:
        raise DecodeError(label, f"above the pixel limit (possible decompression bomb): {e}") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, MemoryError) as e:
        # Pillow signals corrupt data with any of these, depending on the format plugin.
        raise DecodeError(label, _reason(e, size)) from None
