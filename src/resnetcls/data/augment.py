"""Training augmentations beyond crop and flip: a per-image policy (TrivialAugment-wide, RandAugment) and
random erasing on uint8 crops, and Mixup/CutMix on whole batches with soft targets.

Both are seeded, never drawn from a stream whose state depends on what ran before: the per-image ops run
under torch's RNG seeded with that sample's seed from data/sampler.py (torchvision's v2 transforms draw from
the global RNG), and a batch's Mixup/CutMix draws from a NumPy generator seeded with the batch's seed. A
resumed run therefore augments every sample exactly as the uninterrupted run did.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.ops import roi_align
from torchvision.transforms import v2 as T

from ..errors import UserError

POLICIES = ("trivialaugment", "randaugment")


def build_policy(augment: str):
    """The torchvision v2 policy for data.augment, or None for the geometry-only modes."""
    if augment == "trivialaugment":
        return T.TrivialAugmentWide()  # Müller & Hutter 2021: one op, uniform magnitude, wide ranges
    if augment == "randaugment":
        return T.RandAugment(num_ops=2, magnitude=9)  # Cubuk et al. 2020; timm's rand-m9-n2
    return None


class SampleAugment:
    """Per image, on a (3, S, S) uint8 crop: the policy (if any), then random erasing with probability
    `erasing`, which fills one rectangle (2-33% of the image, aspect 0.3-3.3, torchvision's defaults) with the
    mean colour, so the erased area normalises to about zero."""

    def __init__(self, augment: str, erasing: float, mean=(0.485, 0.456, 0.406)) -> None:
        if not 0 <= erasing <= 1:
            raise UserError(f"data.random_erasing={erasing}: must be in [0, 1]")
        self.policy = build_policy(augment)
        fill = [int(round(255 * m)) for m in mean]
        self.erase = T.RandomErasing(p=erasing, value=fill) if erasing > 0 else None

    @property
    def active(self) -> bool:
        return self.policy is not None or self.erase is not None

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """The augmented image (same shape and dtype), a function of (image, seed) only."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.policy is not None:
                image = self.policy(image)
            if self.erase is not None:
                image = self.erase(image)
        return image


def mix_seed(seed: int) -> int:
    """The seed of a batch's Mixup/CutMix draw, kept apart from the crop draws seeded by the same number."""
    return (seed * 6364136223846793005 + 1442695040888963407) % 2**63


class BatchMix:
    """Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a normalised float batch, with soft targets.

    mixup / cutmix: the Beta(alpha, alpha) parameters; 0 turns one off. With both on, each batch uses one of
    them, chosen with equal odds (as timm does). The partner of image i is image perm[i] of the same batch.
    CutMix's label weight is the share of the image left outside the pasted box (after clipping to the
    image), so the weights are the pixel shares exactly.
    """

    def __init__(self, mixup: float, cutmix: float, num_classes: int) -> None:
        for key, alpha in (("data.mixup", mixup), ("data.cutmix", cutmix)):
            if not (math.isfinite(alpha) and alpha >= 0):
                raise UserError(f"{key}={alpha}: must be 0 (off) or a positive Beta alpha, e.g. 0.2 or 1.0")
        self.mixup, self.cutmix, self.num_classes = mixup, cutmix, num_classes

    @property
    def active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, seed: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, (N, num_classes) float targets whose rows sum to 1, or for multi-hot labels (N, C)
        the mixed multi-hot rows); seed None draws one from torch."""
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()))
        rng = np.random.default_rng(mix_seed(seed))
        n, _, h, w = images.shape
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or rng.random() < 0.5)
        lam = float(rng.beta(*(2 * [self.cutmix if use_cutmix else self.mixup])))
        perm = torch.from_numpy(rng.permutation(n)).to(images.device)
        if use_cutmix:
            y0, y1, x0, x1 = cutmix_box(h, w, lam, rng)
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
            images = images.clone()
            images[:, :, y0:y1, x0:x1] = images[perm][:, :, y0:y1, x0:x1]
        else:
            images = images * lam + images[perm] * (1.0 - lam)
        # multi-label batches arrive as multi-hot rows (N, C): their rows are mixed alike
        rows = (
            labels.float()
            if labels.ndim == 2
            else torch.nn.functional.one_hot(labels, self.num_classes).float()
        )
        return images, rows * lam + rows[perm] * (1.0 - lam)


def cutmix_box(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of about (1 - lam) of the image's area around a uniform centre, clipped: (y0, y1, x0, x1)."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    return (max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w))


AUGMENT_ON = ("auto", "host", "device")


def resolve_augment_on(augment_on: str, device: torch.device) -> bool:
    """Whether training crops, flips and the per-image policy run on the training device (data.augment_on):
    auto = on a CUDA device (the GPU then does what the DataLoader workers would), host = in the workers."""
    if augment_on not in AUGMENT_ON:
        raise UserError(f"data.augment_on={augment_on!r}: expected one of {', '.join(AUGMENT_ON)}")
    return augment_on == "device" or (augment_on == "auto" and device.type == "cuda")


class DeviceCrops:
    """data.augment_on=device: random-resized-crop + flip, then the policy and random erasing, on the device.

    The DataLoader workers only copy each stored image's centre canvas x canvas square (the whole image with
    square storage; the long side's edges are left out otherwise) into the uint8 batch, and draw the crop
    boxes, flips and sample seeds (draw(), under the same seeded RNG as the host path, so a resumed run draws
    the same numbers). apply() then crops and resizes the whole batch in one roi_align call on the batch's
    device (adaptive sampling averages about one sample per source pixel, an area filter when shrinking)."""

    def __init__(self, canvas: int, scale: tuple[float, float], sample: SampleAugment, crop_box) -> None:
        self.canvas, self.scale, self.sample, self._crop_box = canvas, scale, sample, crop_box

    def draw(self, n: int, seeds: list[int] | None) -> dict:
        """{boxes (N, 4) top/left/height/width in canvas pixels, flips (N,) bool, seeds (N,) int64}."""
        draws, flips = torch.rand(n, 10, 4).tolist(), torch.rand(n) < 0.5
        boxes = torch.tensor(
            [self._crop_box(self.canvas, self.canvas, self.scale, d) for d in draws], dtype=torch.float32
        )
        if seeds is None:
            seeds = torch.randint(0, 2**62, (n,)).tolist()
        return {"boxes": boxes, "flips": flips, "seeds": torch.tensor(seeds, dtype=torch.int64)}

    def apply(self, canvas: torch.Tensor, params: dict, size: int) -> torch.Tensor:
        """(N, 3, C, C) uint8 canvases (any device) -> (N, 3, size, size) uint8 channels-last crops there."""
        dev, n = canvas.device, canvas.shape[0]
        b = params["boxes"].to(dev)
        top, left, h, w = b.unbind(1)
        rois = torch.stack(
            [torch.arange(n, device=dev, dtype=torch.float32), left, top, left + w, top + h], 1
        )
        out = roi_align(
            canvas.float(), rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True
        )
        flips = params["flips"].to(dev).view(-1, 1, 1, 1)
        out = torch.where(flips, out.flip(-1), out).round_().clamp_(0, 255).to(torch.uint8)
        out = out.contiguous(memory_format=torch.channels_last)
        if self.sample.active:
            for k, seed in enumerate(
                params["seeds"].tolist()
            ):  # each image under its own seed, as on the host
                out[k].copy_(self.sample(out[k], seed))
        return out
