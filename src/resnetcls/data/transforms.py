"""Train and eval transforms. The eval preprocessing is stored in model.json and rebuilt from it here,
so predict/serve/export preprocess exactly as evaluation did."""
from __future__ import annotations

import torch
from torchvision.transforms import v2 as T
from torchvision.transforms.functional import InterpolationMode

from ..errors import UserError

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


def build_train_transform(preprocess: dict, augment: str = "crop_flip", min_crop_scale: float = 0.25) -> T.Compose:
    """Training augmentation: random-resized-crop + horizontal flip, or the seed's plain resize."""
    if augment == "resize":
        return build_eval_transform(preprocess)
    if augment != "crop_flip":
        raise UserError(f"data.augment={augment!r}: expected crop_flip or resize")
    size, interp = preprocess["image_size"], INTERPOLATIONS[preprocess["interpolation"]]
    geometry = [T.RandomResizedCrop(size, scale=(min_crop_scale, 1.0), interpolation=interp, antialias=True),
                T.RandomHorizontalFlip()]
    return T.Compose(geometry + _to_normalized(preprocess))
