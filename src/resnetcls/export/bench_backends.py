"""The backends `resnetcls benchmark` measures, each as a Runner: a function from a preprocessed batch to
calibrated probabilities, and the file it runs.

An exported file in the model folder is reused only while model.json records its sha256, the file still has
it (records/modelfile.check_export_hash) and it was exported from the folder's current weights, temperature
and open-set record; a file whose sha256 differs from its record is refused with the reason (Refused), and a
stale or unrecorded one is passed over with a note on stderr. Everything else is exported into the
benchmark's work folder (int8: quantized as `export --int8` quantizes, calibrated on the run's training
images), never into the model folder.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..inference.predictor import Predictor
from ..inference.sessions import (
    INT8_FILE,
    ONNX_FILE,
    export_command,
    export_metadata,
    int8_session_for,
    onnx_bytes,
    onnx_file_current,
    onnx_probabilities,
    onnx_session,
)
from ..records.modelfile import WEIGHTS, LoadedModel, check_export_hash
from ..utils.hardware import cpu_has_fast_bf16
from .formats import FORMATS, load_torchscript, read_export_metadata, torchscript_bytes
from .int8 import export_int8

BACKENDS = (
    "torch-fp32",
    "torch-bf16",
    "onnxruntime-fp32",
    "onnxruntime-int8",
    "openvino-fp32",
    "openvino-bf16",
    "openvino-int8",
    "torchscript",
)
REFERENCE = "torch-fp32"  # every other backend's top-1 is compared with this one's
FP32_BACKENDS = ("torch-fp32", "onnxruntime-fp32", "openvino-fp32", "torchscript")
TORCHSCRIPT_FILE = FORMATS["torchscript"]


class Unavailable(Exception):
    """The backend cannot run on this machine (the message says why)."""


class Refused(Exception):
    """The backend's file may not be run (the message says why, e.g. its sha256 differs from model.json)."""


@dataclass
class Runner:
    backend: str
    run: Callable[[torch.Tensor], torch.Tensor]  # (N, 3, S, S) -> (N, classes) calibrated probabilities
    file: Path
    origin: str  # "model folder" (a verified export reused) or "work folder" (exported for the benchmark)
    precision: str


def note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def parse_backends(text: str | None) -> list[str]:
    """--backends a,b,...: known names in the order given (default: all); an unknown name is a UserError."""
    if not text:
        return list(BACKENDS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names:
        raise UserError(f"--backends {text!r}: expected names among {', '.join(BACKENDS)}")
    return list(dict.fromkeys(names))


def _require_module(module: str, name: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise Unavailable(f"{name} is not installed (pip install {module})")


class BackendFiles:
    """The files the backends run, found (verified) in the model folder or exported into `work` once each;
    a refusal or unavailability is remembered, so every backend of one file reports the same reason."""

    def __init__(self, loaded: LoadedModel, work: Path, device: str = "auto") -> None:
        self.loaded, self.work, self.device = loaded, work, device
        self.found: dict[str, tuple[Path, str] | Exception] = {}

    def file(self, kind: str) -> tuple[Path, str]:
        """(path, origin) of the "onnx", "int8" or "torchscript" file; Refused or Unavailable as found."""
        if kind not in self.found:
            makers = {"onnx": self._onnx, "int8": self._int8, "torchscript": self._torchscript}
            try:
                self.found[kind] = makers[kind]()
            except (Refused, Unavailable) as e:
                self.found[kind] = e
        found = self.found[kind]
        if isinstance(found, Exception):
            raise found
        return found

    def _verified(self, name: str, command: str) -> bool:
        """Whether the model folder's file `name` is recorded in model.json; Refused when it was changed."""
        try:
            return check_export_hash(self.loaded, name, command)
        except UserError as e:
            raise Refused(str(e)) from None

    def _onnx(self) -> tuple[Path, str]:
        path = self.loaded.path / ONNX_FILE
        if path.is_file():
            self._verified(ONNX_FILE, export_command(self.loaded))
            if onnx_file_current(self.loaded):
                return path, "model folder"
            note(f"{path} is not the current export of {self.loaded.path}; benchmarking a fresh export")
        _require_module("onnx", "ONNX")
        out = self.work / ONNX_FILE
        out.write_bytes(onnx_bytes(self.loaded))
        return out, "work folder"

    def _int8(self) -> tuple[Path, str]:
        path, command = self.loaded.path / INT8_FILE, export_command(self.loaded, int8=True)
        _require_module("onnxruntime", "ONNX Runtime")
        if path.is_file() and self._verified(INT8_FILE, command):
            try:
                int8_session_for(self.loaded)  # also checks it was quantized from these weights
                return path, "model folder"
            except UserError as e:
                note(f"{e}; benchmarking a fresh quantization")
        out = self.work / INT8_FILE
        try:
            export_int8(self.loaded.path, out=out, min_agreement=0.0)
        except UserError as e:
            raise Unavailable(f"cannot quantize it here: {e}") from None
        return out, "work folder"

    def _torchscript(self) -> tuple[Path, str]:
        path = self.loaded.path / TORCHSCRIPT_FILE
        command = f"resnetcls export {self.loaded.path} --to torchscript"
        if path.is_file() and self._verified(TORCHSCRIPT_FILE, command):
            if read_export_metadata(path) == export_metadata(self.loaded.meta):
                return path, "model folder"
            note(f"{path} was exported from other weights or calibration; benchmarking a fresh export")
        out = self.work / TORCHSCRIPT_FILE
        out.write_bytes(torchscript_bytes(self.loaded))
        return out, "work folder"


def _torch_runner(files: BackendFiles, backend: str) -> Runner:
    precision = backend.removeprefix("torch-")
    predictor = Predictor(files.loaded.path, device=files.device, backend="torch", precision=precision)
    if precision == "bf16" and predictor.device.type == "cpu" and not cpu_has_fast_bf16():
        raise Unavailable("this CPU has no native bf16 (emulated bf16 is slower than fp32)")
    return Runner(backend, predictor.probabilities, files.loaded.path / WEIGHTS, "model folder", precision)


def _onnx_runner(files: BackendFiles, backend: str) -> Runner:
    runtime, precision = backend.split("-")
    if runtime == "openvino":
        _require_module("openvino", "OpenVINO")
        if precision == "bf16" and not cpu_has_fast_bf16():
            raise Unavailable("this CPU has no native bf16 (emulated bf16 is slower than fp32)")
    else:
        _require_module("onnxruntime", "ONNX Runtime")
    path, origin = files.file("int8" if precision == "int8" else "onnx")
    try:
        # int8: the float parts in what predict's openvino-int8 runs them in (bf16 where native)
        session = onnx_session(path, runtime=runtime, precision="auto" if precision == "int8" else precision)
    except UserError as e:  # OpenVINO cannot compile it for this CPU
        raise Unavailable(str(e)) from None
    return Runner(backend, lambda batch: onnx_probabilities(session, batch), path, origin, precision)


def _torchscript_runner(files: BackendFiles, backend: str) -> Runner:
    path, origin = files.file("torchscript")
    scripted = load_torchscript(path)

    @torch.inference_mode()
    def run(batch: torch.Tensor) -> torch.Tensor:
        return scripted(batch)[1]

    return Runner(backend, run, path, origin, "fp32")


def build_runner(files: BackendFiles, backend: str) -> Runner:
    """The Runner of `backend`; Unavailable (cannot run here) or Refused (its file may not be run)."""
    if backend.startswith("torch-"):
        return _torch_runner(files, backend)
    if backend == "torchscript":
        return _torchscript_runner(files, backend)
    return _onnx_runner(files, backend)
