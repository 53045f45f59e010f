"""Exported files that take camera frames as they come: uint8 (N, S, S, 3) RGB pixels, NHWC, at the model's
input size, with the normalisation (mean, std), the calibrated softmax and the open-set score inside the
graph, so a program with nothing but ONNX Runtime (or OpenVINO, or PyTorch for the TorchScript file) feeds
`np.uint8[None]` of a frame resized to S x S and reads probabilities.

What stays with the caller is the resize (and, for a model whose preprocessing crops, the centre crop) to
S x S: the metadata key "input" says how (input_contract). The files are named apart from the float32 ones
(model.uint8in.onnx, model.uint8in.torchscript.pt; FRAME_FILES) so that predict and serve, which feed
preprocessed float32 batches to model.onnx, never pick one up; a bare uint8 file given to them is refused
in one line (inference/standalone.py).

Before a file is written its top-1 is compared with eager PyTorch's, the Predictor's path, on the same
pixels: the check images (the run's validation images by default, as export_model picks them) through the
model's eval resize and crop, fed as uint8 to the file and normalised for eager (up to CHECK_IMAGES of them).
Top-1 must agree on at least MIN_AGREEMENT of them and every probability must be within
formats.PROB_TOLERANCE (batched and at batch size 1); below that nothing is written (ExportCheckFailed).
"""

from __future__ import annotations

import io
import json
import math
import os
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..inference.sessions import (
    INT8_FILE,
    ONNX_FILE,
    export_head,
    export_metadata,
    onnx_bytes,
    onnx_session,
    output_names,
)
from ..inference.standalone import FRAME_DTYPE, FRAME_LAYOUT
from ..records.modelfile import LoadedModel, load_model_dir, record_export
from ..utils.atomic import write_atomic
from .formats import (
    FORMATS,
    PROB_TOLERANCE,
    TORCHSCRIPT_META,
    CheckImages,
    ExportCheckFailed,
    ExportResult,
    ParityResult,
    check_parity,
    load_check_images,
    load_torchscript,
)

FRAME_FILES = {"onnx": "model.uint8in.onnx", "torchscript": "model.uint8in.torchscript.pt"}
MIN_AGREEMENT = 0.995  # the share of check images whose top-1 must equal eager PyTorch's
CHECK_IMAGES = 200  # at most this many check images: enough for 99.5% to allow one near-tie to flip
INPUTS = ("float", "uint8")  # export --input: float32 preprocessed (N, 3, S, S), or uint8 frames


class FrameHead(nn.Module):
    """uint8 (N, S, S, 3) RGB frames -> the exported outputs of export_head (logits, probabilities and the
    open-set score, if any). The pixels are normalised as data/transforms.ToNormalizedTensor does it, the same
    float32 operations in the same order: x * float32(1/255), - mean, / std."""

    def __init__(self, head: nn.Module, mean, std) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1))

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scaled = frames.permute(0, 3, 1, 2).to(torch.float32) * (1 / 255)
        return self.head((scaled - self.mean) / self.std)


def frame_head(loaded: LoadedModel) -> FrameHead:
    """What the exporters trace for a uint8 file: export_head behind the model's own normalisation."""
    pre = loaded.preprocess
    return FrameHead(export_head(loaded), pre["mean"], pre["std"]).eval()


def _caller_resize(preprocess: dict) -> str:
    size, interpolation = preprocess["image_size"], preprocess.get("interpolation", "bilinear")
    mode = preprocess.get("resize_mode")
    if mode == "shorter_side":
        return (
            f"done by the caller: the shorter side to {preprocess['resize']} px ({interpolation}, "
            f"antialiased), then the centre {size}x{size}"
        )
    if mode == "square":
        return f"done by the caller: the whole image to {size}x{size} ({interpolation}, antialiased)"
    return f"done by the caller, to {size}x{size} as the metadata key 'preprocess' records it"


def input_contract(loaded: LoadedModel) -> dict:
    """The uint8 file's input, as the metadata key "input" records it (JSON)."""
    pre = loaded.preprocess
    names = output_names(loaded)
    return {
        "name": "input",
        "dtype": FRAME_DTYPE,
        "layout": FRAME_LAYOUT,
        "shape": ["N", pre["image_size"], pre["image_size"], 3],
        "size": pre["image_size"],
        "color": "RGB",
        "resize": _caller_resize(pre),
        "normalization": f"in the graph: (x / 255 - mean) / std, mean {pre['mean']}, std {pre['std']}",
        "outputs": names,
    }


def frame_metadata(loaded: LoadedModel) -> dict[str, str]:
    """The float32 file's metadata (export_metadata), with "input" the uint8 contract as JSON."""
    return {**export_metadata(loaded.meta), "input": json.dumps(input_contract(loaded))}


def example_frames(loaded: LoadedModel, batch: int = 2) -> torch.Tensor:
    """Random uint8 (batch, S, S, 3) frames at the model's input size (what the exporters trace with)."""
    size = loaded.preprocess["image_size"]
    return torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)


def frame_onnx_bytes(loaded: LoadedModel) -> bytes:
    """The uint8 graph through sessions.onnx_bytes (torch.export, a dynamic batch dimension)."""
    size = loaded.preprocess["image_size"]
    note = f", input uint8 (N, {size}, {size}, 3) RGB frames"
    return onnx_bytes(loaded, frame_head(loaded), example_frames(loaded), frame_metadata(loaded), note)


