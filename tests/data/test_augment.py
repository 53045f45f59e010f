"""data/augment.py: the per-image policies and random erasing on uint8 crops, Mixup/CutMix with soft targets;
each does to the images what it says, and the same seed gives the same result."""

import pytest
import torch

from resnetcls.data.augment import BatchMix, SampleAugment
from resnetcls.errors import UserError

MEAN = (0.485, 0.456, 0.406)


def noise(seed=0, n=None, size=32):
    g = torch.Generator().manual_seed(seed)
    shape = (3, size, size) if n is None else (n, 3, size, size)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)


def test_random_erasing_with_p_1_leaves_one_constant_rectangle_of_the_mean_colour():
    erase = SampleAugment("crop_flip", 1.0, MEAN)
    fill = torch.tensor([round(255 * m) for m in MEAN], dtype=torch.uint8).view(3, 1, 1)
    for seed in range(5):
        x = noise(seed)
        y = erase(x, seed)
        assert y.shape == x.shape and y.dtype == torch.uint8
        changed = (y != x).any(0)
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        box = y[:, top:bottom, left:right]
        assert torch.equal(
            box, fill.expand_as(box)
        )  # the whole bounding box of the change is the fill colour
        outside = torch.ones(32, 32, dtype=torch.bool)
        outside[top:bottom, left:right] = False
        assert torch.equal(y[:, outside], x[:, outside])  # and nothing outside it moved
        assert 0.02 * 32 * 32 * 0.5 <= box[0].numel() <= 0.33 * 32 * 32 * 1.5


def test_random_erasing_with_p_0_and_no_policy_is_off():
    assert not SampleAugment("crop_flip", 0.0).active
    with pytest.raises(UserError, match="data.random_erasing"):
        SampleAugment("crop_flip", 1.5)


@pytest.mark.parametrize("policy", ["trivialaugment", "randaugment"])
def test_policies_change_pixels_keep_shape_and_dtype_and_follow_the_seed(policy):
    augment = SampleAugment(policy, 0.0)
    x = noise(1)
    outputs = [augment(x, seed) for seed in range(8)]
    assert all(y.shape == x.shape and y.dtype == torch.uint8 for y in outputs)
    assert sum(not torch.equal(y, x) for y in outputs) >= 6  # an identity op may be drawn now and then
    assert len({y.numpy().tobytes() for y in outputs}) >= 6  # different seeds, different ops
    assert all(torch.equal(augment(x, seed), outputs[seed]) for seed in range(8))  # same seed, same image
    state = torch.get_rng_state()
    augment(x, 123)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left as it was


def partners(targets):
    """Per row: (own weight, partner index, partner weight) when labels are 0..n-1 (class i = image i)."""
    out = []
    for i, row in enumerate(targets):
        others = [(float(w), j) for j, w in enumerate(row) if j != i and w > 0]
        out.append((float(row[i]),) + ((others[0][1], others[0][0]) if others else (i, 0.0)))
    return out


def test_mixup_is_a_convex_blend_of_two_images_with_matching_soft_targets():
    x, labels = noise(2, n=6).float(), torch.arange(6)
    for seed in range(4):
        y, targets = BatchMix(0.4, 0.0, 6)(x, labels, seed)
        assert targets.shape == (6, 6) and torch.allclose(targets.sum(1), torch.ones(6))
        own = {round(w, 6) for w, _, _ in partners(targets)}
        for i, (w, j, _) in enumerate(partners(targets)):
            lam = w if j != i else 1.0
            assert torch.allclose(y[i], lam * x[i] + (1 - lam) * x[j], atol=1e-4)
        assert len(own - {1.0}) <= 1  # one lambda for the batch
    assert not all(torch.equal(BatchMix(0.4, 0.0, 6)(x, labels, s)[0], x) for s in range(4))


