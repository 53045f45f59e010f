"""Predictor: model directory -> top-k class names and probabilities for images; the PATH arguments of
`resnetcls predict` (command.py prints the predictions).

PATH arguments may be image files, folders (searched recursively), globs, or CSV files listing paths.
Images are decoded on a few threads one batch ahead of the model, so a folder of small images runs at
the model's batched throughput rather than one image at a time.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..data.decode import DecodeError, decode_image, decode_in_memory
from ..data.transforms import build_eval_transform, stack_images
from ..errors import UserError
from ..records.modelfile import LoadedModel, load_model_dir
from ..utils.hardware import auto_exported_backend, pick_device, precision_name, resolve_amp, usable_cores
from ..utils.openset import UNKNOWN, open_set_threshold
from ..utils.progress import progress_bar
from .addclass import TuneSettings, add_class
from .inputs import ImageInput, input_name, to_items
from .multilabel import label_rule, labels_json, labels_repr, model_probabilities, open_set_mode
from .sessions import (
    int8_session_for,
    onnx_file_current,
    onnx_logits,
    onnx_probabilities,
    onnx_scored_probabilities,
    onnx_session,
    onnx_session_for,
    require_open_set_output,
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
    # with open-set rejection on: the image's score and whether it fell below the threshold ("unknown")
    open_set_score: float | None = None
    unknown: bool = False
    labels: list[str] | None = None  # a multi-label model's answer (multilabel.py), highest first; else None
    label_probs: dict[str, float] = field(default_factory=dict)  # each of those labels' probability

    @property
    def label(self) -> str:
        """The answer: the top class, or UNKNOWN when open-set rejection is on and the score is below the
        threshold ("" for an image that could not be read)."""
        return UNKNOWN if self.unknown else self.top[0][0] if self.top else ""

    def to_dict(self) -> dict:
        if self.error:
            return {"path": self.path, "error": self.error}
        extra = labels_json(self) | ({"gradcam": self.gradcam} if self.gradcam else {})
        if self.open_set_score is not None:
            extra.update(label=self.label, unknown=self.unknown, open_set_score=round(self.open_set_score, 6))
        return {"path": self.path, "top": [{"class": c, "prob": round(p, 6)} for c, p in self.top], **extra}

    def __repr__(self) -> str:
        body = f"error: {self.error}" if self.error else ", ".join(f"{c} {p:.2f}" for c, p in self.top)
        body = body if self.error else labels_repr(self) + body
        if self.unknown:
            body = f"{UNKNOWN} (score {self.open_set_score:.3g}; nearest {body})"
        return f"Prediction({self.path!r}: {body})"


EachImage = Callable[[Prediction, torch.Tensor], None]  # Predictor.predict's `each`: a result and its image


def resolve_backend(backend: str, precision: str, loaded: LoadedModel, device: torch.device) -> str:
    """ "auto" -> the fastest verified fp path on this machine, as bench/inference.py measured it: with a
    checked, current model.onnx (export parity-checked it), hardware.auto_exported_backend (OpenVINO on AMX
    CPUs, eager bf16 torch on other native-bf16 CPUs, ONNX Runtime fp32 elsewhere). Without one (exporting in
    memory would cost seconds at every start): eager torch, bf16 where native. A GPU or an explicit
    --precision keeps torch. int8 is never chosen by auto: it changes results slightly, so it is asked for by
    name. A model.onnx exported before the model's open-set score was fitted is not current: auto runs torch,
    which rejects unknown images as the model directory asks, rather than a faster file that cannot (a note
    says to re-export it); an explicit onnxruntime or openvino backend exports in memory instead."""
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
    (slow where it is emulated). Probabilities: softmax(logits / T), T model.json's calibration temperature
    (1 without one; the ONNX graph has it built in); a multi-label model's: sigmoid(logits), each Prediction
    listing the labels at or above their thresholds (multilabel.py). Open-set rejection is off for those.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        device: str = "auto",
        precision: str = "auto",
        channels_last: bool = True,
        backend: str = "auto",
        open_set: str = "auto",
        unknown_accept: float | None = None,
        label_threshold: float | None = None,
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
        open_set, unknown_accept = open_set_mode(self.loaded, open_set, unknown_accept)  # off: multi-label
        self.threshold = open_set_threshold(self.loaded, open_set, unknown_accept)
        self.label_rule = label_rule(self.loaded, label_threshold)  # None: a single-label model
        self.unknown_accept = unknown_accept
        if self.threshold is not None and self.session is not None:  # rejection needs the file's score
            require_open_set_output(self.session, self.loaded, int8=backend.endswith("-int8"))

    def _session(self, backend: str, precision: str):
        runtime = backend.removesuffix("-int8")
        if isinstance(self.loaded, OnnxModel):
            return onnx_session(self.loaded.path, runtime=runtime, precision=precision)
        if backend.endswith("-int8"):
            return int8_session_for(self.loaded, runtime=runtime)
        return onnx_session_for(self.loaded, runtime=runtime, precision=precision)

    def __repr__(self) -> str:
        info = self.open_set_info()
        open_set = f"{info['score']} below {info['threshold']:.4g}" if info["on"] else "off"
        return (
            f"Predictor(model={str(self.loaded.path)!r}, classes={len(self.classes)}, "
            f"backend={self.backend!r}, precision={self.precision!r}, open_set={open_set!r})"
        )

    def open_set_info(self) -> dict:
        """Open-set rejection as it runs: on (bool), score (the model's score name, None without one),
        threshold (None when off) and accept (the share of known validation images it accepts)."""
        record = getattr(self.loaded, "open_set", None) or {}
        on = self.threshold is not None
        accept = (self.unknown_accept or record.get("accept")) if on else None
        return {"on": on, "score": record.get("score"), "threshold": self.threshold, "accept": accept}

    def open_set_scores(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        """The model's open-set scores (N,) of pooled features and raw logits (features_and_logits), or None
        when rejection is off."""
        return None if self.threshold is None else self.loaded.scorer(features, logits)

    def add_class(
        self, name: str, photos, out: str | os.PathLike, seed: int = 0, force: bool = False
    ) -> Predictor:
        """A Predictor on a new model directory `out`: this model taught class `name` from `photos` (files,
        folders, globs or CSV lists) in seconds, without retraining the network (addclass.add_class)."""
        if self.model is None:
            raise UserError(
                f"{self.loaded.path}: a bare ONNX file cannot learn a class; use its model directory"
            )
        settings = TuneSettings(seed=seed)
        path = add_class(self.loaded.path, name, photos, out, settings=settings, force=force)
        return Predictor(path, device=self.device.type)

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
    def features_and_logits(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, S, S) preprocessed images -> the eager model's pooled penultimate features (N, D) and raw
        logits (N, classes), both fp32 on the CPU, in the predictor's autocast."""
        if self.model is None:
            raise UserError(f"{self.loaded.path}: a bare ONNX file has no eager model to give features")
        batch = batch.to(self.device, memory_format=self.memory_format)
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None
        ):
            features = self.model.forward_head(self.model.forward_features(batch), pre_logits=True)
            logits = self.model.fc(features)
        return features.float().cpu(), logits.float().cpu()

    @torch.inference_mode()
    def scored_probabilities(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, 3, S, S) preprocessed images -> calibrated probabilities (N, classes) and the open-set scores
        (N,) of the model's scorer (utils/openset.py; higher = more like a known class), or None for a model
        without one. An ONNX backend runs the file's open_set_score output (None when it has none)."""
        if self.session is not None:
            return onnx_scored_probabilities(self.session, batch)
        scorer = getattr(self.loaded, "scorer", None)
        if scorer is None:
            return self.probabilities(batch), None
        features, logits = self.features_and_logits(batch)
        return model_probabilities(logits, self.loaded), scorer(features, logits)

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) preprocessed images -> (N, classes) fp32 probabilities softmax(logits / T)."""
        if self.session is not None:
            return onnx_probabilities(self.session, batch)
        return model_probabilities(self.logits(batch), self.loaded)

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
        probs, scores = self.scored_probabilities(batch) if self.threshold is not None else (None, None)
        probs = self.probabilities(batch) if probs is None else probs
        if tta:
            probs = (probs + self.probabilities(batch.flip(-1))) / 2
        values, indices = probs.topk(min(topk, len(self.classes)), dim=1)
        for n, (i, vals, idxs) in enumerate(zip(slots, values.tolist(), indices.tolist())):
            results[i].top = [(self.classes[c], v) for c, v in zip(idxs, vals)]
            if scores is not None:
                results[i].open_set_score = float(scores[n])
                results[i].unknown = results[i].open_set_score < self.threshold
        if self.label_rule is not None:
            self.label_rule.annotate([results[i] for i in slots], probs)
        if each is not None:
            for i, image in zip(slots, tensors):
                each(results[i], image)


def load(
    model: str | os.PathLike,
    backend: str = "auto",
    precision: str = "auto",
    device: str = "auto",
    open_set: str = "auto",
    unknown_accept: float | None = None,
    label_threshold: float | None = None,
) -> Predictor:
    """`resnetcls.load(path)`: the Predictor for a run directory (its best/ model, else final/), a model
    directory, or a bare model.onnx that `resnetcls export` wrote (backend onnxruntime or openvino).
    open_set, unknown_accept and label_threshold: predict's --open-set, --unknown-accept (a Prediction's
    label is "unknown" below the model's open-set threshold) and --threshold (multi-label models)."""
    return Predictor(
        model,
        device=device,
        precision=precision,
        backend=backend,
        open_set=open_set,
        unknown_accept=unknown_accept,
        label_threshold=label_threshold,
    )
