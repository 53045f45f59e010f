"""Train and eval transforms. The eval preprocessing is stored in model.json and rebuilt from it here,
so predict/serve/export preprocess exactly as evaluation did."""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.transforms import v2 as T

from ..errors import UserError
from .augment import POLICIES, DeviceCrops, SampleAugment
from .geometry import (
    INTERPOLATIONS,
    RECORD_MODES,
    RESIZE_MODES,
    STORE_MODES,
    CropToAspect,
    Letterbox,
    StoreGeometry,
    frame_box,
    letterbox_fill,
    letterbox_size,
    pad_colour,
)


# F.interpolate's uint8 kernels (antialiased, as torchvision's Resize; nearest-exact for "nearest") in their
# out= form, (src, size, out): they write straight into a channels-last batch slot (see BatchTransform).
# Named functions, not lambdas: a transform holding one must pickle into spawned DataLoader workers.
def _bilinear_into(src, size, out):
    return torch.ops.aten._upsample_bilinear2d_aa.out(src, size, False, out=out)


def _bicubic_into(src, size, out):
    return torch.ops.aten._upsample_bicubic2d_aa.out(src, size, False, out=out)


def _nearest_into(src, size, out):
    return torch.ops.aten._upsample_nearest_exact2d.out(src, size, out=out)


RESIZE_INTO = {"bilinear": _bilinear_into, "bicubic": _bicubic_into, "nearest": _nearest_into}


def make_preprocess(
    image_size: int,
    resize_size: int = 0,
    augment: str = "crop_flip",
    interpolation: str = "bilinear",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    mode: str = "crop",
) -> dict:
    """The eval preprocessing record that travels in model.json.

    mode is data.resize. resize_mode "shorter_side" (crop): resize the short side to `resize`, centre-crop
    image_size; "square" (squash, and data.augment=resize: the seed's plain resize, which matches its training
    exactly): resize straight to image_size x image_size; "letterbox": the long side to image_size keeping the
    aspect ratio, centred on an image_size square of the colour `pad` (the mean as RGB uint8). A record
    without resize_mode (older model folders) is "shorter_side".
    """
    if interpolation not in INTERPOLATIONS:
        raise UserError(f"data.interpolation={interpolation!r}: expected one of {', '.join(INTERPOLATIONS)}")
    if mode not in RESIZE_MODES:
        raise UserError(f"data.resize={mode!r}: expected one of {', '.join(RESIZE_MODES)}")
    if mode == "crop" and augment == "resize":
        mode = "squash"
    whole = mode != "crop"
    record = {
        "image_size": image_size,
        "resize": image_size if whole else (resize_size or round(image_size / 0.875)),
        "resize_mode": RECORD_MODES[mode],
        "interpolation": interpolation,
        "mean": list(mean),
        "std": list(std),
    }
    if mode == "letterbox":
        record["pad"] = list(pad_colour(mean))
    return record


class ToNormalizedTensor:
    """PIL RGB image (or HxWx3 uint8 array) -> float32 (3, H, W) tensor, (x / 255 - mean) / std: bit-identical
    to torchvision's ToImage + ToDtype(scale=True) + Normalize, computed with numpy in the calling thread.

    Why not those three: each torch op on an image this size starts an OpenMP team in the thread that calls
    it, whose workers then spin for milliseconds after the op. predict and serve preprocess in their own
    threads next to the model's, so the spinning workers took cores from the model: one 640x480 JPEG through
    the int8 ONNX Runtime path took 14.7 ms with torch preprocessing and 11.6 ms with this and stack_images
    (Predictor.predict p50, Xeon-AMX, 2 cores).
    """

    def __init__(self, mean, std) -> None:
        self.mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(3, 1, 1)

    def __call__(self, image) -> torch.Tensor:
        pixels = np.asarray(image)
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"expected an RGB image (HxWx3 uint8), got {pixels.dtype} {pixels.shape}")
        # The same float32 operations in the same order as torchvision's: x * float32(1/255), - mean, / std.
        scaled = pixels.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)
        return torch.from_numpy((scaled - self.mean) / self.std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean.ravel().tolist()}, std={self.std.ravel().tolist()})"


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """Preprocessed (3, S, S) images -> an (N, 3, S, S) batch; one image becomes a view, not a copy (a copy
    this size is a parallel torch op, whose spinning OpenMP workers slowed the next model call)."""
    return images[0][None] if len(images) == 1 else torch.stack(images)


