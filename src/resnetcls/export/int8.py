"""int8 ONNX export (`resnetcls export MODEL --to onnx --int8`): ONNX Runtime static quantization, checked
against fp32 on real validation images, in both runtimes that run it (ONNX Runtime, OpenVINO), before anything
is written.

Why ONNX Runtime's quantizer and not PyTorch's PT2E x86 quantizer: PT2E's X86InductorQuantizer now lives in
torchao (not a dependency here), and ONNX Runtime's QDQ file runs in both ONNX Runtime (7.6x torchvision fp32
at batch 32 on the Zen 4 machine) and OpenVINO (2.3-3x ONNX Runtime again on Xeon-AMX, README, int8) - the
fastest paths found. Static QDQ with per-channel int8 weights and uint8 activations: VNNI and AMX CPUs run it
with int8 dot products; AVX2-only CPUs run the same file correctly, only slower.

A model with an open-set score keeps its third output, `open_set_score`: the nodes that compute only the score
(after the pooled features) stay float32, since int8 would round the whitened distances and cosines the
threshold compares; its check compares the accept/reject decisions at the model's threshold (not the values,
whose differences follow from the quantized features), on the same validation images, in both runtimes. The
agreement is printed and recorded, not held to --min-agreement: the threshold was set on these validation
images, so some lie next to it by construction and flip with any error (one flip is a third of a tiny run's
three validation images).

A multi-label model (model.json "multi_label") is checked by its decisions instead of its top-1: the share of
(image, class) pairs on which int8 and fp32 agree whether the class reaches its threshold, held to
--min-agreement (no accuracy is reported: the validation images' first label is not the answer).

This module sits with evaluation/rank/serve in the layers (not beside export) because it reads the model's
training data set (data.sources, config.yaml), which export, predict and serve may not import.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import load_yaml
from ..data.decode import DecodeError, decode_image
from ..data.sources import Samples, load_splits
from ..data.transforms import build_eval_transform
from ..errors import UserError
from ..inference.sessions import (
    INT8_FILE,
    OPEN_SET_OUTPUT,
    RUNTIME_NAMES,
    RUNTIMES,
    export_head,
    export_metadata,
    onnx_bytes,
    onnx_output,
    onnx_probabilities,
    onnx_session,
    runtime_telemetry_off,
)
from ..records.modelfile import LoadedModel, load_model_dir, record_export
from ..utils.atomic import write_atomic
from ..utils.multilabel import decide

VALIDATION_IMAGES = 500  # at most this many validation images are compared (a few seconds of int8 inference)


@dataclass
class Int8Result:
    """What `export --int8` checked and wrote."""

    path: Path
    bytes: int
    calibration_images: int
    calibration_source: str
    images: int
    agreement: float  # the lowest of the runtimes'
    fp32_top1: float | None
    int8_top1: float | None  # the lowest of the runtimes'
    by_runtime: dict[str, dict]  # runtime -> {"agreement", "int8_top1"}: each runs its own int8 kernels
    # a model with an open-set score: the lowest share of images both call known or both unknown
    open_set_agreement: float | None = None
    multi_label: bool = False  # agreement is then the share of (image, class) decisions that agree

    def summary(self) -> str:
        """One line: agreement with fp32 and the accuracy drop (when the images have labels)."""
        each = ", ".join(f"{RUNTIME_NAMES[r]} {v['agreement']:.2%}" for r, v in self.by_runtime.items())
        what = "label decisions (image, class) agree" if self.multi_label else "top-1 agrees"
        line = (
            f"int8 vs fp32 on {self.images} validation images: {what} on {self.agreement:.2%} ({each};"
            f" calibrated on {self.calibration_images} images from {self.calibration_source})"
        )
        if self.open_set_agreement is not None:
            line += f"; unknown/known decisions agree on {self.open_set_agreement:.2%}"
        if self.fp32_top1 is not None:
            each = ", ".join(f"{RUNTIME_NAMES[r]} {v['int8_top1']:.2%}" for r, v in self.by_runtime.items())
            line += (
                f"; accuracy fp32 {self.fp32_top1:.2%}, int8 {self.int8_top1:.2%} ({each}; "
                f"drop {100 * (self.fp32_top1 - self.int8_top1):.2f} points)"
            )
        return line

    def record(self) -> dict:
        """model.json's "int8" field: the file and what it was checked on."""
        return {
            "file": self.path.name,
            "images": self.images,
            "agreement": round(self.agreement, 6),
            "fp32_top1": self.fp32_top1,
            "int8_top1": self.int8_top1,
            "runtimes": {r: {**v, "agreement": round(v["agreement"], 6)} for r, v in self.by_runtime.items()},
            "calibration_images": self.calibration_images,
            "calibration_source": self.calibration_source,
            **({"open_set_agreement": round(self.open_set_agreement, 6)} if self.open_set else {}),
            **({"agreement_of": "label decisions (image, class)"} if self.multi_label else {}),
        }

    @property
    def open_set(self) -> bool:
        return self.open_set_agreement is not None


