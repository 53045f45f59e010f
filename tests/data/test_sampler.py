"""ResumableSampler: exact mid-epoch resume with per-sample seeds; balanced sampling; the progressive
resizing schedule."""

import pytest
import torch

from resnetcls.data.sampler import ResumableSampler, full_size_epochs, progressive_size, progressive_sizes
from resnetcls.utils.limits import MIN_IMAGE_SIZE


def test_sampler_resumes_at_the_exact_sample_and_seeds_each_sample():
    sampler = ResumableSampler(list(range(10)) * 3, "shuffle", seed=3)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.set_epoch(2, position=7)
    rest = list(sampler)
    assert rest == whole[7:] and [i.seed for i in rest] == [i.seed for i in whole[7:]]
    sampler.set_epoch(3)
    assert sorted(sampler) == sorted(whole) and list(sampler) != whole  # a new order each epoch


def test_balanced_sampler_draws_rare_classes_as_often():
    labels = [0] * 900 + [1] * 100
    sampler = ResumableSampler(labels, "balanced", seed=0)
    drawn = torch.tensor([labels[i] for i in sampler])
    assert len(drawn) == 1000 and 400 < int((drawn == 1).sum()) < 600


@pytest.mark.parametrize(
    "epochs, image_size, progressive, sizes",
    [
        (
            16,
            128,
            0.5,
            [64, 64, 64, 80, 80, 80, 96, 96, 96, 112, 112, 112, 128, 128, 128, 128],
        ),  # the docstring's
        (10, 128, 0.5, [64, 64, 80, 80, 96, 96, 112, 128, 128, 128]),
        (4, 224, 0.5, [112, 144, 176, 224]),
        (2, 32, 0.5, [16, 32]),
        (1, 64, 0.5, [64]),  # one epoch: it must be at the final size
        (5, 40, 0.3, [8, 16, 16, 40, 40]),  # 12 px rounds down to 0: never below the smallest size
        (6, 96, 0.0, [96] * 6),  # off
    ],
)
def test_progressive_schedule_has_the_documented_sizes(epochs, image_size, progressive, sizes):
    assert progressive_sizes(epochs, image_size, progressive) == sizes
    assert [progressive_size(e, epochs, image_size, progressive) for e in range(1, epochs + 1)] == sizes


@pytest.mark.parametrize("epochs", [1, 2, 3, 7, 16, 90])
@pytest.mark.parametrize("image_size, progressive", [(224, 0.5), (160, 0.25), (32, 0.7), (100, 0.4)])
def test_progressive_schedule_grows_to_the_final_size_for_its_last_quarter(epochs, image_size, progressive):
    sizes = progressive_sizes(epochs, image_size, progressive)
    assert sizes == sorted(sizes) and len(sizes) == epochs
    assert all(MIN_IMAGE_SIZE <= s <= image_size for s in sizes)
    assert all(s % 16 == 0 or s in (image_size, MIN_IMAGE_SIZE) for s in sizes)
    final = full_size_epochs(epochs)
    assert final >= 1 and final >= epochs / 4 and sizes[-final:] == [image_size] * final
    if epochs >= 4:
        assert sizes[0] < image_size  # it does start smaller


def test_set_epoch_records_the_epochs_training_size():
    sampler = ResumableSampler(list(range(4)), "shuffle", seed=0)
    assert sampler.image_size is None  # the transform's own size until an epoch says otherwise
    sampler.set_epoch(2, 0, 48)
    assert sampler.image_size == 48
    sampler.set_epoch(3)
    assert sampler.image_size is None
