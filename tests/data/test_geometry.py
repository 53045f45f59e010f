"""The stored geometry: extreme aspect ratios are centre-cropped to 4:1 before resizing; the stored resize is
the eval transform's first resize; letterbox keeps the whole frame and pads with the mean colour; the
training frame of letterbox and squash stays on the canvas."""

import numpy as np
from PIL import Image

from resnetcls.data.geometry import (
    FRAME_SCALE,
    CropToAspect,
    Letterbox,
    StoreGeometry,
    decode_resized,
    frame_box,
    letterbox_size,
    pad_colour,
)


def test_crop_to_aspect_keeps_at_most_four_short_sides_centred():
    strip = Image.new("RGB", (100, 10))
    strip.paste((255, 255, 255), (45, 0, 55, 10))
    cropped = CropToAspect()(strip)
    assert cropped.size == (40, 10) and cropped.getpixel((20, 5)) == (255, 255, 255)
    assert CropToAspect()(Image.new("RGB", (30, 20))).size == (30, 20)  # ordinary images are untouched


def test_decode_resized_resizes_the_short_side_or_squashes(tmp_path):
    Image.new("RGB", (90, 60), (10, 200, 30)).save(tmp_path / "a.png")
    assert decode_resized(str(tmp_path / "a.png"), StoreGeometry(30)).shape == (30, 45, 3)
    square = decode_resized(str(tmp_path / "a.png"), StoreGeometry(24, "squash", "nearest"))
    assert square.shape == (24, 24, 3) and tuple(square[0, 0]) == (10, 200, 30)
    boxed = decode_resized(str(tmp_path / "a.png"), StoreGeometry(30, "letterbox"))
    assert boxed.shape == (20, 30, 3)  # the long side to 30, unpadded: the transforms pad


def wide_frame() -> Image.Image:
    """A 120x40 frame: red at its left edge, blue at its right edge, grey between."""
    image = Image.new("RGB", (120, 40), (128, 128, 128))
    image.paste((255, 0, 0), (0, 0, 10, 40))
    image.paste((0, 0, 255), (110, 0, 120, 40))
    return image


def test_letterbox_keeps_the_whole_frame_and_pads_with_the_mean_colour():
    fill = pad_colour((0.485, 0.456, 0.406))
    assert fill == (124, 116, 104)
    boxed = np.asarray(Letterbox(30, "nearest", fill)(wide_frame()))
    assert boxed.shape == (30, 30, 3) and letterbox_size(120, 40, 30) == (30, 10)
    # the content is rows 10..19 (centred), both edges of the frame still in view
    assert tuple(boxed[15, 0]) == (255, 0, 0) and tuple(boxed[15, 29]) == (0, 0, 255)
    assert (boxed[:10] == fill).all() and (boxed[20:] == fill).all()
    # crop mode's centre square would have lost both edges
    cropped = np.asarray(CropToAspect()(wide_frame()).resize((90, 30)).crop((30, 0, 60, 30)))
    assert not (cropped == (255, 0, 0)).all(axis=-1).any()


def test_the_training_frame_always_fits_the_canvas_whole():
    for draw in ([0.0, 0, 0.0, 0.0], [0.999, 0, 0.999, 0.999], [0.5, 0, 0.3, 0.9]):
        top, left, height, width = frame_box(64, (20, 60), "letterbox", draw)
        assert 0 <= top and top + height <= 64 and 0 <= left and left + width <= 64
        assert abs(width / height - 3) < 0.2  # the aspect ratio kept
        assert FRAME_SCALE[0] * 64 - 1 <= width <= 64
        top, left, height, width = frame_box(64, (20, 60), "squash", draw)
        assert height == width and top + height <= 64 and left + width <= 64
