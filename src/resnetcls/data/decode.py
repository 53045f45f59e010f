"""One robust image decode used everywhere (train, eval, predict, serve).

Every image comes out as an upright 8-bit RGB PIL image, or a DecodeError naming the file and the reason.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, ImageOps

from ..errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (about 9459 x 9459)


class DecodeError(UserError):
    """An image that cannot be used; str() names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_image_file(path: str | os.PathLike) -> bool:
    """By extension, case-insensitively."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB. Transparent pixels are composited onto black."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(source: str | os.PathLike | bytes, name: str | None = None,
                 max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open, apply EXIF orientation and convert to RGB; raise DecodeError naming the file on any problem."""
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(fp) as img:
            if img.width * img.height > max_pixels:
                raise DecodeError(label, f"image is {img.width}x{img.height} pixels, above the limit of "
                                         f"{max_pixels} (possible decompression bomb)")
            img.seek(0)  # first frame of animated images
            img.load()
            upright = ImageOps.exif_transpose(img)
            return to_rgb(upright)
    except DecodeError:
        raise
    except FileNotFoundError:
        raise DecodeError(label, "file not found") from None
    except Image.DecompressionBombError as e:
        raise DecodeError(label, f"above the pixel limit (possible decompression bomb): {e}") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DecodeError(label, f"cannot decode image: {e}") from None
