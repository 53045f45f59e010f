"""Grad-CAM explanations: where in the image the evidence for a class lies (`predict --explain`, serve's
POST /explain, the eval sheet of the most confidently wrong images).

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", 2017): a forward hook keeps the output A of the last residual stage (layer4, stride 32 with
the imagenet stem, 16 with the small one), the gradient of the class's logit with respect to A weighs each
channel by its spatial mean, and ReLU(sum_k w_k A_k) is the map. Grad-CAM++ (Chattopadhay et al. 2018)
weighs the positive gradients per position instead, which separates several instances of a class better.

Precision: explanations always run in fp32, whatever the Predictor's precision. The gradients at layer4 are
small numbers that are summed over the whole map; in bf16 (8 bits of mantissa) they are coarse enough to
move the peak by a cell on small models, and an explanation is one image at a time, so the speed of bf16
buys little.

Geometry: the heatmap (bilinearly upsampled from layer4's grid) is laid over the model's input crop, the
image exactly as the model saw it after the eval resize and centre crop, not over the user's original
photo: what was cropped away had no part in the answer, and the overlay's pixels then line up with the
heatmap's one to one.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserError
from ..utils.atomic import write_atomic
from .multilabel import head_probabilities

METHODS = ("gradcam", "gradcam++")
OVERLAY_SUFFIX = ".gradcam.png"
STEM_BYTES = 100  # an overlay name keeps at most this much of the image's stem (UTF-8 bytes)
HASH_CHARS = 12  # hex digits of the full path's hash in an overlay name (48 bits)
HEAT_OPACITY = 0.5  # share of the colour map in the overlay; the image stays readable beneath it


@dataclass
class Explanation:
    """One image's map: heat (S, S) in [0, 1] over the model's input crop, the crop itself (S, S, 3) uint8,
    and the class explained with its probability."""

    heat: np.ndarray
    crop: np.ndarray
    class_index: int
    prob: float

    def overlay(self) -> np.ndarray:
        """The crop with the colour-mapped heat over it, (S, S, 3) uint8."""
        mixed = (1 - HEAT_OPACITY) * self.crop.astype(np.float32) + HEAT_OPACITY * colorize(self.heat)
        return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)

    def side_by_side(self) -> np.ndarray:
        """The crop and its overlay next to each other (S, 2S, 3) uint8, for contact sheets."""
        return np.concatenate([self.crop, self.overlay()], axis=1)


def colorize(heat: np.ndarray) -> np.ndarray:
    """[0, 1] heat -> (..., 3) float RGB in 0..255 on the 'jet' ramp (blue cold, red hot). Three clipped
    triangles instead of matplotlib, so inference (predict, serve) never imports it."""
    x = np.clip(heat, 0, 1)[..., None]
    centres = np.array([0.75, 0.5, 0.25])  # where red, green and blue each peak along the ramp
    return np.clip(1.5 - np.abs(4 * x - 4 * centres), 0, 1) * 255


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay_name(path: str | os.PathLike) -> str:
    """The overlay file name of an input path: <stem>-<hash>.gradcam.png, the stem cut to STEM_BYTES bytes of
    whole characters and the hash HASH_CHARS hex digits of BLAKE2b over the full absolute path. At most 125
    bytes, so it fits every file system's name limit (255 bytes; 143 on eCryptfs) with room for write_atomic's
    temporary name; two inputs with one stem in different folders get different names (the same input the same
    name on every run), so no overlay overwrites another input's."""
    stem, size = Path(path).stem or "image", 0
    cut = len(stem)
    for index, char in enumerate(stem):
        size += len(char.encode("utf-8", "surrogatepass"))
        if size > STEM_BYTES:
            cut = index
            break
    full = os.path.abspath(path).encode("utf-8", "surrogatepass")
    return f"{stem[:cut]}-{hashlib.blake2b(full, digest_size=HASH_CHARS // 2).hexdigest()}{OVERLAY_SUFFIX}"