def frame_torchscript_bytes(loaded: LoadedModel) -> bytes:
    """The uint8 graph traced and frozen; model.json (with the input contract under "input") rides along."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream; users ask for it
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.freeze(
            torch.jit.trace(frame_head(loaded), example_frames(loaded), check_trace=False)
        )
        buffer = io.BytesIO()
        meta = {**loaded.meta, "input": input_contract(loaded)}
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_META: json.dumps(meta, indent=2)})
    return buffer.getvalue()


def frame_pixels(images: CheckImages, preprocess: dict) -> torch.Tensor:
    """The uint8 (N, S, S, 3) pixels the check images' normalised tensors were made from: (x * std + mean) *
    255 is each pixel within float32 rounding (1e-4), so rounding gives it back exactly."""
    mean = torch.tensor(preprocess["mean"], dtype=torch.float64).reshape(1, 3, 1, 1)
    std = torch.tensor(preprocess["std"], dtype=torch.float64).reshape(1, 3, 1, 1)
    pixels = ((images.tensors.double() * std + mean) * 255).round().clamp(0, 255)
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def frame_runner(fmt: str, data: bytes, frames: torch.Tensor, runtime: str = "onnxruntime"):
    """check_parity's `run` for a uint8 file: a batch of the check images' tensors -> the file's
    (probabilities, open-set scores or None) on the same images' uint8 frames (the first len(batch): the
    check runs the whole set, then its first image)."""
    if fmt == "onnx":
        session = onnx_session(data, runtime=runtime, precision="fp32")
        names = [output.name for output in session.get_outputs()]

        def run_onnx(batch):
            feed = {"input": frames[: len(batch)].numpy()}
            outputs = [torch.from_numpy(out) for out in session.run(names, feed)]
            return outputs[1], outputs[2] if len(outputs) > 2 else None

        return run_onnx
    scripted = load_torchscript(data)

    def run_scripted(batch):
        outputs = scripted(frames[: len(batch)])
        return outputs[1], outputs[2] if len(outputs) > 2 else None

    return run_scripted


class FrameParity(ParityResult):
    """ParityResult on the same pixels, whose top-1 must agree on at least MIN_AGREEMENT of the images."""

    @property
    def passed(self) -> bool:
        return (
            self.top1_agree >= math.ceil(MIN_AGREEMENT * self.images)
            and self.max_abs_diff <= PROB_TOLERANCE
            and self.batch1_max_abs_diff <= PROB_TOLERANCE
            and (self.score is None or self.score.passed)
        )

    def summary(self) -> str:
        return f"uint8 frames: {super().summary()} (top-1 must agree on {MIN_AGREEMENT:.1%})"


def frame_parity(loaded: LoadedModel, run, images: CheckImages) -> FrameParity:
    """check_parity of a uint8 file's runner, judged by FrameParity."""
    result = check_parity(loaded, run, images)
    return FrameParity(**vars(result))


def frame_path(loaded: LoadedModel, fmt: str, out: str | os.PathLike | None) -> Path:
    """Where the uint8 file goes: FRAME_FILES in the model directory by default. The float32 files' names in
    the model directory are refused: predict and serve would feed that file float32 batches."""
    path = Path(out) if out else loaded.path / FRAME_FILES[fmt]
    if path.is_dir():
        raise UserError(f"--out {path}: is a folder; give a file name")
    reserved = {ONNX_FILE, INT8_FILE, FORMATS["torchscript"]}
    if path.name in reserved and path.parent.resolve() == loaded.path.resolve():
        raise UserError(
            f"--out {path}: that name in the model folder is for the float32 file predict and serve run; "
            f"give another name (default {FRAME_FILES[fmt]})"
        )
    return path


def export_frame_model(
    model: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike | None = None,
    check_data: str | os.PathLike | None = None,
) -> ExportResult:
    """Export MODEL to an ONNX or TorchScript file taking uint8 frames (see the module docstring), check it
    against eager PyTorch on the same pixels, then write it atomically (its sha256 recorded in model.json
    when it goes into the model directory). A failed check raises ExportCheckFailed and writes nothing."""
    if fmt not in FRAME_FILES:
        raise UserError(f"--to {fmt!r}: expected one of {', '.join(FRAME_FILES)}")
    loaded = load_model_dir(model, "cpu")
    path = frame_path(loaded, fmt, out)
    images = load_check_images(loaded, check_data, CHECK_IMAGES)
    start = time.perf_counter()
    data = frame_onnx_bytes(loaded) if fmt == "onnx" else frame_torchscript_bytes(loaded)
    seconds = time.perf_counter() - start
    frames = frame_pixels(images, loaded.preprocess)
    parity = frame_parity(loaded, frame_runner(fmt, data, frames), images)
    if not parity.passed:
        raise ExportCheckFailed(f"{fmt} uint8 export of {loaded.path} not written: {parity.summary()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    if path.parent.resolve() == loaded.path.resolve():
        record_export(loaded.path, path.name)
    return ExportResult(path, fmt, len(data), seconds, parity)