def training_data(model_dir: Path, calibration: str | os.PathLike | None) -> tuple[Samples, Samples, str]:
    """(calibration samples, validation samples, where from): --calibration DATA, else the run's config.yaml
    (in the model directory or the run directory above it), split as training split it."""
    if calibration is not None:
        if not Path(calibration).exists():
            raise UserError(f"--calibration {calibration}: no such file or folder")
        splits = load_splits(str(calibration))
        return splits.train, splits.val, str(calibration)
    for config in (model_dir / "config.yaml", model_dir.parent / "config.yaml"):
        if config.is_file():
            data = load_yaml(config).get("data", {})
            if not data.get("train"):
                raise UserError(f"{config}: data.train is not set; give --calibration DATA")
            splits = load_splits(
                str(data["train"]),
                data.get("val") or "",
                data.get("val_fraction", 0.1),
                load_yaml(config).get("train", {}).get("seed", 0),
                data.get("split_by") or "",
                data.get("batches") or "",
            )
            return splits.train, splits.val, str(data["train"])
    raise UserError(
        f"{model_dir}: no config.yaml here or in the run directory above; give --calibration DATA "
        "(images like the training data)"
    )


def _tensors(
    loaded: LoadedModel, samples: Samples, count: int, seed: int = 0
) -> tuple[torch.Tensor, list[int]]:
    """Up to count preprocessed images drawn at random (fixed seed) from samples, with their class index in
    the model's classes (-1 for a class the model does not know); undecodable images are skipped."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    transform, index = build_eval_transform(loaded.preprocess), {c: i for i, c in enumerate(loaded.classes)}
    tensors, labels = [], []
    for i in order:
        if len(tensors) >= count:
            break
        try:
            tensors.append(transform(decode_image(samples.paths[i])))
        except DecodeError:
            continue
        labels.append(index.get(samples.classes[samples.labels[i]], -1))
    if not tensors:
        raise UserError("no readable images to calibrate or check the int8 model with")
    return torch.stack(tensors), labels


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader protocol: one batch of 16 images per call."""

    def __init__(self, images: torch.Tensor) -> None:
        self.batches = iter(images.split(16))

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {"input": np.ascontiguousarray(batch.numpy())}


def _score_only_nodes(path: Path) -> list[str]:
    """The names of the nodes that compute open_set_score and neither logits nor probabilities: the scorer,
    after the pooled features ([] for a model without one)."""
    import onnx

    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}

    def ancestors(names: list[str]) -> set[str]:
        seen, stack = set(), [n for n in names if n in producer]
        while stack:
            node = producer[stack.pop()]
            if node.name not in seen:
                seen.add(node.name)
                stack.extend(i for i in node.input if i in producer)
        return seen

    outputs = {o.name for o in graph.output}
    if OPEN_SET_OUTPUT not in outputs:
        return []
    return sorted(ancestors([OPEN_SET_OUTPUT]) - ancestors(sorted(outputs - {OPEN_SET_OUTPUT})))


def int8_bytes(loaded: LoadedModel, calibration: torch.Tensor) -> bytes:
    """The fp32 ONNX graph quantized statically: QDQ, per-channel int8 weights, uint8 activations (MinMax)."""
    import onnx

    runtime_telemetry_off()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        fp32, pre, out = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        fp32.write_bytes(onnx_bytes(loaded))
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)  # folds BN, infers shapes
        quantize_static(
            str(pre),
            str(out),
            _Reader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=_score_only_nodes(pre),
            op_types_to_quantize=[
                "Conv",
                "MatMul",
                "Gemm",
                "Add",
                "Relu",
                "MaxPool",
                "GlobalAveragePool",
                "Flatten",
                "Reshape",
            ],
        )
        proto = onnx.load(str(out))
    del proto.metadata_props[:]
    for key, value in {
        **export_metadata(loaded.meta),
        "quantization": "int8 static QDQ (ONNX Runtime)",
    }.items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def _top1(pred: torch.Tensor, labels: list[int]) -> float | None:
    known = [(int(p), y) for p, y in zip(pred, labels) if y >= 0]
    return sum(p == y for p, y in known) / len(known) if known else None


