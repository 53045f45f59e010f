"""A model.onnx on its own, without its model directory: what Predictor, `predict` and `serve` run when MODEL
is a .onnx file that `resnetcls export` wrote.

Everything the file needs travels in its metadata (sessions.export_metadata): the class names, the
preprocessing, the calibration temperature (already inside the graph's `probabilities` output), the
architecture and the weights' sha256, and for a model with an open-set score its record (threshold, accepted
share, quantiles; the score itself is the graph's `open_set_score` output), and for a multi-label model
its "multi_label" record (each class's threshold; the graph's `probabilities` are then sigmoids). It runs
with ONNX Runtime or OpenVINO only: there are no eager weights to run with torch or to explain with
Grad-CAM.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..records.metacheck import OPEN_SET_FILE, WEIGHTS, check_meta
from ..utils.hardware import auto_exported_backend
from .sessions import exported_temperature, read_onnx_metadata

# The metadata a bare file must carry to be run: what predictions are named and preprocessed by.
REQUIRED_KEYS = ("resnetcls.format", "arch", "arch_args", "classes", "preprocess")
RUNS_WITH = "a bare ONNX file runs with --backend onnxruntime or openvino"
# The input of a file exported with `export --input uint8` (export/rawinput.py), as its metadata "input" says.
FRAME_DTYPE, FRAME_LAYOUT = "uint8", "NHWC"


def is_onnx_file(model: str | os.PathLike) -> bool:
    """Whether MODEL names an ONNX file (by its suffix) rather than a model or run directory."""
    return Path(model).suffix.lower() == ".onnx" and not Path(model).is_dir()


def standalone_backend(backend: str, precision: str, path: str | os.PathLike) -> str:
    """The runtime for a bare ONNX file: "auto" is OpenVINO where it is the fastest verified path (AMX CPUs)
    or where bf16 is asked for, else ONNX Runtime; torch and the -int8 names are refused in one line."""
    if backend == "torch":
        raise UserError(
            f"{path}: --backend torch needs the model directory (model.safetensors + model.json); {RUNS_WITH}"
        )
    if backend.endswith("-int8"):
        raise UserError(
            f"--backend {backend}: {RUNS_WITH}, which runs the file as it is (an int8 file in int8)"
        )
    if backend != "auto":
        return backend
    return "openvino" if precision == "bf16" or auto_exported_backend() == "openvino" else "onnxruntime"


@dataclass
class OnnxModel:
    """A bare exported file, answering what Predictor and serve ask a LoadedModel (records/modelfile.py):
    meta (model.json's fields, rebuilt from the metadata), path, classes, preprocess, temperature, open_set
    (the record, None without one), multi_label (the thresholds' record, None for a single-label model);
    `model` and `scorer` are None (no eager weights: the file computes the score)."""

    meta: dict
    path: Path
    temperature: float
    model: None = None
    scorer: None = None

    @property
    def open_set(self) -> dict | None:
        return self.meta.get("open_set")

    @property
    def multi_label(self) -> dict | None:
        return self.meta.get("multi_label")

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def preprocess(self) -> dict:
        return self.meta["preprocess"]

    @property
    def quantized(self) -> bool:
        return bool(self.meta.get("quantization"))


def _metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return read_onnx_metadata(path)
    except Exception as e:  # noqa: BLE001 - onnx raises its own DecodeError, protobuf errors, OSError
        raise UserError(
            f"{path}: not a readable ONNX file: {str(e).splitlines()[0] if str(e) else e!r}"
        ) from None


def takes_frames(raw: dict[str, str]) -> bool:
    """Whether an exported file's metadata says it takes uint8 frames (export --input uint8), not the float32
    preprocessed batches predict and serve feed."""
    try:
        contract = json.loads(raw.get("input", ""))
    except json.JSONDecodeError:
        return False  # the float32 file's "input" is a sentence
    return isinstance(contract, dict) and contract.get("dtype") == FRAME_DTYPE


def load_onnx_file(path: str | os.PathLike) -> OnnxModel:
    """Read and check a bare model.onnx's metadata; UserError naming the file and the keys it lacks (a file
    not exported by resnetcls) or the field that is wrong."""
    path = Path(path)
    raw = _metadata(path)
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise UserError(
            f"{path}: not a resnetcls export: its metadata lacks {', '.join(missing)} "
            f"(export a model directory with `resnetcls export MODEL --to onnx`)"
        )
    if takes_frames(raw):
        raise UserError(
            f"{path}: takes uint8 camera frames (exported with --input uint8), which predict, eval and serve "
            f"do not feed; give them the model folder or the float32 file `resnetcls export MODEL --to onnx` "
            f"writes"
        )
    try:
        fields = {k: json.loads(raw[k]) for k in ("arch_args", "classes", "preprocess")}
        calibration = json.loads(raw.get("calibration", "null"))
        open_set = json.loads(raw.get("open_set", "null"))
        multi_label = json.loads(raw.get("multi_label", "null"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: metadata is not valid JSON: {e}") from None
    temperature = exported_temperature(raw)
    if temperature is None or not temperature > 0:
        raise UserError(f"{path}: metadata temperature {raw.get('temperature')!r} is not a positive number")
    meta = {"format": raw["resnetcls.format"], "arch": raw["arch"], **fields}
    if calibration is not None:
        meta["calibration"] = calibration
    if "quantization" in raw:
        meta["quantization"] = raw["quantization"]
    if open_set is not None:  # checked as model.json's record is (its tensors are inside the graph)
        meta["open_set"] = open_set
    if multi_label is not None:  # thresholds and separator, checked as model.json's record is
        meta["multi_label"] = multi_label
    hashes = {WEIGHTS: raw.get("weights_sha256", "0" * 64), OPEN_SET_FILE: "0" * 64}
    check_meta({**meta, "sha256": hashes}, path)
    return OnnxModel(meta, path, temperature)
