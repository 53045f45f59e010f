"""Batched uint8 transforms: the eval path gives predict's pixels; training crops, flips and jitters."""

import os

import pytest
import torch
from torchvision.transforms import v2 as T

from resnetcls.data.cache import open_or_build
from resnetcls.data.decode import decode_image
from resnetcls.data.loader import build_loader
from resnetcls.data.transforms import (
    BatchTransform,
    ToNormalizedTensor,
    build_eval_batch_transform,
    build_eval_transform,
    build_train_transform,
    make_preprocess,
    stack_images,
)
from resnetcls.errors import UserError
from tests.data.test_loader import eval_batch


@pytest.mark.parametrize(
    "augment,interpolation",
    [("crop_flip", "bilinear"), ("resize", "bilinear"), ("crop_flip", "bicubic"), ("crop_flip", "nearest")],
)
def test_cached_eval_equals_the_eval_transform_that_predict_uses(photos, tmp_path, augment, interpolation):
    preprocess = make_preprocess(32, augment=augment, interpolation=interpolation)
    batch = eval_batch(photos, preprocess, 0, tmp_path / "cache")
    expected = torch.stack(
        [build_eval_transform(preprocess)(decode_image(photos.paths[i])) for i in batch["index"].tolist()]
    )
    assert batch["images"].dtype == torch.float32 and batch["images"].shape == (6, 3, 32, 32)
    assert torch.allclose(batch["images"], expected, atol=1e-5)  # float rounding only
    assert [os.path.basename(p) for p, _ in batch["bad"]] == ["broken.jpg"]
    # A larger stored size needs a second resize: equal up to resize rounding.
    bigger = eval_batch(photos, preprocess, 64, tmp_path / "cache")["images"]
    assert (bigger - expected).abs().mean() < 0.05


def test_eval_normalisation_is_bit_identical_to_torchvisions_and_refuses_what_is_not_rgb(photos):
    """predict's and serve's numpy normalisation gives torchvision's pixels exactly, on every photo size."""
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ours = ToNormalizedTensor(mean, std)
    theirs = T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean=mean, std=std)])
    readable = [p for p in photos.paths if not p.endswith("broken.jpg")]
    for path in readable:
        image = decode_image(path)
        got = ours(image)
        assert got.dtype == torch.float32 and torch.equal(got, theirs(image)), path
    with pytest.raises(ValueError, match="expected an RGB image"):
        ours(decode_image(readable[0]).convert("L"))
    one = ours(decode_image(readable[0]))
    assert stack_images([one]).shape == (1, *one.shape) and torch.equal(stack_images([one])[0], one)
    assert torch.equal(stack_images([one, one]), torch.stack([one, one]))


def test_train_batches_are_random_crops_flips_and_jitter_of_the_stored_images(photos, tmp_path):
    preprocess = make_preprocess(24)
    transform = build_train_transform(preprocess, color_jitter=0.4)
    loader = build_loader(photos, transform, 4, shuffle=True, num_workers=0, seed=1, cache_dir=tmp_path)
    seen, bad = [], []
    for batch in loader:
        seen += batch["index"].tolist()
        bad += batch["bad"]
        assert batch["images"].shape[1:] == (3, 24, 24) and batch["images"].dtype == torch.float32
        assert batch["labels"].tolist() == [photos.labels[i] for i in batch["index"].tolist()]
    assert sorted(seen) == [0, 1, 3, 4, 5, 6] and len(bad) == 1  # index 2 is the broken file
    lo = (0 - max(preprocess["mean"])) / min(preprocess["std"])
    hi = (1 - min(preprocess["mean"])) / min(preprocess["std"])
    first = next(iter(loader))["images"]
    assert lo - 1e-4 <= first.min() and first.max() <= hi + 1e-4