def _eager_fp32(loaded: LoadedModel, check: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The eager fp32 probabilities of the check images and, for a model with an open-set score, whether
    each is known (its score at or above the model's threshold)."""
    with torch.inference_mode():
        outputs = [export_head(loaded)(b) for b in check.split(64)]
    probs = torch.cat([o[1] for o in outputs])
    if loaded.scorer is None:
        return probs, None
    return probs, torch.cat([o[2] for o in outputs]) >= float(loaded.open_set["threshold"])


def agreement(loaded: LoadedModel, fp32: torch.Tensor, int8: torch.Tensor) -> float:
    """The share of images whose top-1 agrees between two (N, classes) probabilities; for a multi-label model,
    the share of (image, class) decisions at its thresholds that agree."""
    if loaded.multi_label is None:
        return float((fp32.argmax(1) == int8.argmax(1)).float().mean())
    thresholds = loaded.multi_label["thresholds"]
    return float((decide(fp32, thresholds) == decide(int8, thresholds)).float().mean())


def _check_runtimes(loaded: LoadedModel, data: bytes, check: torch.Tensor, labels: list[int]) -> tuple:
    """(eager top-1, {runtime: {"agreement", "int8_top1"[, "open_set_agreement"]}}): each runtime runs the
    QDQ file with its own int8 kernels, so each is checked."""
    fp32, known = _eager_fp32(loaded, check)
    by_runtime = {}
    for runtime in RUNTIMES:
        session = onnx_session(data, runtime=runtime)
        int8 = torch.cat([onnx_probabilities(session, b) for b in check.split(64)])
        by_runtime[runtime] = {
            "agreement": agreement(loaded, fp32, int8),
            "int8_top1": _top1(int8.argmax(1), labels),
        }
        if known is not None:  # decisions, not values: see the module's docstring
            scores = torch.cat([onnx_output(session, b, OPEN_SET_OUTPUT) for b in check.split(64)])
            decided = scores >= float(loaded.open_set["threshold"])
            by_runtime[runtime]["open_set_agreement"] = float((decided == known).float().mean())
    return fp32.argmax(1), by_runtime


def export_int8(
    model: str | os.PathLike,
    calibration: str | os.PathLike | None = None,
    images: int = 256,
    min_agreement: float = 0.99,
    out: str | os.PathLike | None = None,
) -> Int8Result:
    """Quantize MODEL to int8 ONNX, calibrated on `images` training images, and write it (default
    MODEL/model.int8.onnx, recorded with its sha256 in model.json's "int8" and "sha256" fields) only when its
    top-1 agrees with eager fp32 on at least min_agreement of the validation images; else UserError with the
    numbers, nothing written. A model with an open-set score reports (and records) the share of the images
    on whose unknown/known decision int8 and fp32 agree."""
    if images < 1:
        raise UserError(f"--calibration-images {images}: expected a whole number of at least 1")
    if not 0 <= min_agreement <= 1:
        raise UserError(f"--min-agreement {min_agreement}: expected a fraction between 0 and 1")
    loaded = load_model_dir(model, "cpu")
    path = Path(out) if out else loaded.path / INT8_FILE
    train, val, source = training_data(loaded.path, calibration)
    calib, _ = _tensors(loaded, train, images)
    check, labels = _tensors(loaded, val, VALIDATION_IMAGES, seed=1)
    labels = labels if loaded.multi_label is None else [-1] * len(labels)  # no top-1 accuracy: see above
    data = int8_bytes(loaded, calib)
    fp32, by_runtime = _check_runtimes(loaded, data, check, labels)
    decisions = [v["open_set_agreement"] for v in by_runtime.values() if "open_set_agreement" in v]
    worst = min(by_runtime.values(), key=lambda v: v["agreement"])
    int8_top1 = None if worst["int8_top1"] is None else min(v["int8_top1"] for v in by_runtime.values())
    result = Int8Result(
        path,
        len(data),
        len(calib),
        source,
        len(check),
        worst["agreement"],
        _top1(fp32, labels),
        int8_top1,
        by_runtime,
        min(decisions) if decisions else None,
        loaded.multi_label is not None,
    )
    if result.agreement < min_agreement:
        raise UserError(
            f"int8 export of {loaded.path} not written: {result.summary()}; below --min-agreement "
            f"{min_agreement:g} (try more --calibration-images, or keep the fp32 model.onnx)"
        )
    write_atomic(path, data)
    if (
        path.parent.resolve() == loaded.path.resolve()
    ):  # in the model directory: its sha256 and checks recorded
        record_export(loaded.path, path.name, "int8", result.record())
    return result
