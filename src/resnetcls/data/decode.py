"""One robust image decode used everywhere (train, eval, predict, serve, `data check`, the cache).

Every image comes out as an upright 8-bit RGB PIL image, or a DecodeError naming the file and the reason.

The rules (documented in the README, tested in tests/data/test_decode.py):
- Only the formats in FORMATS are opened (Pillow's `formats=`): anything else, even a format Pillow could
  parse (EPS, whose decode would run Ghostscript, PSD, FITS, SGI, ...), is "not an image in a format we read".
- EXIF orientation is applied, so phone photos come out upright.
- Animated images (GIF, APNG, WebP): the first frame.
- Alpha (RGBA, LA, PA, P with transparency): composited onto black, the background of most object data sets
  (COIL, OpenLORIS turntables), so a transparent cut-out looks like its photographed siblings.
- 16-bit and 32-bit integer grayscale (I;16*, I): the 0-65535 range maps linearly onto 0-255 (value / 257),
  values outside it are clipped. Float grayscale (F): 0.0-1.0 maps onto 0-255 when the image's maximum is
  at most 1, else its values are taken as 0-255; both are clipped.
- L, CMYK, YCbCr, LAB, HSV, 1-bit: Pillow's own conversion to RGB.
- More than `max_pixels` pixels (decompression bombs, checked from the header before any pixel is decoded),
  truncated and unreadable files: a DecodeError.

Memory: a decode holds at most decode_peak_bytes() at once (the conversions below make no full-size copy
that the result does not need); serve admits decodes against a budget of it.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from struct import error as struct_error
from typing import NamedTuple

import numpy as np
from PIL import ExifTags, Image, ImageChops, ImageOps, UnidentifiedImageError

from ..errors import UserError

# Pillow format names we open, and how the README and error messages name them. MPO (multi-picture JPEG from
# phones and cameras) is opened by the JPEG plugin and so is included; PGM/PBM are Pillow's PPM plugin.
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
FORMAT_NAMES = "JPEG, PNG, GIF, BMP, WebP, TIFF, PPM/PGM"
NOT_OUR_FORMAT = f"not an image in a format we read ({FORMAT_NAMES})"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (about 9459 x 9459)
# Peak memory of one decode, in bytes per header pixel, by the image's mode as stored: the decoded pixels plus
# what the conversion to RGB needs beside them (measured per mode on 16 Mpx images, rounded up by about one;
# bench/fuzz_decode.py checks the bound on mutated files). WebP is decoded through libwebp's own RGBA canvas.
PEAK_BYTES_PER_PIXEL = {
    "1": 6,
    "L": 6,
    "P": 6,
    "RGB": 5,
    "YCbCr": 5,
    "RGBA": 10,
    "LA": 10,
    "CMYK": 9,
    "I;16": 9,
    "I;16B": 9,
    "I;16L": 9,
    "I;16N": 9,
    "I": 13,
    "F": 14,
}
PEAK_BYTES_WEBP, PEAK_BYTES_OTHER = 17, 14
PEAK_BYTES_FIXED = 4_000_000  # decoder buffers and Python objects that do not grow with the image
# Bumped whenever a rule above changes, so decoded caches made under the old rules are not reused.
DECODE_VERSION = 2


class DecodeError(UserError):
    """An image that cannot be used; str() names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # picklable, so process pools can send it back
        return (DecodeError, (self.path, self.reason))


class DecodeMemoryError(DecodeError):
    """Not enough memory to decode this image at this moment (serve answers 503: a retry may succeed)."""


class Decoded(NamedTuple):
    """decode_drafted's result: the upright RGB image, decoded at 1/scale of the file's size (scale 1, 2, 4 or
    8), and full_size, the upright (width, height) the image has at full scale."""

    image: Image.Image
    full_size: tuple[int, int]
    scale: int


# Orientations (EXIF tag 274) whose transposition swaps width and height.
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
# libjpeg's DCT scalings that Pillow's draft mode offers, largest first.
DRAFT_SCALES = (8, 4, 2, 1)


