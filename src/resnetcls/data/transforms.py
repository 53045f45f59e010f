"""Train and eval transforms. The eval preprocessing is stored in model.json and rebuilt from it here,
so predict/serve/export preprocess exactly as evaluation did."""
from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.functional import InterpolationMode

from ..errors import UserError
from .cache import StoreGeometry

INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                  "nearest": InterpolationMode.NEAREST}


def make_preprocess(image_size: int, resize_size: int = 0, augment: str = "crop_flip",
                    interpolation: str = "bilinear", mean=(0.485, 0.456, 0.406),
                    std=(0.229, 0.224, 0.225)) -> dict:
    """The eval preprocessing record that travels in model.json.

    resize_mode "shorter_side": resize the short side to `resize`, centre-crop image_size (the usual eval for
    random-resized-crop training); "square": resize straight to image_size x image_size (the seed's plain
    resize, which matches its training exactly).
    """
    if interpolation not in INTERPOLATIONS:
        raise UserError(f"data.interpolation={interpolation!r}: expected one of {', '.join(INTERPOLATIONS)}")
    square = augment == "resize"
    resize = image_size if square else (resize_size or round(image_size / 0.875))
    return {"image_size": image_size, "resize": resize, "resize_mode": "square" if square else "shorter_side",
            "interpolation": interpolation, "mean": list(mean), "std": list(std)}


def _to_normalized(preprocess: dict) -> list:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean=preprocess["mean"], std=preprocess["std"])]


def build_eval_transform(preprocess: dict) -> T.Compose:
    """PIL RGB image -> normalised float tensor (3, S, S), as recorded in preprocess."""
    size, interp = preprocess["image_size"], INTERPOLATIONS[preprocess["interpolation"]]
    if preprocess.get("resize_mode") == "square":
        geometry = [T.Resize((size, size), interpolation=interp, antialias=True)]
    else:
        geometry = [T.Resize(preprocess["resize"], interpolation=interp, antialias=True), T.CenterCrop(size)]
    return T.Compose(geometry + _to_normalized(preprocess))


def build_pil_train_transform(preprocess: dict, augment: str = "crop_flip",
                              min_crop_scale: float = 0.25) -> T.Compose:
    """The single-image (PIL) form of the training augmentation, for callers without batches."""
    if augment == "resize":
        return build_eval_transform(preprocess)
    _check_augment(augment)
    size, interp = preprocess["image_size"], INTERPOLATIONS[preprocess["interpolation"]]
    geometry = [T.RandomResizedCrop(size, scale=(min_crop_scale, 1.0), interpolation=interp, antialias=True),
                T.RandomHorizontalFlip()]
    return T.Compose(geometry + _to_normalized(preprocess))


def _check_augment(augment: str) -> None:
    if augment not in ("crop_flip", "resize"):
        raise UserError(f"data.augment={augment!r}: expected crop_flip or resize")


class BatchTransform:
    """Stored uint8 images (HWC, as the decoded cache holds them) -> normalised float batches.

    Per image, on uint8: the geometry (train: random-resized-crop; eval: the recorded resize + centre crop).
    Per batch: horizontal flip and colour jitter (train), then float conversion and normalisation.
    The eval path reproduces build_eval_transform(preprocess) on the original image exactly when the store
    size equals preprocess["resize"] (the default), and up to resize rounding otherwise.
    """

    def __init__(self, preprocess: dict, train: bool, augment: str = "crop_flip", min_crop_scale: float = 0.25,
                 color_jitter: float = 0.0, store_size: int = 0) -> None:
        _check_augment(augment)
        square = preprocess.get("resize_mode") == "square"
        size = store_size or preprocess["resize"]
        if size < preprocess["image_size"]:
            raise UserError(f"data.cache_size={size}: must be at least data.image_size={preprocess['image_size']}")
        if not 0 <= color_jitter < 1:
            raise UserError(f"data.color_jitter={color_jitter}: must be in [0, 1)")
        self.preprocess, self.augment = preprocess, augment
        self.random = train and augment == "crop_flip"
        self.scale, self.jitter = (min_crop_scale, 1.0), color_jitter if train else 0.0
        self.geometry = StoreGeometry(size, square, preprocess["interpolation"])
        self.interp = INTERPOLATIONS[preprocess["interpolation"]]

    def crop(self, image: np.ndarray) -> torch.Tensor:
        """HWC uint8 stored image -> CHW uint8 (3, S, S)."""
        s, p = self.preprocess["image_size"], self.preprocess
        chw = torch.from_numpy(image).permute(2, 0, 1)  # a view: HWC memory is channels-last, the fast path
        if self.random:
            top, left, h, w = RandomResizedCrop.get_params(chw, self.scale, (3 / 4, 4 / 3))
            return F.resized_crop(chw, top, left, h, w, [s, s], interpolation=self.interp, antialias=True)
        if self.geometry.square:
            out = chw if self.geometry.size == s else F.resize(chw, [s, s], interpolation=self.interp,
                                                              antialias=True)
        else:
            out = chw if self.geometry.size == p["resize"] else F.resize(chw, [p["resize"]],
                                                                         interpolation=self.interp, antialias=True)
            out = F.center_crop(out, [s, s])
        return out.contiguous()

    def finish(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) uint8 -> normalised float32; flips and jitter are drawn per image."""
        if self.random:
            flip = torch.rand(batch.shape[0]) < 0.5
            batch[flip] = batch[flip].flip(-1)
        x = F.to_dtype(batch, torch.float32, scale=True)
        if self.jitter:
            x = _color_jitter(x, self.jitter)
        return F.normalize(x, mean=self.preprocess["mean"], std=self.preprocess["std"])


def _color_jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Brightness, contrast and saturation, each by a factor in [1-strength, 1+strength] drawn per image."""
    n = x.shape[0]
    b, c, s = (1 + strength * (2 * torch.rand(3, n, 1, 1, 1) - 1)).unbind(0)
    x = x * b
    mean = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    return ((x - gray) * s + gray).clamp_(0, 1)


def build_train_transform(preprocess: dict, augment: str = "crop_flip", min_crop_scale: float = 0.25,
                          color_jitter: float = 0.0, store_size: int = 0) -> BatchTransform:
    """Training augmentation on uint8 batches: random-resized-crop + flip (+ jitter), or the seed's plain resize."""
    return BatchTransform(preprocess, True, augment, min_crop_scale, color_jitter, store_size)


def build_eval_batch_transform(preprocess: dict, store_size: int = 0) -> BatchTransform:
    """The eval preprocessing on stored uint8 images (what build_eval_transform does to one PIL image)."""
    return BatchTransform(preprocess, False, store_size=store_size)
