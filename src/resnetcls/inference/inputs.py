"""What Predictor.predict takes, turned into one item per image: a path, a PIL image, or an HxWx3 (HxWx4, HxW)
array that data/decode.py reads by the same rules as a file.

Accepted: a path (str or os.PathLike); a PIL image; a numpy array HxWxC or CxHxW (C 3, 4 or 1), or a 4-D
batch of them (NxHxWxC, NxCxHxW); a torch tensor CxHxW, or NxCxHxW for a batch; uint8 pixels or floats in
[0, 1] (rounded to the nearest of 256 levels, as a decoded file has); or a list (any iterable) of single
images. A 4-D array or tensor gives one prediction per image. Anything else, an array whose layout cannot be
told (e.g. 3x224x3), or floats outside [0, 1] is refused with one line saying what was given and what is
accepted.

ImageLoader: one item -> the model's normalised input, through the fast eval path (JPEG draft decoding and
one crop-box resize, data/geometry.py) or the exact one (decode_image + build_eval_transform).

expand_inputs: the PATH arguments of `resnetcls predict` and `rank` (files, folders, globs, CSV files) ->
image paths in order.
"""

from __future__ import annotations

import csv
import glob
import os
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.decode import MAX_PIXELS, DecodeError, decode_image, decode_in_memory, is_image_file
from ..data.geometry import crop_resize, decode_eval, draft_short_side
from ..data.transforms import ToNormalizedTensor, build_eval_transform
from ..errors import UserError

# What Predictor.predict takes (see the module docstring).
ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor
ACCEPTS = (
    "accepted: a path, a PIL image, a numpy array HxWxC or CxHxW (NxHxWxC or NxCxHxW for a batch), a torch "
    "tensor CxHxW (NxCxHxW for a batch), uint8 or float in [0, 1], C 3 (RGB), 4 (RGBA) or 1, or a list of "
    "single images"
)
CHANNELS_LAST = (1, 3, 4)  # HxWxC
CHANNELS_FIRST = (1, 3, 4)  # CxHxW


@dataclass
class Inputs:
    """The images of one predict call: one item each, how results name it (input_name), and whether the call
    named a single image (one path, PIL image or 2-D/3-D array, not a list or a batch)."""

    items: list
    names: list[str]
    single: bool


def input_name(item, index: int, kind: str = "array") -> str:
    """How results and errors name an input: its path; a PIL image's filename; else "<image N>" or "<array N>"
    ("<tensor N>" for a torch tensor's images; N the image's position in the call)."""
    if isinstance(item, Image.Image):
        return getattr(item, "filename", "") or f"<image {index}>"
    if isinstance(item, np.ndarray):
        return f"<{kind} {index}>"
    return str(item) if isinstance(item, (str, os.PathLike)) else f"<input {index}>"


def describe(value) -> str:
    """What a refused input is: its type, and for arrays and tensors the shape, dtype and value range."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        kind = "torch tensor"
        value = value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
    elif isinstance(value, np.ndarray):
        kind = "numpy array"
    else:
        kind = f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
        return f"a value of type {kind}"
    text = f"a {kind} of shape {tuple(value.shape)} and dtype {value.dtype}"
    if value.size and (value.dtype.kind in "fiub"):
        text += f", values {value.min():.4g} to {value.max():.4g}"
    return text


def refuse(name: str, value, why: str = "") -> UserError:
    """The one-line error for an input predict cannot use."""
    return UserError(f"{name}: got {describe(value)}{'; ' + why if why else ''}; {ACCEPTS}")


def _to_uint8(pixels: np.ndarray, name: str, original) -> np.ndarray:
    """uint8 stays; floats in [0, 1] become the nearest of 256 levels; anything else is refused."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype.kind != "f":
        raise refuse(name, original, f"dtype {pixels.dtype} is neither uint8 nor float")
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
        raise refuse(name, original, "float pixels must lie in [0, 1] (divide 0-255 values by 255)")
    return np.rint(pixels.astype(np.float32) * 255).astype(np.uint8)


