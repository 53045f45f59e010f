"""The stored geometry: extreme aspect ratios are centre-cropped to 4:1 before resizing; the stored resize is
the eval transform's first resize; letterbox keeps the whole frame and pads with the mean colour; the
training frame of letterbox and squash stays on the canvas."""

import numpy as np
import pytest
import torchvision.transforms as T
from PIL import Image

from resnetcls.data.decode import decode_drafted, decode_image
from resnetcls.data.geometry import (
    FRAME_SCALE,
    CropToAspect,
    Letterbox,
    StoreGeometry,
    crop_resize,
    decode_eval,
    decode_resized,
    draft_short_side,
    eval_crop_box,
    frame_box,
    letterbox_size,
    pad_colour,
)
from resnetcls.data.transforms import build_eval_transform, make_preprocess


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


def _exact_geometry(preprocess: dict):
    """The exact eval transform without its normalisation: PIL image -> S x S PIL image."""
    return T.Compose(build_eval_transform(preprocess).transforms[:-1])


@pytest.mark.parametrize("augment", ["crop_flip", "resize"])  # shorter_side + centre crop, and square
def test_crop_resize_gives_the_exact_transforms_pixels_in_one_resize(augment):
    preprocess = make_preprocess(24, augment=augment)
    rng = np.random.default_rng(0)
    for width, height in [(64, 48), (47, 65), (30, 30), (200, 20), (31, 90)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        exact = np.asarray(_exact_geometry(preprocess)(image), dtype=int)
        fast = np.asarray(crop_resize(image, preprocess), dtype=int)
        assert fast.shape == exact.shape == (24, 24, 3)
        # the same geometry: only rounding differs (Pillow rounds its two passes' intermediate to 8 bits)
        assert np.abs(fast - exact).max() <= 2 and np.abs(fast - exact).mean() < 0.2


def test_there_is_no_crop_box_where_the_eval_crop_would_pad():
    assert eval_crop_box(64, 48, make_preprocess(32, resize_size=24)) is None
    assert draft_short_side(make_preprocess(32, resize_size=24)) == 0
    assert draft_short_side(make_preprocess(32)) == 2 * make_preprocess(32)["resize"]


def _edge_jpeg(path, width: int, height: int, edge_x: int) -> None:
    """A JPEG, black left of column edge_x and white from it."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, edge_x:] = 255
    Image.fromarray(pixels).save(path, quality=95)


def test_decode_eval_drafts_a_large_jpeg_and_keeps_the_exact_crop(tmp_path):
    # 800x600 for a 32 px model (resize 37): drafted to 1/8 (100x75), the edge at x=420 lands in the crop
    _edge_jpeg(tmp_path / "edge.jpg", 800, 600, 420)
    preprocess = make_preprocess(32)
    decoded = decode_drafted(tmp_path / "edge.jpg", draft_short_side(preprocess))
    assert decoded.scale == 8 and decoded.image.size == (100, 75) and decoded.full_size == (800, 600)
    fast = np.asarray(decode_eval(tmp_path / "edge.jpg", preprocess), dtype=float)
    exact = np.asarray(_exact_geometry(preprocess)(decode_image(tmp_path / "edge.jpg")), dtype=float)
    assert fast.shape == exact.shape == (32, 32, 3)
    assert np.abs(fast - exact).mean() < 2.0  # of 255
    # the edge sits in the same output column on both paths
    assert np.argmax(np.diff(fast[16, :, 0])) == np.argmax(np.diff(exact[16, :, 0]))


def test_draft_decoding_still_applies_exif_orientation(tmp_path):
    # stored 800x600 with orientation 6 (rotate 90 clockwise): upright 600x800, the edge becomes a row
    _edge_jpeg(tmp_path / "stored.jpg", 800, 600, 420)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(tmp_path / "stored.jpg").save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    preprocess = make_preprocess(32)
    decoded = decode_drafted(tmp_path / "rotated.jpg", draft_short_side(preprocess))
    assert decoded.scale == 8 and decoded.full_size == (600, 800) and decoded.image.size == (75, 100)
    fast = np.asarray(decode_eval(tmp_path / "rotated.jpg", preprocess), dtype=float)
    exact = np.asarray(_exact_geometry(preprocess)(decode_image(tmp_path / "rotated.jpg")), dtype=float)
    assert np.abs(fast - exact).mean() < 2.0
    assert np.argmax(np.diff(fast[:, 16, 0])) == np.argmax(np.diff(exact[:, 16, 0]))


def test_other_formats_and_small_jpegs_decode_at_full_size(tmp_path):
    _edge_jpeg(tmp_path / "small.jpg", 60, 50, 30)
    Image.new("RGB", (800, 600), (10, 200, 30)).save(tmp_path / "big.png")
    for name in ("small.jpg", "big.png"):
        decoded = decode_drafted(tmp_path / name, draft_short_side(make_preprocess(32)))
        assert decoded.scale == 1
        assert np.array_equal(np.asarray(decoded.image), np.asarray(decode_image(tmp_path / name)))
