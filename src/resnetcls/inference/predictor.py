"""Predictor: model directory -> top-k class names and probabilities for images; the PATH arguments of
`resnetcls predict` (command.py prints the predictions).

PATH arguments may be image files, folders (searched recursively), globs, or CSV files listing paths.
Images are decoded on a few threads one batch ahead of the model, so a folder of small images runs at
the model's batched throughput rather than one image at a time.
"""

from __future__ import annotations

import csv
import glob
import os
import typing
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.decode import DecodeError, decode_image, decode_in_memory, is_image_file
from ..data.transforms import build_eval_transform, stack_images
from ..errors import UserError
from ..records.modelfile import LoadedModel, load_model_dir
from ..utils.calibration import calibrated_probabilities
from ..utils.hardware import auto_exported_backend, pick_device, precision_name, resolve_amp, usable_cores
from ..utils.progress import progress_bar
from .inputs import ImageInput, input_name, to_items
from .sessions import (
    int8_session_for,
    onnx_file_current,
    onnx_logits,
    onnx_probabilities,
    onnx_session,
    onnx_session_for,
)
from .standalone import OnnxModel, is_onnx_file, load_onnx_file, standalone_backend

FORMATS = ("table", "json", "csv")
BACKENDS = ("auto", "torch", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8")
ONNX_BACKENDS = ("onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8")  # run an exported ONNX file
PRECISIONS = ("auto", "bf16", "fp32")
ERRORS = ("raise", "return")


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str = ""
    gradcam: str = ""  # the Grad-CAM overlay's path, with --explain

    def to_dict(self) -> dict:
        if self.error:
            return {"path": self.path, "error": self.error}
        extra = {"gradcam": self.gradcam} if self.gradcam else {}
        return {"path": self.path, "top": [{"class": c, "prob": round(p, 6)} for c, p in self.top], **extra}

    def __repr__(self) -> str:
        body = f"error: {self.error}" if self.error else ", ".join(f"{c} {p:.2f}" for c, p in self.top)
        return f"Prediction({self.path!r}: {body})"


EachImage = Callable[[Prediction, torch.Tensor], None]  # Predictor.predict's `each`: a result and its image


def resolve_backend(backend: str, precision: str, loaded: LoadedModel, device: torch.device) -> str:
    """ "auto" -> the fastest verified fp path on this machine, as bench/inference.py measured it: with a
    checked, current model.onnx (export parity-checked it), hardware.auto_exported_backend (OpenVINO on AMX
    CPUs, eager bf16 torch on other native-bf16 CPUs, ONNX Runtime fp32 elsewhere). Without one (exporting in
    memory would cost seconds at every start): eager torch, bf16 where native. A GPU or an explicit
    --precision keeps torch. int8 is never chosen by auto: it changes results slightly, so it is asked for by
    name."""
    if backend != "auto":
        return backend
    if device.type != "cpu" or precision != "auto":
        return "torch"
    exported = auto_exported_backend()  # first: reading model.onnx's metadata parses the whole file
    return exported if exported != "torch" and onnx_file_current(loaded) else "torch"


def _decode_threads() -> int:
    return max(1, min(4, usable_cores()))


def _check_choices(backend: str, precision: str) -> None:
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if backend in ONNX_BACKENDS and precision == "bf16" and backend.startswith("onnxruntime"):
        raise UserError(f"--precision bf16: the {backend} backend does not run bf16; use --backend torch")


class Predictor:
    """Loads a verified model directory (or a bare model.onnx that `resnetcls export` wrote) once; predicts
    batches of images in the model's preprocessing.

    model: a model directory, a run directory (its best/ model), or an exported .onnx file on its own (its
    metadata carries the classes, preprocessing and temperature; it runs with onnxruntime or openvino only,
    see standalone.py). backend "torch" runs the eager model; "onnxruntime" runs the model's exported
    model.onnx (see export/formats.py) on the CPU in fp32, giving the same top-k; "openvino" runs the same
    file with OpenVINO (bf16 where the CPU has it natively, unless precision "fp32"); "onnxruntime-int8" and
    "openvino-int8" its model.int8.onnx (export/int8.py; top-1 checked against fp32 in both runtimes when it
    was written); "auto" the fastest verified fp path (resolve_backend). precision (torch and openvino):
    "auto" is bf16 (+ channels_last for torch) where the device computes bf16 natively (as training picks it,
    hardware.resolve_amp), else fp32; "fp32" gives bit-stable outputs on every machine; "bf16" forces bf16
    (slow where it is emulated). Probabilities are calibrated: softmax(logits / T) with model.json's
    calibration temperature (T = 1 for a model without one); the ONNX graph has the same T built in.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        device: str = "auto",
        precision: str = "auto",
        channels_last: bool = True,
        backend: str = "auto",
    ) -> None:
        _check_choices(backend, precision)
        bare = is_onnx_file(model)
        if bare:
            backend = standalone_backend(backend, precision, model)
            _check_choices(backend, precision)
        if backend in ONNX_BACKENDS:
            device = "cpu"  # the CPU execution provider is the one we ship and check
        self.device = pick_device(device)
        self.loaded = load_onnx_file(model) if bare else load_model_dir(model, self.device)
        backend = resolve_backend(backend, precision, self.loaded, self.device)
        self.classes = self.loaded.classes
        self.transform = build_eval_transform(self.loaded.preprocess)
        self.amp_dtype = None if backend in ONNX_BACKENDS else resolve_amp(precision, self.device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # None for a bare ONNX file: no eager weights (no torch backend, no Grad-CAM)
        self.model = None if bare else self.loaded.model.to(memory_format=self.memory_format)
        self.backend = backend
        self.temperature = self.loaded.temperature
        self.session = self._session(backend, precision) if backend in ONNX_BACKENDS else None
        if backend.endswith("-int8") or (bare and self.loaded.quantized):
            self.precision = "int8"
        elif backend == "openvino":
            self.precision = self.session.precision  # what OpenVINO compiled it in (bf16 where native)
        else:
            self.precision = precision_name(self.amp_dtype)  # ONNX Runtime: amp_dtype None, fp32

    def _session(self, backend: str, precision: str):
        runtime = backend.removesuffix("-int8")
        if isinstance(self.loaded, OnnxModel):
            return onnx_session(self.loaded.path, runtime=runtime, precision=precision)
        if backend.endswith("-int8"):
            return int8_session_for(self.loaded, runtime=runtime)
        return onnx_session_for(self.loaded, runtime=runtime, precision=precision)

    def __repr__(self) -> str:
        return (
            f"Predictor(model={str(self.loaded.path)!r}, classes={len(self.classes)}, "
            f"backend={self.backend!r}, precision={self.precision!r})"
        )

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) preprocessed images -> (N, classes) raw (uncalibrated) logits in fp32, on the CPU."""
        if self.session is not None:
            return onnx_logits(self.session, batch)
        batch = batch.to(self.device, memory_format=self.memory_format)
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None
        ):
            logits = self.model(batch)
        return logits.float().cpu()

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) preprocessed images -> (N, classes) fp32 probabilities softmax(logits / T)."""
        if self.session is not None:
            return onnx_probabilities(self.session, batch)
        return calibrated_probabilities(self.logits(batch), self.temperature)

    def load(self, path, name: str = "") -> torch.Tensor | str:
        """Decoded, preprocessed image (a path, PIL image or HxWx3 uint8 array: an item of
        inputs.to_items), or the reason it cannot be used."""
        try:
            if isinstance(path, (Image.Image, np.ndarray)) or not isinstance(path, (str, os.PathLike)):
                return self.transform(decode_in_memory(path, name or input_name(path, 0)))
            return self.transform(decode_image(path))
        except DecodeError as e:
            return e.reason
        except (OSError, ValueError) as e:  # e.g. a decoder that accepts the header but fails on resize
            return f"cannot preprocess image: {e}"
        except MemoryError:
            return "not enough memory to preprocess this image"

    def predict(
        self,
        images: ImageInput | typing.Sequence[ImageInput],
        topk: int = 5,
        batch_size: int = 32,
        tta: bool = False,
        progress: bool | None = None,
        each: EachImage | None = None,
        errors: str | None = None,
    ) -> list[Prediction]:
        """Top-k for each image, in order: a list of Prediction, one per image (one for a single image).

        images: one image or a list of them: a path; a PIL image; a numpy array HxWxC or CxHxW (C 3, 4 or 1),
        uint8 or float in [0, 1]; a torch tensor CxHxW; or a batch, NxHxWxC / NxCxHxW array or NxCxHxW tensor
        (one prediction per image). Anything else, an array whose layout is ambiguous, or floats outside
        [0, 1] raise UserError saying what was given (inputs.py). Each image is decoded by the same rules as a
        file (data/decode.py); a Prediction's `path` names the input (its path, else "<array N>", ...).
        errors: "raise" raises the DecodeError (a UserError) of an image that cannot be read (missing file,
        broken JPEG); "return" gives that image a Prediction with `error` set and predicts the rest. The
        default is "raise" for one image and "return" for a list or a batch, so one bad file among many does
        not lose the others. tta: also predict the horizontally flipped image and average the two
        probability vectors. progress: a bar on a terminal or in a notebook (utils/progress.py); None (the
        default) shows one when there is more than one batch of images. each: called with every readable
        image's Prediction and its preprocessed tensor once it is predicted (`predict --explain` writes its
        overlay there), while no more than two batches of images are held.
        """
        inputs = to_items(images)
        errors = errors or ("raise" if inputs.single else "return")
        if errors not in ERRORS:
            raise UserError(f"errors={errors!r}: expected one of {', '.join(ERRORS)}")
        images, results = inputs.items, [Prediction(name) for name in inputs.names]
        raising = errors == "raise"
        if len(images) == 1:  # one camera frame: nothing to overlap, and a decode thread beside the model's
            # spinning compute threads added 5 ms (int8) to 26 ms (bf16) to a 640x480 JPEG's p50 on 2 cores
            self._predict_chunk(
                [0], [self.load(images[0], results[0].path)], results, (topk, tta, raising), each
            )
            return results
        chunks = [list(range(s, min(s + batch_size, len(images)))) for s in range(0, len(images), batch_size)]
        show = len(chunks) > 1 if progress is None else progress
        with (
            ThreadPoolExecutor(_decode_threads()) as pool,
            progress_bar(len(images), "predict", enabled=None if show else False) as bar,
        ):
            # Decode the next chunk while the model runs on the current one.
            pending = [
                pool.map(self.load, [images[i] for i in c], [results[i].path for i in c]) for c in chunks[:1]
            ]
            for n, chunk in enumerate(chunks):
                if n + 1 < len(chunks):
                    nxt = chunks[n + 1]
                    pending.append(
                        pool.map(self.load, [images[i] for i in nxt], [results[i].path for i in nxt])
                    )
                self._predict_chunk(chunk, pending[n], results, (topk, tta, raising), each)
                pending[n] = None  # let the decoded chunk be freed
                bar.update(len(chunk))
        return results

    def _predict_chunk(
        self,
        chunk: list[int],
        loaded,
        results: list[Prediction],
        how: tuple[int, bool, bool],
        each: EachImage | None = None,
    ) -> None:
        """Predict one chunk of decoded images; how: (topk, tta, raise an unreadable image's DecodeError)."""
        topk, tta, raising = how
        tensors, slots = [], []
        for i, item in zip(chunk, loaded):
            if isinstance(item, str) and raising:
                raise DecodeError(results[i].path, item)
            if isinstance(item, str):
                results[i].error = item
            else:
                tensors.append(item)
                slots.append(i)
        if not tensors:
            return
        batch = stack_images(tensors)
        probs = self.probabilities(batch)
        if tta:
            probs = (probs + self.probabilities(batch.flip(-1))) / 2
        values, indices = probs.topk(min(topk, len(self.classes)), dim=1)
        for i, vals, idxs in zip(slots, values.tolist(), indices.tolist()):
            results[i].top = [(self.classes[c], v) for c, v in zip(idxs, vals)]
        if each is not None:
            for i, image in zip(slots, tensors):
                each(results[i], image)


def load(
    model: str | os.PathLike, backend: str = "auto", precision: str = "auto", device: str = "auto"
) -> Predictor:
    """`resnetcls.load(path)`: the Predictor for a run directory (its best/ model, else final/), a model
    directory, or a bare model.onnx that `resnetcls export` wrote (backend onnxruntime or openvino)."""
    return Predictor(model, device=device, precision=precision, backend=backend)


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