@pytest.mark.parametrize("augment", ["trivialaugment", "randaugment"])
def test_policy_and_erasing_in_train_crops_follow_the_sample_seeds(photos, tmp_path, augment):
    preprocess = make_preprocess(24)
    plain = build_train_transform(preprocess)
    policy = build_train_transform(preprocess, augment, random_erasing=0.5)
    store = open_or_build(photos.paths[:2], plain.geometry, tmp_path)
    images = [store.load(0), store.load(1)]

    def crops(transform, seeds):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)  # the crop boxes, as the loader seeds them per batch
            return transform.crops(images, seeds=seeds)

    base, a, b = crops(plain, None), crops(policy, [11, 12]), crops(policy, [11, 12])
    assert (
        a.shape == base.shape
        and a.dtype == torch.uint8
        and a.is_contiguous(memory_format=torch.channels_last)
    )
    assert torch.equal(a, b)  # same sample seeds, same batch
    others = [crops(policy, [s, s + 1]) for s in range(20, 26)]
    assert sum(not torch.equal(o, base) for o in others) >= 5  # the policy changes pixels beyond the crop
    assert len({o.numpy().tobytes() for o in others}) >= 5
    # evaluation never augments, whatever the training settings
    eval_tf = BatchTransform(preprocess, False, augment, random_erasing=1.0)
    assert torch.equal(
        eval_tf.crops(images, seeds=[1, 2]), build_eval_batch_transform(preprocess).crops(images)
    )


def test_unknown_augment_is_a_user_error_listing_the_choices():
    with pytest.raises(UserError, match="trivialaugment"):
        build_train_transform(make_preprocess(24), "autoaugment")


@pytest.mark.parametrize("augment", ["crop_flip", "resize", "trivialaugment", "randaugment"])
def test_train_crops_go_to_any_progressive_size_with_every_augmentation(photos, tmp_path, augment):
    preprocess = make_preprocess(48, augment=augment)
    transform = build_train_transform(preprocess, augment, random_erasing=1.0, color_jitter=0.3)
    store = open_or_build(photos.paths[:2], transform.geometry, tmp_path)
    images = [store.load(0), store.load(1)]
    for size in (16, 32, 48):
        batch = transform.crops(images, seeds=[3, 4], size=size)
        assert batch.shape == (2, 3, size, size) and batch.dtype == torch.uint8
        assert batch.is_contiguous(memory_format=torch.channels_last)
        assert transform.finish(batch).shape == (2, 3, size, size)
    # size=None is the final size: the same crops as asking for it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        default = transform.crops(images, seeds=[3, 4])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        assert torch.equal(default, transform.crops(images, seeds=[3, 4], size=48))


def test_eval_crops_refuse_another_size(photos, tmp_path):
    transform = build_eval_batch_transform(make_preprocess(32))
    store = open_or_build(photos.paths[:1], transform.geometry, tmp_path)
    with pytest.raises(ValueError, match="eval centre crop"):
        transform.crops([store.load(0)], size=16)


@pytest.mark.parametrize("mode", ["letterbox", "squash"])
def test_letterbox_and_squash_evaluate_the_whole_frame_in_every_path(photos, tmp_path, mode):
    """The cached eval batches equal predict's PIL transform; each store is keyed by the mode; training keeps
    the whole frame (the padding stays the mean colour, the frame is never cut)."""
    preprocess = make_preprocess(32, mode=mode)
    assert preprocess["resize_mode"] == {"letterbox": "letterbox", "squash": "square"}[mode]
    batch = eval_batch(photos, preprocess, 0, tmp_path / "cache")
    expected = torch.stack(
        [build_eval_transform(preprocess)(decode_image(photos.paths[i])) for i in batch["index"].tolist()]
    )
    assert torch.allclose(batch["images"], expected, atol=1e-5)
    crop_store = open_or_build(
        photos.paths[:1], build_eval_batch_transform(make_preprocess(32)).geometry, tmp_path
    )
    mode_store = open_or_build(photos.paths[:1], build_eval_batch_transform(preprocess).geometry, tmp_path)
    assert crop_store.directory != mode_store.directory  # a crop store is never read for another mode
    wide = mode_store.load(0)  # photo 0 is 97x61
    assert wide.shape == ((20, 32, 3) if mode == "letterbox" else (32, 32, 3))
    train = build_train_transform(preprocess)
    fill = torch.tensor([124, 116, 104], dtype=torch.uint8).view(3, 1)
    for seed in range(4):
        torch.manual_seed(seed)
        crop = train.crops([wide], seeds=[seed])[0]
        content = (crop != fill.view(3, 1, 1)).any(0)  # where the frame is (the padding is the mean colour)
        rows, cols = content.any(1).nonzero(), content.any(0).nonzero()
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert 0.8 * 32 - 1 <= width <= 32 and (width / height > 1.3 if mode == "letterbox" else True)