def is_image_file(path: str | os.PathLike) -> bool:
    """By extension, case-insensitively."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _scale_to_uint8(img: Image.Image) -> Image.Image:
    """I;16*, I and F grayscale -> L by the documented range rule (Pillow's own convert clips instead).

    Integer images stay in integer arithmetic (4 bytes a pixel, not float64's 8 per temporary)."""
    if img.mode == "F":
        values = np.array(img, dtype=np.float32)
        peak = np.nanmax(values) if values.size else 0.0
        if peak <= 1.0:
            values *= 255.0
        np.nan_to_num(values, copy=False, nan=0.0)
        np.clip(values, 0, 255, out=values)
        return Image.fromarray(np.rint(values, out=values).astype(np.uint8), mode="L")
    values = np.clip(np.asarray(img), 0, 65535).astype(np.uint32)
    # round(v / 257) exactly: 257 is odd, so v / 257 is never halfway and half-up equals round-half-even.
    values *= 2
    values += 257
    values //= 514
    return Image.fromarray(values.astype(np.uint8), mode="L")


def _palette_onto_black(img: Image.Image) -> Image.Image:
    """P with transparency -> RGB, compositing on the palette (256 entries) instead of on every pixel."""
    transparency = img.info.get("transparency")
    rgb = np.array(img.getpalette("RGB") or [], dtype=np.uint16).reshape(-1, 3)
    alpha = np.full(len(rgb), 255, dtype=np.uint16)
    if isinstance(transparency, int):
        if transparency < len(alpha):
            alpha[transparency] = 0
    else:
        values = np.frombuffer(bytes(transparency)[: len(alpha)], dtype=np.uint8)
        alpha[: len(values)] = values
    # rgb * alpha / 255, rounded: what alpha compositing onto opaque black gives
    img.putpalette(((rgb * alpha[:, None] + 127) // 255).astype(np.uint8).tobytes(), "RGB")
    img.info.pop("transparency", None)
    return img.convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB by the rules in the module docstring."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return _scale_to_uint8(img).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        return _palette_onto_black(img)
    if img.mode == "LA":  # gray x alpha / 255 is compositing onto black, in 1 byte a pixel
        return ImageChops.multiply(img.getchannel("L"), img.getchannel("A")).convert("RGB")
    if img.mode in ("RGBA", "PA", "RGBa", "La"):
        if img.mode != "RGBA":
            img = img.convert("RGBA")
        # paste with the alpha band as mask = alpha compositing onto black, without full-size RGBA temporaries
        out = Image.new("RGB", img.size, (0, 0, 0))
        out.paste(img, (0, 0), img.getchannel("A"))
        return out
    return img.convert("RGB")


def _reason(error: Exception, size: int | None) -> str:
    """A short, user-facing reason for a Pillow failure."""
    text = str(error)
    if size == 0:
        return "empty file (0 bytes)"
    if isinstance(error, UnidentifiedImageError):
        return NOT_OUR_FORMAT
    if any(word in text.lower() for word in ("truncated", "broken data stream", "premature end")):
        return f"truncated file ({text})"
    return f"cannot decode image: {text}"


def draft_scale(width: int, height: int, min_short: int) -> int:
    """The largest of 8, 4, 2, 1 that still leaves the shorter side at least min_short pixels (1 when
    min_short is 0: no draft)."""
    short = min(width, height)
    return next(s for s in DRAFT_SCALES if s == 1 or (min_short > 0 and short // s >= min_short))


def _apply_draft(img: Image.Image, min_short: int) -> int:
    """Ask a JPEG's decoder for 1/scale of its size (libjpeg scales while decoding, skipping most of the
    work); the scale it took (1 for other formats, or where Pillow cannot draft this file)."""
    scale = draft_scale(img.width, img.height, min_short) if img.format in ("JPEG", "MPO") else 1
    if scale == 1:
        return 1
    width = img.width
    img.draft("RGB", (img.width // scale, img.height // scale))
    return max(1, round(width / img.width))


def _decode_open(img: Image.Image, label: str, max_pixels: int, min_short: int = 0) -> Decoded:
    if img.width * img.height > max_pixels:
        raise DecodeError(
            label,
            f"image is {img.width}x{img.height} pixels, above the limit of "
            f"{max_pixels} (possible decompression bomb)",
        )
    img.seek(0)  # first frame of animated images
    full_size = img.size
    scale = _apply_draft(img, min_short) if min_short else 1
    img.load()
    if img.getexif().get(ExifTags.Base.Orientation) in SWAPPING_ORIENTATIONS:
        full_size = full_size[::-1]
    # in place: no copy of the whole image when there is no orientation to apply (the usual case)
    ImageOps.exif_transpose(img, in_place=True)
    return Decoded(to_rgb(img), full_size, scale)  # leaving `with Image.open()` closes only the file


def decode_image(
    source: str | os.PathLike | bytes, name: str | None = None, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """Open, apply EXIF orientation and convert to RGB; raise DecodeError naming the file on any problem."""
    return decode_drafted(source, 0, name, max_pixels).image


def decode_drafted(
    source: str | os.PathLike | bytes, min_short: int, name: str | None = None, max_pixels: int = MAX_PIXELS
) -> Decoded:
    """decode_image, but a JPEG is decoded at the smallest of 1/8, 1/4, 1/2 of its size whose shorter side
    is still at least min_short pixels (JPEG draft mode: libjpeg scales while it decodes, several times
    faster); other formats, and min_short 0, decode at full size. The pixel limit applies to the full size.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    size = len(source) if isinstance(source, bytes) else None
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        if size is None:
            size = os.stat(fp).st_size
        with warnings.catch_warnings():
            # Pillow warns (rather than raises) between 1x and 2x its limit; our own check decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp, formats=FORMATS) as img:
                return _decode_open(img, label, max_pixels, min_short)
    except DecodeError:
        raise
    except FileNotFoundError:
        raise DecodeError(label, "file not found") from None
    except IsADirectoryError:
        raise DecodeError(label, "is a folder, not an image file") from None
    except MemoryError:
        raise DecodeMemoryError(label, "not enough memory to decode this image") from None
    except Image.DecompressionBombError as e:
        raise DecodeError(label, f"above the pixel limit (possible decompression bomb): {e}") from None
    except (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        IndexError,
        TypeError,
        KeyError,
        ZeroDivisionError,
        struct_error,
    ) as e:
        # Pillow signals corrupt data with any of these, depending on the format plugin.
        raise DecodeError(label, _reason(e, size)) from None


def decode_in_memory(image: Image.Image | np.ndarray, name: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An image already in memory (a PIL image, or a numpy array: HxWx3 or HxWx4 uint8, HxW uint8 or uint16
    grayscale) -> upright 8-bit RGB by the same rules as decode_image (EXIF orientation, alpha onto black,
    16-bit range, the pixel limit); anything else is a DecodeError naming `name` (e.g. "<image 2>")."""
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image, name)
    elif not isinstance(image, Image.Image):
        raise DecodeError(
            name, f"expected an image path, a PIL image or a numpy array, got {type(image).__name__}"
        )
    if image.width * image.height > max_pixels:
        raise DecodeError(
            name,
            f"image is {image.width}x{image.height} pixels, above the limit of {max_pixels} "
            f"(possible decompression bomb)",
        )
    try:
        image.load()
        # not in place: the caller's image stays as it was
        return to_rgb(ImageOps.exif_transpose(image) or image)
    except MemoryError:
        raise DecodeMemoryError(name, "not enough memory to decode this image") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError) as e:
        raise DecodeError(name, _reason(e, None)) from None


def _array_to_pil(array: np.ndarray, name: str) -> Image.Image:
    """numpy pixels as Pillow would have decoded them: uint8 RGB/RGBA/L, uint16 as I;16 (then value / 257)."""
    shape, dtype = "x".join(map(str, array.shape)), array.dtype
    colour = array.ndim == 3 and array.shape[2] in (3, 4) and dtype == np.uint8
    if colour or (array.ndim == 2 and dtype in (np.uint8, np.uint16)):
        return Image.fromarray(
            np.ascontiguousarray(array)
        )  # mode from the shape and dtype: RGB, RGBA, L, I;16
    raise DecodeError(
        name,
        f"numpy array of shape {shape} and dtype {dtype}: expected HxWx3 (RGB) or HxWx4 (RGBA) "
        f"uint8, or HxW uint8/uint16 grayscale",
    )


def decode_peak_bytes(width: int, height: int, mode: str, fmt: str | None) -> int:
    """Upper bound of decode_image's peak memory for an image with this header (see PEAK_BYTES_PER_PIXEL)."""
    per_pixel = PEAK_BYTES_WEBP if fmt == "WEBP" else PEAK_BYTES_PER_PIXEL.get(mode, PEAK_BYTES_OTHER)
    return width * height * per_pixel + PEAK_BYTES_FIXED


def probe_image(data: bytes) -> tuple[int, int, int]:
    """(width, height, decode_peak_bytes) from the header of an image in one of our FORMATS, decoding no
    pixel.

    Raises UnidentifiedImageError for other formats, DecompressionBombError (or another Pillow error) else."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data), formats=FORMATS) as probe:
            width, height = probe.size
            return width, height, decode_peak_bytes(width, height, probe.mode, probe.format)