def writable_dir(path: str | Path, flag: str) -> Path:
    """The folder path, created if needed; a UserError naming flag when it cannot be written."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".resnetcls-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{flag} {folder}: cannot write there: {e.strerror or e}") from None
    return folder


class Explainer:
    """Grad-CAM on a ResNet's layer4, in fp32, for preprocessed (3, S, S) images.

    model: any network with a `layer4` stage whose output feeds global pooling and the head (our ResNets).
    private_copy: explain with a copy of the weights, for callers (serve) whose model other threads run at the
    same time, so the hook never sees their forwards; explanations are serialised by a lock either way.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: dict,
        device: torch.device,
        method: str = "gradcam",
        private_copy: bool = False,
        temperature: float = 1.0,
        sigmoid: bool = False,
    ) -> None:
        if method not in METHODS:
            raise UserError(f"explanation method {method!r}: expected one of {', '.join(METHODS)}")
        if not hasattr(model, "layer4"):
            raise UserError(f"{type(model).__name__}: Grad-CAM needs a ResNet with a layer4 stage")
        self.model = copy.deepcopy(model).float() if private_copy else model
        self.device, self.method = device, method
        self.temperature = temperature  # model.json's calibration: the probabilities predict gives
        self.sigmoid = sigmoid  # a multi-label model: each class's own sigmoid probability
        self.mean = torch.tensor(preprocess["mean"], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(preprocess["std"], dtype=torch.float32).view(3, 1, 1)
        self.lock = threading.Lock()

    def _forward_backward(self, image: torch.Tensor, class_index: int | None):
        """(layer4 output, its gradient for the class, probabilities as predict gives them, class index) for
        one image."""
        kept = {}

        def keep(_module, _inputs, output):
            kept["act"] = output

        handle = self.model.layer4.register_forward_hook(keep)
        try:
            # inference_mode off, autocast off: a graph in fp32 (see the module docstring for why).
            with (
                torch.inference_mode(False),
                torch.enable_grad(),
                torch.autocast(self.device.type, enabled=False),
            ):
                x = image[None].to(self.device, torch.float32).clone().requires_grad_(True)
                logits = self.model(x).float()
                probs = head_probabilities(logits, self.temperature, self.sigmoid)[0].detach()
                index = int(probs.argmax()) if class_index is None else class_index
                (grad,) = torch.autograd.grad(logits[0, index], kept["act"])
        finally:
            handle.remove()
        return kept["act"].detach()[0].float(), grad[0].float(), probs, index

    def heatmap(self, image: torch.Tensor, class_index: int | None = None) -> tuple[np.ndarray, float, int]:
        """(heat (S, S) in [0, 1], probability, class index) for a preprocessed image; class_index None:
        the top-1 class. An image with no positive evidence for the class gives an all-zero map."""
        with self.lock:
            act, grad, probs, index = self._forward_backward(image, class_index)
        if self.method == "gradcam":
            weights = grad.mean(dim=(1, 2))
            cam = torch.relu((weights[:, None, None] * act).sum(dim=0))
        else:  # Grad-CAM++: alpha from the second and third powers of the gradient (their eq. 19)
            g2, g3 = grad.pow(2), grad.pow(3)
            denominator = 2 * g2 + act.sum(dim=(1, 2), keepdim=True) * g3
            alpha = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
            weights = (alpha * torch.relu(grad)).sum(dim=(1, 2))
            cam = torch.relu((weights[:, None, None] * act).sum(dim=0))
        size = image.shape[-2:]
        heat = F.interpolate(cam[None, None].cpu(), size=size, mode="bilinear", align_corners=False)[0, 0]
        peak = float(heat.max())
        heat = heat / peak if peak > 0 else torch.zeros_like(heat)
        return heat.clamp(0, 1).numpy(), float(probs[index]), index

    def crop(self, image: torch.Tensor) -> np.ndarray:
        """The preprocessed image un-normalised back to (S, S, 3) uint8: the model's view of the photo."""
        pixels = (image.detach().float().cpu() * self.std + self.mean) * 255
        return pixels.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()

    def explain(self, image: torch.Tensor, class_index: int | None = None) -> Explanation:
        """The Explanation of one preprocessed (3, S, S) image for class_index (None: top-1)."""
        heat, prob, index = self.heatmap(image, class_index)
        return Explanation(heat, self.crop(image), index, prob)


class OverlayWriter:
    """`predict --explain`: each image's overlay written to OUT_DIR/overlay_name(path) as soon as it is
    explained, so only the image at hand is held. A write that fails is counted and its reason returned,
    never raised: the predictions go on."""

    def __init__(self, explainer: Explainer, out_dir: str | os.PathLike) -> None:
        self.explainer, self.out_dir = explainer, Path(out_dir)
        self.failed = 0

    def write(self, path: str, image: torch.Tensor, class_index: int) -> tuple[str, str]:
        """(the written overlay's path, "") for an input path and its preprocessed image, or ("", why not)."""
        target = self.out_dir / overlay_name(path)
        try:
            write_atomic(target, png_bytes(self.explainer.explain(image, class_index).overlay()))
        except UserError as e:  # write_atomic's one line: the file and the reason
            self.failed += 1
            return "", str(e)
        return str(target), ""
