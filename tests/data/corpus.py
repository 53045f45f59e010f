"""A generated corpus of awkward and broken images, each with the exact outcome a user should see."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED, BLUE = (220, 20, 20), (20, 20, 220)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no real pixel data): a decompression bomb's signature."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95, **kwargs)
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    """Stored 40 wide x 20 tall, left half red, right half blue, EXIF orientation 6 (rotate 90 CW to view):
    upright it is 20 wide x 40 tall with red on top."""
    img = Image.new("RGB", (40, 20), BLUE)
    img.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(img, exif=exif.tobytes())


def animated_gif() -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def palette_png_with_transparency() -> bytes:
    """Left half palette index 0 (transparent), right half index 1 (opaque green)."""
    img = Image.new("P", (16, 16), 0)
    img.putpalette([255, 255, 255, 0, 200, 0] + [0] * 762)
    img.paste(1, (8, 0, 16, 16))
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=0)
    return buf.getvalue()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _tiff(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "TIFF")
    return buf.getvalue()


# name -> (file bytes, expected outcome): ("ok", (width, height), centre RGB or None) or ("bad", reason start)
def corpus() -> dict[str, tuple[bytes, tuple]]:
    good_jpeg = _jpeg(Image.new("RGB", (24, 24), RED))
    return {
        "truncated.jpg": (good_jpeg[: len(good_jpeg) // 2], ("bad", "truncated file")),
        "empty.jpg": (b"", ("bad", "empty file (0 bytes)")),
        "text.jpg": (b"this is not an image\n", ("bad", "not an image in a format we read")),
        "bomb.png": (
            _png_claiming(100000, 100000),
            ("bad", "above the pixel limit (possible decompression bomb)"),
        ),
        "one_pixel.png": (_png(Image.new("RGB", (1, 1), RED)), ("ok", (1, 1), RED)),
        "cmyk.jpg": (_jpeg(Image.new("RGB", (24, 24), RED).convert("CMYK")), ("ok", (24, 24), RED)),
        "gray16.png": (
            _png(Image.fromarray(np.full((8, 8), 257 * 100, np.uint16))),
            ("ok", (8, 8), (100,) * 3),
        ),
        "int32.tif": (_tiff(Image.fromarray(np.full((8, 8), 65535, np.int32))), ("ok", (8, 8), (255,) * 3)),
        "float.tif": (_tiff(Image.fromarray(np.full((8, 8), 0.5, np.float32))), ("ok", (8, 8), (128,) * 3)),
        "palette_transparent.png": (palette_png_with_transparency(), ("ok", (16, 16), None)),
        "la.png": (_png(Image.new("LA", (8, 8), (200, 255))), ("ok", (8, 8), (200,) * 3)),
        "rgba_half.png": (
            _png(Image.new("RGBA", (8, 8), (200, 100, 50, 128))),
            ("ok", (8, 8), (100, 50, 25)),
        ),
        "exif_rotated.jpg": (exif_rotated_jpeg(), ("ok", (20, 40), None)),
        "animated.gif": (animated_gif(), ("ok", (16, 16), RED)),
        "my photo.JPG": (good_jpeg, ("ok", (24, 24), RED)),
    }


def write_corpus(folder: Path) -> dict[str, tuple]:
    """Write every corpus file into folder, plus a symlink and a non-UTF-8 name; returns name -> outcome."""
    folder.mkdir(parents=True, exist_ok=True)
    outcomes = {}
    for name, (data, outcome) in corpus().items():
        (folder / name).write_bytes(data)
        outcomes[name] = outcome
    (folder / "linked.jpg").symlink_to(folder / "my photo.JPG")
    outcomes["linked.jpg"] = ("ok", (24, 24), RED)
    latin1 = os.fsdecode(b"caf\xe9.png")  # not valid UTF-8: Python keeps it as a surrogate escape
    (folder / latin1).write_bytes(_png(Image.new("RGB", (8, 8), BLUE)))
    outcomes[latin1] = ("ok", (8, 8), BLUE)
    return outcomes


def photo(seed: int, size: int = 96) -> Image.Image:
    """A random image with a photograph's spectrum (detail at every scale, fainter the finer: 1/f noise), in
    grey levels 30-210 so that +-20% brightness does not clip. Different seeds are not near-duplicates."""
    rng = np.random.default_rng(seed)
    total = np.zeros((size, size, 3), np.float32)
    for cells in (2, 4, 8, 16, 32):
        noise = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8))
        total += np.asarray(noise.resize((size, size), Image.Resampling.BICUBIC), np.float32) / cells
    total = 30 + (total - total.min()) / (total.max() - total.min()) * 180
    return Image.fromarray(total.astype(np.uint8))


def jpeg(image: Image.Image, quality: int = 20) -> Image.Image:
    """image re-encoded as a JPEG of that quality."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def write_photo_set(
    root: Path,
    leaky_val: int,
    train_per_class: int = 8,
    val_per_class: int = 4,
    classes: tuple[str, ...] = ("a", "b"),
    size: int = 48,
) -> Path:
    """root/train and root/val class folders of distinct photo() images (PNG); in each class the first
    `leaky_val` val images are copies of train images (`copy<i>.jpg`: JPEG quality 30, resized to 75%)."""
    for c, name in enumerate(classes):
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                seed = 1000 * c + (i if split == "train" else 500 + i)
                if split == "val" and i < leaky_val:
                    jpeg(photo(1000 * c + i, size), 30).resize((size * 3 // 4,) * 2).save(
                        root / split / name / f"copy{i}.jpg"
                    )
                else:
                    photo(seed, size).save(root / split / name / f"{i}.png")
    return root