def build_eval_transform(preprocess: dict) -> T.Compose:
    """PIL RGB image -> normalised float tensor (3, S, S), as recorded in preprocess.

    "square" squashes the whole image (its output is S x S whatever the input); "letterbox" fits the whole
    image in S x S and pads the rest; "shorter_side" first crops extreme aspect ratios (CropToAspect), so the
    intermediate resize stays within R x 4R pixels."""
    size, interp = preprocess["image_size"], INTERPOLATIONS[preprocess["interpolation"]]
    mode = preprocess.get("resize_mode", "shorter_side")
    if mode == "square":
        geometry = [T.Resize((size, size), interpolation=interp, antialias=True)]
    elif mode == "letterbox":
        geometry = [Letterbox(size, preprocess["interpolation"], letterbox_fill(preprocess))]
    else:
        geometry = [
            CropToAspect(),
            T.Resize(preprocess["resize"], interpolation=interp, antialias=True),
            T.CenterCrop(size),
        ]
    return T.Compose(geometry + [ToNormalizedTensor(preprocess["mean"], preprocess["std"])])


# crop_flip: random-resized-crop + flip; resize: the seed's plain resize; the policies: crop_flip, then one
# of torchvision's per-image policies (see data/augment.py).
AUGMENTS = ("crop_flip", "resize") + POLICIES


def _check_augment(augment: str) -> None:
    if augment not in AUGMENTS:
        raise UserError(f"data.augment={augment!r}: expected one of {', '.join(AUGMENTS)}")


