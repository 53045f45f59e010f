"""Batched uint8 transforms: the eval path gives predict's pixels; training crops, flips and jitters."""
import os

import pytest
import torch

from resnetcls.data.decode import decode_image
from resnetcls.data.loader import build_loader
from resnetcls.data.transforms import build_eval_transform, build_train_transform, make_preprocess
from tests.data.test_loader import eval_batch


@pytest.mark.parametrize("augment,interpolation", [("crop_flip", "bilinear"), ("resize", "bilinear"),
                                                   ("crop_flip", "bicubic"), ("crop_flip", "nearest")])
def test_cached_eval_equals_the_eval_transform_that_predict_uses(photos, tmp_path, augment, interpolation):
    preprocess = make_preprocess(32, augment=augment, interpolation=interpolation)
    batch = eval_batch(photos, preprocess, 0, tmp_path / "cache")
    expected = torch.stack([build_eval_transform(preprocess)(decode_image(photos.paths[i]))
                            for i in batch["index"].tolist()])
    assert batch["images"].dtype == torch.float32 and batch["images"].shape == (6, 3, 32, 32)
    assert torch.allclose(batch["images"], expected, atol=1e-5)  # float rounding only
    assert [os.path.basename(p) for p, _ in batch["bad"]] == ["broken.jpg"]
    # A larger stored size needs a second resize: equal up to resize rounding.
    bigger = eval_batch(photos, preprocess, 64, tmp_path / "cache")["images"]
    assert (bigger - expected).abs().mean() < 0.05


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
