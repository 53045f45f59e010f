"""The stored geometry: extreme aspect ratios are centre-cropped to 4:1 before resizing; the stored resize is
the eval transform's first resize."""

from PIL import Image

from resnetcls.data.geometry import CropToAspect, StoreGeometry, decode_resized


def test_crop_to_aspect_keeps_at_most_four_short_sides_centred():
    strip = Image.new("RGB", (100, 10))
    strip.paste((255, 255, 255), (45, 0, 55, 10))
    cropped = CropToAspect()(strip)
    assert cropped.size == (40, 10) and cropped.getpixel((20, 5)) == (255, 255, 255)
    assert CropToAspect()(Image.new("RGB", (30, 20))).size == (30, 20)  # ordinary images are untouched


def test_decode_resized_resizes_the_short_side_or_squashes(tmp_path):
    Image.new("RGB", (90, 60), (10, 200, 30)).save(tmp_path / "a.png")
    assert decode_resized(str(tmp_path / "a.png"), StoreGeometry(30)).shape == (30, 45, 3)
    square = decode_resized(str(tmp_path / "a.png"), StoreGeometry(24, square=True, interpolation="nearest"))
    assert square.shape == (24, 24, 3) and tuple(square[0, 0]) == (10, 200, 30)