class BatchTransform:
    """Stored uint8 images (HWC, as the decoded cache holds them) -> normalised float batches.

    Per image, on uint8: the geometry (train: random-resized-crop + horizontal flip; eval: the recorded resize
    + centre crop), straight into a preallocated channels-last uint8 batch, then in training the policy
    (trivialaugment, randaugment) and random erasing, each image under its own sample seed. Per batch: colour
    jitter (train), then float conversion + normalisation in two passes. The random numbers for a whole batch
    are drawn in one torch call (torchvision's per-image get_params cost more than the crop itself), so
    DataLoader worker seeding still makes runs reproducible. The eval path reproduces
    build_eval_transform(preprocess) on the original image up to float rounding when the store size equals
    preprocess["resize"] (the default), and up to resize rounding otherwise.
    """

    def __init__(
        self,
        preprocess: dict,
        train: bool,
        augment: str = "crop_flip",
        min_crop_scale: float = 0.25,
        color_jitter: float = 0.0,
        store_size: int = 0,
        random_erasing: float = 0.0,
        on_device: bool = False,
    ) -> None:
        _check_augment(augment)
        mode = STORE_MODES[preprocess.get("resize_mode", "shorter_side")]
        size = store_size or preprocess["resize"]
        if size < preprocess["image_size"]:
            raise UserError(
                f"data.cache_size={size}: must be at least data.image_size={preprocess['image_size']}"
            )
        if not 0 <= color_jitter < 1:
            raise UserError(f"data.color_jitter={color_jitter}: must be in [0, 1)")
        self.preprocess, self.size = preprocess, preprocess["image_size"]
        self.random = train and augment != "resize"
        self.augment = SampleAugment(
            augment if train else "crop_flip", random_erasing if train else 0.0, preprocess["mean"]
        )
        self.scale, self.jitter = (min_crop_scale, 1.0), color_jitter if train else 0.0
        self.geometry = StoreGeometry(size, mode, preprocess["interpolation"])
        self.fill = np.array(letterbox_fill(preprocess), dtype=np.uint8)
        self._resize_op = RESIZE_INTO[preprocess["interpolation"]]
        mean, std = (
            torch.tensor(preprocess["mean"]).view(1, 3, 1, 1),
            torch.tensor(preprocess["std"]).view(1, 3, 1, 1),
        )
        self._mean, self._std = mean, std
        self._scale, self._shift = (
            1.0 / (255.0 * std),
            -mean / std,
        )  # (x / 255 - mean) / std as x * scale + shift
        self._rows_key, self._rows = None, None
        # data.augment_on=device: workers ship canvases, the device crops (data/augment.py's DeviceCrops)
        # (crop mode only: letterbox and squash train on the whole frame, on the host)
        crops_on_device = on_device and self.random and mode == "crop"
        self.device_crops = (
            DeviceCrops(size, self.scale, self.augment, _crop_box) if crops_on_device else None
        )

    def _resize_into(self, out: torch.Tensor, hwc: np.ndarray, flip: bool = False) -> None:
        """Resize one HWC uint8 image straight into `out`, a (1, 3, S, S) channels-last slot of the batch.

        The aten op's out= form writes the channels-last result in place: F.interpolate on a single image
        returns planar memory here, and moving that into the channels-last batch cost as much as the resize.
        """
        src = torch.from_numpy(np.ascontiguousarray(hwc)).permute(2, 0, 1).unsqueeze(0)  # channels-last view
        if flip:  # flipping the source flips the result; torch's flip keeps channels-last and is cheap
            src = src.flip(-1)
        self._resize_op(src, out.shape[-2:], out)

    def crops(
        self,
        images: list[np.ndarray],
        into: torch.Tensor | None = None,
        seeds: list[int] | None = None,
        size: int | None = None,
    ) -> torch.Tensor:
        """HWC uint8 stored images -> (N, 3, S, S) uint8 channels-last batch of crops.

        into: an (N, S, S, 3) uint8 tensor to write them to (the loader's shared ring slot), else a new one.
        seeds: each image's seed for the policy and random erasing (the sampler's); None draws them here.
        size: S for this batch in training (progressive resizing): the random-resized crop (or the plain
        resize) goes from the stored image straight to it, no second resize; None = preprocess's image_size.
        """
        s, n = size or self.size, len(images)
        if self.device_crops is not None:
            return self._canvases(images, into)
        if s != self.size and not self.random and self.geometry.mode == "crop":
            raise ValueError(f"size={s}: the eval centre crop is made at image_size={self.size} only")
        batch = torch.empty(n, s, s, 3, dtype=torch.uint8) if into is None else into
        out, slots = batch.permute(0, 3, 1, 2), batch.numpy()  # NHWC memory = channels-last (N, 3, S, S)
        if self.random:
            draws, flips = torch.rand(n, 10, 4).tolist(), (torch.rand(n) < 0.5).tolist()
        for k, image in enumerate(images):
            h, w = image.shape[:2]
            if self.random and self.geometry.mode != "crop":
                self._frame_into(slots[k], image, draws[k][0], flips[k])
            elif self.random:
                top, left, ch, cw = _crop_box(h, w, self.scale, draws[k])
                self._resize_into(out[k : k + 1], image[top : top + ch, left : left + cw], flips[k])
            elif self.geometry.mode == "letterbox":
                self._letterbox_into(slots[k], image)
            elif self.geometry.square:
                self._resize_into(out[k : k + 1], image) if self.geometry.size != s else np.copyto(
                    slots[k], image
                )
            else:
                self._centre_crop_into(slots[k], image)
        if self.augment.active:
            if seeds is None:
                seeds = torch.randint(0, 2**62, (n,)).tolist()
            for k in range(n):
                out[k].copy_(self.augment(out[k], seeds[k]))
        return out

    def _resized(self, image: np.ndarray, height: int, width: int, flip: bool = False) -> np.ndarray:
        """One HWC uint8 image resized to height x width (flipped first when asked), as an HWC array."""
        if (height, width) == image.shape[:2] and not flip:
            return image
        resized = torch.empty(1, height, width, 3, dtype=torch.uint8)
        self._resize_into(resized.permute(0, 3, 1, 2), image, flip)
        return resized[0].numpy()

    def _centre_crop_into(self, slot: np.ndarray, image: np.ndarray) -> None:
        """The eval transform's short-side resize (torchvision's size rule), then its centre crop."""
        h, w = image.shape[:2]
        r, s = self.preprocess["resize"], slot.shape[0]
        if self.geometry.size != r:
            nh, nw = (int(r * h / w), r) if h > w else (r, int(r * w / h)) if w > h else (r, r)
            image, h, w = self._resized(image, nh, nw), nh, nw
        top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        np.copyto(slot, image[top : top + s, left : left + s])

    def _letterbox_into(self, slot: np.ndarray, image: np.ndarray) -> None:
        """The eval letterbox (geometry.Letterbox) of a stored image: its long side to S, centred on the
        padding colour."""
        s = slot.shape[0]
        width, height = letterbox_size(image.shape[1], image.shape[0], s)
        top, left = (s - height) // 2, (s - width) // 2
        slot[:] = self.fill
        slot[top : top + height, left : left + width] = self._resized(image, height, width)

    def _frame_into(self, slot: np.ndarray, image: np.ndarray, draw: list[float], flip: bool) -> None:
        """Training in letterbox and squash modes: the whole frame at geometry.frame_box's random scale and
        place on the padded S x S slot, flipped when asked. No part of the frame is ever cut off."""
        top, left, height, width = frame_box(slot.shape[0], image.shape[:2], self.geometry.mode, draw)
        slot[:] = self.fill
        slot[top : top + height, left : left + width] = self._resized(image, height, width, flip)

    def _canvases(self, images: list[np.ndarray], into: torch.Tensor | None) -> torch.Tensor:
        """augment_on=device: each stored image's centre canvas x canvas square, as an (N, 3, C, C) uint8
        channels-last batch (an image smaller than the canvas, e.g. from an older store, is resized to it)."""
        c = self.device_crops.canvas
        batch = torch.empty(len(images), c, c, 3, dtype=torch.uint8) if into is None else into
        out, slots = batch.permute(0, 3, 1, 2), batch.numpy()
        for k, image in enumerate(images):
            h, w = image.shape[:2]
            if h < c or w < c:
                self._resize_into(out[k : k + 1], image)
            else:
                top, left = (h - c) // 2, (w - c) // 2
                np.copyto(slots[k], image[top : top + c, left : left + c])
        return out

    def finish(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) uint8 -> normalised float32, channels-last like the batch (colour jitter drawn per
        image in training).

        Runs on the batch's device, so a GPU run can ship uint8 (4x fewer bytes) and normalise there."""
        dev = batch.device
        if self.jitter:
            x = _color_jitter(batch.float().div_(255.0), self.jitter)
            return x.sub_(self._mean.to(dev)).div_(self._std.to(dev))
        n, _, h, w = batch.shape
        if not batch.is_contiguous(memory_format=torch.channels_last):
            return torch.addcmul(self._shift.to(dev), batch.float(), self._scale.to(dev))
        # Channels-last memory is rows of w RGB pixels. Broadcasting a per-channel (1, 3, 1, 1) scale over it
        # makes the innermost loop 3 long, which ran 5-8x slower than these row-long vectorised passes.
        out = torch.empty(n, h, w, 3, dtype=torch.float32, device=dev)
        rows = out.view(n * h, w * 3)
        rows.copy_(batch.permute(0, 2, 3, 1).reshape(n * h, w * 3))
        scale, shift = self._row_constants(w, dev)
        torch.addcmul(shift, rows, scale, out=rows)  # in place: two passes over memory in all
        return out.permute(0, 3, 1, 2)

    def _row_constants(self, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (width, str(device))
        if self._rows_key != key:
            self._rows_key = key
            self._rows = (
                self._scale.view(3).repeat(width).to(device),
                self._shift.view(3).repeat(width).to(device),
            )
        return self._rows


def _crop_box(
    h: int, w: int, scale: tuple[float, float], draw: list[list[float]]
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (ratio 3/4..4/3, 10 tries, then a centre crop) from given draws."""
    area, log_lo, log_hi = h * w, math.log(3 / 4), math.log(4 / 3)
    for u_area, u_ratio, u_top, u_left in draw:
        target = area * (scale[0] + u_area * (scale[1] - scale[0]))
        aspect = math.exp(log_lo + u_ratio * (log_hi - log_lo))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(u_top * (h - ch + 1)), int(u_left * (w - cw + 1)), ch, cw
    ratio = w / h
    if ratio < 3 / 4:
        cw, ch = w, int(round(w / (3 / 4)))
    elif ratio > 4 / 3:
        ch, cw = h, int(round(h * (4 / 3)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _color_jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Brightness, contrast and saturation, each by a factor in [1-strength, 1+strength] drawn per image."""
    n = x.shape[0]
    b, c, s = (1 + strength * (2 * torch.rand(3, n, 1, 1, 1, device=x.device) - 1)).unbind(0)
    x = x * b
    mean = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean
    gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    return ((x - gray) * s + gray).clamp_(0, 1)


def build_train_transform(
    preprocess: dict,
    augment: str = "crop_flip",
    min_crop_scale: float = 0.25,
    color_jitter: float = 0.0,
    store_size: int = 0,
    random_erasing: float = 0.0,
    on_device: bool = False,
) -> BatchTransform:
    """Training augmentation on uint8 batches: random-resized-crop + flip (+ a policy, random erasing,
    jitter), or a plain resize. on_device: crop, flip and policy run on the training device
    (data.augment_on; the loader then ships canvases, see BatchTransform.device_crops)."""
    return BatchTransform(
        preprocess, True, augment, min_crop_scale, color_jitter, store_size, random_erasing, on_device
    )


def build_eval_batch_transform(preprocess: dict, store_size: int = 0) -> BatchTransform:
    """The eval preprocessing on stored uint8 images (what build_eval_transform does to one PIL image)."""
    return BatchTransform(preprocess, False, store_size=store_size)