def _layout(shape: tuple[int, ...], name: str, original) -> str:
    """ "hwc" or "chw" for a 3-D image shape; refused when neither or both fit."""
    last, first = shape[-1] in CHANNELS_LAST, shape[0] in CHANNELS_FIRST
    if last and first:
        raise refuse(name, original, "cannot tell whether the channels come first or last")
    if not (last or first):
        raise refuse(name, original, "no axis of 1, 3 or 4 channels at either end")
    return "hwc" if last else "chw"


def _hwc_image(pixels: np.ndarray, layout: str) -> np.ndarray:
    """One image (3-D, in `layout`) -> HxWxC, with one channel squeezed to HxW (grayscale)."""
    hwc = pixels.transpose(1, 2, 0) if layout == "chw" else pixels
    return np.ascontiguousarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc)


def _array_images(value, name: str, allow_batch: bool) -> list[np.ndarray]:
    """A numpy array or torch tensor -> HxWxC (or HxW) uint8 arrays, one per image."""
    is_tensor = isinstance(value, torch.Tensor)
    if is_tensor:
        tensor = value.detach().cpu()
        pixels = (tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor).numpy()
    else:
        pixels = value
    if pixels.size == 0:
        raise refuse(name, value, "it is empty")
    if pixels.ndim == 2 and not is_tensor:
        return [pixels if pixels.dtype == np.uint16 else _to_uint8(pixels, name, value)]
    if pixels.ndim == 4 and not allow_batch:
        raise refuse(name, value, "a list item must be one image (pass a 4-D batch on its own)")
    if pixels.ndim not in (3, 4):
        raise refuse(name, value, f"{pixels.ndim} dimensions")
    layout = "chw" if is_tensor else _layout(pixels.shape[-3:], name, value)
    if is_tensor and pixels.shape[-3] not in CHANNELS_FIRST:
        raise refuse(name, value, "a tensor's channels (1, 3 or 4) come first: CxHxW or NxCxHxW")
    pixels = _to_uint8(pixels, name, value)
    batch = pixels if pixels.ndim == 4 else pixels[None]
    return [_hwc_image(image, layout) for image in batch]


def _one(value, name: str, allow_batch: bool) -> list:
    if isinstance(value, (str, os.PathLike, Image.Image)):
        return [value]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return _array_images(value, name, allow_batch)
    raise refuse(name, value)


def to_items(images: ImageInput | typing.Sequence[ImageInput]) -> Inputs:
    """predict's `images` -> one item per image (path, PIL image or HxWxC/HxW uint8 array) and its name;
    UserError naming the input (images[i] inside a list) for one that is refused."""
    one = (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)
    if not isinstance(images, one) and isinstance(images, typing.Iterable):  # a list, tuple, generator...
        values, single = list(images), False
        names = [f"images[{i}]" for i in range(len(values))]
        converted = [_one(value, name, False) for value, name in zip(values, names)]
    else:
        values, single = [images], not (isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4)
        converted = [_one(images, "images", allow_batch=True)]
    items, names = [], []
    for value, group in zip(values, converted):
        kind = "tensor" if isinstance(value, torch.Tensor) else "array"
        for item in group:
            names.append(input_name(item, len(items), kind))
            items.append(item)
    return Inputs(items, names, single)


class LookupNormalise:
    """S x S RGB image -> (3, S, S) float32 (x / 255 - mean) / std, bit-identical to ToNormalizedTensor: its
    256 values per channel computed once, then one table lookup a pixel (0.25 against 0.6 ms at 224 px)."""

    def __init__(self, mean, std) -> None:
        levels = np.arange(256, dtype=np.uint8).reshape(1, 256, 1).repeat(3, axis=2)
        self.table = ToNormalizedTensor(mean, std)(levels).numpy()[:, 0, :].copy()  # (3, 256)

    def __call__(self, image) -> torch.Tensor:
        pixels = np.asarray(image)
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"expected an RGB image (HxWx3 uint8), got {pixels.dtype} {pixels.shape}")
        out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
        for channel in range(3):
            np.take(self.table[channel], pixels[:, :, channel], out=out[channel])
        return torch.from_numpy(out)


