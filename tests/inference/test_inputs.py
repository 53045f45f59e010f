"""What Predictor.predict takes (inference/inputs.py): tensors and arrays in either channel order, uint8 or
float in [0, 1], batches as one item per image, and a one-line refusal saying what was given."""

import numpy as np
import pytest
import torch
from PIL import Image

from resnetcls.data.decode import DecodeError
from resnetcls.data.transforms import ToNormalizedTensor, make_preprocess
from resnetcls.errors import UserError
from resnetcls.inference.inputs import ImageLoader, LookupNormalise, describe, to_items

RNG = np.random.default_rng(0)
HWC = RNG.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)


def test_every_layout_and_dtype_of_one_image_gives_the_same_hwc_pixels():
    chw = torch.from_numpy(HWC).permute(2, 0, 1)
    for value in (HWC, HWC.transpose(2, 0, 1), HWC / 255.0, chw, chw.float() / 255, (chw / 255).half()):
        inputs = to_items(value)
        assert inputs.single and len(inputs.items) == 1, describe(value)
        assert np.array_equal(inputs.items[0], HWC), describe(value)


def test_a_4d_batch_gives_one_item_per_image_and_lists_keep_their_order(tmp_path):
    batch = torch.from_numpy(np.stack([HWC, HWC[::-1]])).permute(0, 3, 1, 2)
    inputs = to_items(batch)
    assert not inputs.single and inputs.names == ["<tensor 0>", "<tensor 1>"]
    assert np.array_equal(inputs.items[1], HWC[::-1])
    assert len(to_items(np.stack([HWC] * 3)).items) == 3  # NxHxWxC
    image = Image.fromarray(HWC)
    mixed = to_items([str(tmp_path / "a.jpg"), image, HWC, torch.zeros(1, 8, 8)])
    assert mixed.names == [str(tmp_path / "a.jpg"), "<image 1>", "<array 2>", "<tensor 3>"]
    assert mixed.items[1] is image and mixed.items[3].shape == (8, 8) and not mixed.single
    assert to_items(tmp_path / "a.jpg").single


@pytest.mark.parametrize(
    "value, said",
    [
        (
            np.zeros((3, 5, 3), np.uint8),
            "shape (3, 5, 3) and dtype uint8, values 0 to 0; cannot tell whether",
        ),
        (np.zeros((20, 30, 2), np.uint8), "no axis of 1, 3 or 4 channels at either end"),
        (HWC * 1.0, "values 0 to 255; float pixels must lie in [0, 1]"),
        (np.full((5, 6, 3), -0.5), "float pixels must lie in [0, 1]"),
        (np.full((5, 6, 3), np.nan, np.float32), "float pixels must lie in [0, 1]"),
        (HWC.astype(np.int64), "dtype int64 is neither uint8 nor float"),
        (torch.zeros(8, 8, 3), "a tensor's channels (1, 3 or 4) come first"),
        (torch.zeros(2, 2, 3, 8, 8), "5 dimensions"),
        (np.zeros((0, 4, 3), np.uint8), "it is empty"),
        (42, "images: got a value of type int; accepted: a path"),
    ],
)
def test_wrong_or_ambiguous_inputs_are_refused_in_one_line(value, said):
    with pytest.raises(UserError) as refused:
        to_items(value)
    message = str(refused.value)
    assert said in message and "\n" not in message and "accepted: a path, a PIL image" in message


def test_a_list_item_must_be_one_image():
    with pytest.raises(
        UserError, match=r"images\[1\]: got a torch tensor of shape \(1, 3, 8, 8\).*one image"
    ):
        to_items([HWC, torch.zeros(1, 3, 8, 8)])


def test_any_iterable_of_images_is_a_list():
    inputs = to_items(image for image in (HWC, HWC))
    assert not inputs.single and inputs.names == ["<array 0>", "<array 1>"]


def _photo(width: int = 800, height: int = 600) -> Image.Image:
    """Smooth colour structure, as a photo has (noise would make every resampling difference maximal)."""
    coarse = np.random.default_rng(3).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


def test_the_fast_loader_gives_the_exact_loaders_input_for_every_kind_of_item(tmp_path):
    preprocess = make_preprocess(32)
    fast, exact = ImageLoader(preprocess), ImageLoader(preprocess, fast=False)
    assert fast.fast and not exact.fast
    _photo().save(tmp_path / "a.jpg", quality=95)
    _photo().save(tmp_path / "a.png")
    items = {
        "jpeg path (drafted)": str(tmp_path / "a.jpg"),
        "jpeg bytes (drafted)": (tmp_path / "a.jpg").read_bytes(),
        "png path": tmp_path / "a.png",
        "PIL image": _photo(),
        "array": np.asarray(_photo()),
    }
    for what, item in items.items():
        a, b = fast(item, "x"), exact(item, "x")
        assert a.shape == b.shape == (3, 32, 32), what
        # normalised units: 1/255 of a level is about 0.017; drafted JPEGs differ by a few levels at most
        limit = 0.1 if "drafted" in what else 0.02
        assert (a - b).abs().mean() < limit, what


def test_the_fast_loader_names_the_file_it_cannot_read(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(DecodeError, match="broken.jpg"):
        ImageLoader(make_preprocess(32))(str(tmp_path / "broken.jpg"))


def test_resize_modes_without_a_crop_box_take_the_exact_path():
    assert not ImageLoader(make_preprocess(32, resize_size=24)).fast
    assert not ImageLoader(make_preprocess(32, mode="letterbox")).fast
    assert ImageLoader(make_preprocess(32, mode="squash")).fast


def test_the_lookup_normalisation_is_bit_identical_to_the_computed_one():
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    assert torch.equal(LookupNormalise(mean, std)(pixels), ToNormalizedTensor(mean, std)(pixels))