def test_cutmix_pastes_one_box_and_the_label_weights_are_its_area_share():
    x, labels = noise(3, n=6).float(), torch.arange(6)
    pasted = 0
    for seed in range(6):
        y, targets = BatchMix(0.0, 1.0, 6)(x, labels, seed)
        assert torch.allclose(targets.sum(1), torch.ones(6))
        for i, (w, j, wj) in enumerate(partners(targets)):
            changed = (y[i] != x[i]).any(0)
            if j == i:
                assert not changed.any()
                continue
            pasted += 1
            rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
            box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
            assert torch.equal(y[i][:, box[0], box[1]], x[j][:, box[0], box[1]])  # the partner's pixels
            area = (box[0].stop - box[0].start) * (box[1].stop - box[1].start) / (32 * 32)
            assert wj == pytest.approx(area, abs=1e-6) and w == pytest.approx(1 - area, abs=1e-6)
    assert pasted >= 6


def test_the_same_seed_gives_the_same_mixed_batch_and_alphas_are_checked():
    x, labels = noise(4, n=5).float(), torch.tensor([0, 1, 2, 0, 1])
    mix = BatchMix(0.2, 1.0, 3)
    a, b = mix(x, labels, 7), mix(x, labels, 7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert any(not torch.equal(mix(x, labels, s)[0], a[0]) for s in range(8, 12))
    assert not BatchMix(0.0, 0.0, 3).active
    with pytest.raises(UserError, match="data.cutmix"):
        BatchMix(0.0, -1.0, 3)


@pytest.mark.parametrize("size", [16, 40, 64])
def test_every_augmentation_works_at_each_progressive_size(size):
    """Progressive resizing hands the augmentations smaller images early on: shapes and soft targets hold."""
    images = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8)
    for policy in ("trivialaugment", "randaugment"):
        out = SampleAugment(policy, 1.0)(images[0], seed=size)
        assert out.shape == (3, size, size) and out.dtype == torch.uint8
    for mixup, cutmix in ((0.2, 0.0), (0.0, 1.0)):
        mixed, targets = BatchMix(mixup, cutmix, 3)(images.float(), torch.tensor([0, 1, 2, 0]), seed=size)
        assert mixed.shape == (4, 3, size, size)
        assert torch.allclose(targets.sum(1), torch.ones(4))


def test_augment_on_resolves_per_device_and_names_a_bad_value():
    from resnetcls.data.augment import resolve_augment_on

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [resolve_augment_on(v, cpu) for v in ("auto", "host", "device")] == [False, False, True]
    assert [resolve_augment_on(v, cuda) for v in ("auto", "host", "device")] == [True, False, True]
    with pytest.raises(UserError, match=r"data.augment_on='gpu': expected one of auto, host, device"):
        resolve_augment_on("gpu", cpu)


def test_device_crops_follow_the_drawn_boxes_and_flips_exactly():
    """The whole canvas at its own size is the canvas itself; a flip mirrors it; a half box is that half,
    resized; the draws repeat under the same seed."""
    from resnetcls.data.augment import DeviceCrops
    from resnetcls.data.transforms import _crop_box

    crops = DeviceCrops(8, (0.25, 1.0), SampleAugment("crop_flip", 0.0), _crop_box)
    canvas = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    whole = {
        "boxes": torch.tensor([[0.0, 0, 8, 8]] * 2),
        "flips": torch.tensor([False, True]),
        "seeds": torch.tensor([1, 2]),
    }
    out = crops.apply(canvas, whole, 8)
    assert out.dtype == torch.uint8 and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out[0], canvas[0]) and torch.equal(out[1], canvas[1].flip(-1))
    left = {
        "boxes": torch.tensor([[0.0, 0, 8, 4]]),
        "flips": torch.tensor([False]),
        "seeds": torch.tensor([1]),
    }
    flat = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    flat[..., :4] = 200  # the left half is bright, the right dark: the crop of the left half is all bright
    assert crops.apply(flat, left, 4).min() == 200
    torch.manual_seed(5)
    a = crops.draw(3, None)
    torch.manual_seed(5)
    b = crops.draw(3, None)
    assert all(torch.equal(a[k], b[k]) for k in a) and (a["boxes"][:, 2:] <= 8).all()