class ImageLoader:
    """A path, file bytes, PIL image or HxWxC/HxW uint8 array -> the model's normalised (3, S, S) input.

    fast (the default for predict and serve): a JPEG file is decoded at the smallest of 1/8, 1/4, 1/2 of its
    size that keeps the shorter side at least the eval resize (JPEG draft mode), and the region the centre
    crop keeps is resized straight to S x S (data/geometry.py's crop_resize), instead of decoding every pixel
    and resizing the whole frame. Images in memory and other formats take the one crop-box resize only,
    which gives the exact path's pixels up to rounding; the draft decode changes pixels slightly (the
    agreement with the exact path is measured in docs/benchmarks.md). Normalising is a table lookup with the
    exact path's values. fast=False, and resize modes without a
    crop box, take the exact path: decode_image + build_eval_transform, what eval uses.
    """

    def __init__(self, preprocess: dict, fast: bool = True) -> None:
        self.preprocess = preprocess
        self.transform = build_eval_transform(preprocess)
        self.normalise = LookupNormalise(preprocess["mean"], preprocess["std"])
        self.fast = fast and draft_short_side(preprocess) > 0

    def __call__(self, item, name: str = "", max_pixels: int = MAX_PIXELS) -> torch.Tensor:
        """Raises DecodeError naming the input (name, else its path or "<image N>") when it cannot be read."""
        if isinstance(item, (str, os.PathLike, bytes)):
            label = name or (None if isinstance(item, bytes) else str(item))
            if self.fast:
                return self.normalise(decode_eval(item, self.preprocess, label, max_pixels))
            return self.transform(decode_image(item, label, max_pixels))
        image = decode_in_memory(item, name or input_name(item, 0), max_pixels)
        if self.fast:
            return self.normalise(crop_resize(image, self.preprocess))
        return self.transform(image)


def _paths_from_csv(csv_path: Path) -> list[str]:
    """The `path` column (or, without that header, the first column); relative paths are from the CSV."""
    try:
        rows = [r for r in csv.reader(csv_path.read_text(encoding="utf-8-sig").splitlines()) if any(r)]
    except (OSError, UnicodeDecodeError) as e:
        raise DecodeError(csv_path, f"cannot read CSV: {e}") from None
    if rows and "path" in [h.strip() for h in rows[0]]:
        column = [h.strip() for h in rows[0]].index("path")
        rows = rows[1:]
    else:
        column = 0
    return [str(csv_path.parent / r[column].strip()) for r in rows if len(r) > column and r[column].strip()]


def expand_inputs(inputs: list[str]) -> list[tuple[str, str]]:
    """PATH arguments -> [(image path, "")] in the order given, or (argument, reason) when one gives nothing.

    A folder contributes its images recursively (sorted, hidden files skipped); a .csv its listed paths;
    a pattern with * ? or [ its sorted glob matches (** crosses folders).
    """
    items: list[tuple[str, str]] = []
    for arg in inputs:
        path = Path(arg)
        if path.is_dir():
            found = sorted(
                str(p)
                for p in path.rglob("*")
                if p.is_file()
                and is_image_file(p)
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            items += [(p, "") for p in found] or [(arg, "folder has no image files")]
        elif path.is_file() and path.suffix.lower() == ".csv":
            try:
                listed = _paths_from_csv(path)
            except DecodeError as e:
                listed, reason = [], e.reason
            else:
                reason = "CSV lists no paths"
            items += [(p, "") for p in listed] or [(arg, reason)]
        elif path.exists():
            items.append((arg, ""))
        elif any(ch in arg for ch in "*?["):
            found = sorted(p for p in glob.glob(arg, recursive=True) if os.path.isfile(p))
            items += [(p, "") for p in found] or [(arg, "no files match this pattern")]
        else:
            items.append((arg, "file not found"))
    return items
