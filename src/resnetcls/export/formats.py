"""ONNX and TorchScript export of a model directory, each checked against eager PyTorch before it is kept.

Both formats take the same input as the eager model: float32 (N, 3, S, S) RGB images, resized, cropped and
normalised as recorded in `preprocess` (which travels in the file's metadata with the class names), with a
dynamic batch size N. Both give two outputs: `logits` (raw) and `probabilities` (the calibrated softmax over
the classes, softmax(logits / T) with model.json's calibration temperature T, as predict gives them; for a
multi-label model sigmoid(logits), its "multi_label" record (each class's threshold) in the metadata), and a
third, `open_set_score`, for a model with an open-set score (model.json "open_set"), whose record travels in
the metadata beside the class names.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.decode import DecodeError, decode_image, is_image_file
from ..data.transforms import build_eval_transform
from ..errors import UserError
from ..inference.sessions import (
    ONNX_FILE,
    example_input,
    export_head,
    export_metadata,
    onnx_bytes,
    onnx_scored_probabilities,
    onnx_session,
    read_onnx_metadata,
)
from ..records.modelfile import LoadedModel, load_model_dir, record_export
from ..records.runsplit import split_rows
from ..utils.atomic import write_atomic
from ..utils.progress import progress_bar

FORMATS = {"onnx": ONNX_FILE, "torchscript": "model.torchscript.pt"}
PROB_TOLERANCE = 1e-4
TORCHSCRIPT_META = "model.json"
SPLIT_CSV = "split.csv"  # written by train beside best/ and final/


class ExportCheckFailed(RuntimeError):
    """The exported model disagrees with eager PyTorch beyond the tolerance; nothing was written."""


def torchscript_bytes(loaded: LoadedModel) -> bytes:
    """Trace and freeze (folds BN into convs); model.json rides along as an extra file."""
    wrapped = export_head(loaded)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream; users ask for it
        # the kNN score's k (at most the bank's size, a constant) is read once while tracing: as intended
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # check_trace off: the tracer's own check runs the model three more times, and every caller compares
        # the frozen file with eager anyway (export's check_parity, the benchmark's parity)
        traced = torch.jit.freeze(torch.jit.trace(wrapped, example_input(loaded), check_trace=False))
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_META: json.dumps(loaded.meta, indent=2)})
    return buffer.getvalue()


def load_torchscript(source: str | os.PathLike | bytes, extra_files: dict | None = None):
    """torch.jit.load without its deprecation warning (the format is what the user asked for)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(
            io.BytesIO(source) if isinstance(source, bytes) else str(source), _extra_files=extra_files
        )


def _runner(fmt: str, data: bytes):
    """batch -> (probabilities, open-set scores or None) of the exported file."""
    if fmt == "onnx":
        session = onnx_session(data)
        return lambda batch: onnx_scored_probabilities(session, batch)
    scripted = load_torchscript(data)

    def run(batch):
        outputs = scripted(batch)
        return outputs[1], outputs[2] if len(outputs) > 2 else None

    return run


@dataclass
class CheckImages:
    tensors: torch.Tensor  # (N, 3, S, S), preprocessed
    names: list[str]
    source: str


def _pick_evenly(items: list, count: int) -> list:
    if len(items) <= count:
        return items
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def _real_images(root: Path, limit: int) -> list[Path]:
    """Up to `limit` image files under root, spread evenly over its sub-folders (so every data set counts)."""
    if root.is_file():
        return [root]
    groups: dict[str, list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root).parts
        for name in sorted(filenames):
            if is_image_file(name):
                groups.setdefault(rel[0] if rel else "", []).append(Path(dirpath) / name)
    per_group = max(1, limit // max(1, len(groups)))
    return [p for files in groups.values() for p in _pick_evenly(files, per_group)][:limit]


def _synthetic_images(count: int, seed: int = 0) -> list[Image.Image]:
    """Smooth random colour fields with a few hard edges: image-like inputs when no photographs are given."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = rng.uniform(0, 255, size=(6, 6, 3)).astype(np.uint8)
        img = Image.fromarray(coarse).resize((160, 120), Image.BICUBIC)
        pixels = np.asarray(img).copy()
        y, x = rng.integers(0, 80), rng.integers(0, 120)
        pixels[y : y + 40, x : x + 40] = rng.integers(0, 255, size=3)
        images.append(Image.fromarray(pixels))
    return images


def _synthetic_check(transform, limit: int) -> CheckImages:
    images = _synthetic_images(limit)
    return CheckImages(
        torch.stack([transform(i) for i in images]),
        [f"synthetic-{i}" for i in range(limit)],
        f"{limit} synthetic images",
    )


def _decode_all(paths: list[Path], transform) -> tuple[list[torch.Tensor], list[str]]:
    tensors, names = [], []
    for path in paths:
        try:
            tensors.append(transform(decode_image(path)))
            names.append(str(path))
        except DecodeError as e:
            print(f"parity check: skipped {e}", file=sys.stderr)
    return tensors, names


def run_split_csv(model_dir: Path) -> Path | None:
    """The split.csv train wrote for this model: in the model folder, else in the run folder above it."""
    for path in (model_dir / SPLIT_CSV, model_dir.parent / SPLIT_CSV):
        if path.is_file():
            return path
    return None


def _val_paths(split_csv: Path) -> list[Path]:
    """The val rows of a split.csv (paths relative to it, as train writes them); [] if it cannot be read."""
    try:
        return [Path(image) for image, split in split_rows(split_csv) if split == "val"]
    except UserError:
        return []


def _run_val_check(loaded: LoadedModel, transform, limit: int) -> CheckImages:
    """The run's own validation images when its split.csv is there and they read; else synthetic images,
    with a note on stderr saying why."""
    split_csv = run_split_csv(loaded.path)
    if split_csv is None:
        why = f"no split.csv in {loaded.path} or its run folder"
    else:
        tensors, names = _decode_all(_pick_evenly(_val_paths(split_csv), limit), transform)
        if tensors:
            return CheckImages(
                torch.stack(tensors), names, f"{len(names)} val images of the run ({split_csv})"
            )
        why = f"{split_csv}: no readable val images"
    print(
        f"note: parity check on synthetic images: {why}; --check-data DATA checks on your photographs",
        file=sys.stderr,
    )
    return _synthetic_check(transform, limit)


def load_check_images(
    loaded: LoadedModel, check_data: str | os.PathLike | None, limit: int = 16
) -> CheckImages:
    """Real photographs from check_data (when given), else the run's validation images (its split.csv, in
    the model folder or the run folder above it), else synthetic images."""
    transform = build_eval_transform(loaded.preprocess)
    if not check_data:
        return _run_val_check(loaded, transform, limit)
    root = Path(check_data)
    if not root.exists():
        raise UserError(f"--check-data {root}: no such file or folder")
    tensors, names = _decode_all(_real_images(root, limit), transform)
    if not tensors:
        raise UserError(f"--check-data {root}: no readable images found")
    return CheckImages(torch.stack(tensors), names, f"{len(names)} images from {root}")


@dataclass
class ScoreParity:
    """The open-set score's agreement: the largest difference (batched and at batch size 1) and its limit."""

    max_abs_diff: float
    limit: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.limit

    def summary(self) -> str:
        return f"max |dscore| {self.max_abs_diff:.2e} (limit {self.limit:.1e})"


def score_limit(reference: torch.Tensor, quantiles: list[float]) -> float:
    """The open-set score's tolerance. A probability spans [0, 1] and is held to PROB_TOLERANCE of that; a
    score's scale differs by score kind (a probability for msp, a cosine for knn, a logsumexp of logits for
    energy, minus a squared distance in the tens to thousands for mahalanobis, whose expanded form also loses
    float32 digits to cancellation), so it is held to the same share of its own range: the eager scores of
    the check images together with the known validation images' (the record's quantiles), at least 1. Values,
    not decisions at the threshold: a decision flips for an image that lies on the threshold whatever the
    error."""
    values = torch.cat([reference.double().flatten(), torch.tensor(quantiles, dtype=torch.float64)])
    return PROB_TOLERANCE * max(1.0, float(values.max() - values.min()))


@dataclass
class ParityResult:
    images: int
    source: str
    max_abs_diff: float
    top1_agree: int
    batch1_max_abs_diff: float
    score: ScoreParity | None = None  # a model with an open-set score

    @property
    def passed(self) -> bool:
        return (
            self.top1_agree == self.images
            and self.max_abs_diff <= PROB_TOLERANCE
            and self.batch1_max_abs_diff <= PROB_TOLERANCE
            and (self.score is None or self.score.passed)
        )

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        score = f"open-set {self.score.summary()}, " if self.score is not None else ""
        return (
            f"parity vs eager fp32 on {self.source}: max |dprob| {self.max_abs_diff:.2e} "
            f"(batch 1: {self.batch1_max_abs_diff:.2e}, limit {PROB_TOLERANCE:.0e}), {score}"
            f"top-1 agrees on {self.top1_agree}/{self.images} -> {verdict}"
        )


def _score_parity(loaded: LoadedModel, reference, batched, single) -> ScoreParity | None:
    """The exported scores (batched, batch 1) against the eager scorer's; a file without them fails."""
    if reference is None:
        return None
    if batched is None or single is None:
        return ScoreParity(float("inf"), 0.0)
    diff = max(float((reference - batched).abs().max()), float((reference[:1] - single).abs().max()))
    return ScoreParity(diff, score_limit(reference, loaded.open_set["quantiles"]))


def check_parity(loaded: LoadedModel, run, images: CheckImages) -> ParityResult:
    """Compare `run(batch) -> (probabilities, open-set scores or None)` with the eager fp32 model's
    probabilities (calibrated softmax; a multi-label model's sigmoid) and its scorer's scores, batched and at
    batch size 1."""
    with torch.inference_mode(), progress_bar(3, "export check", unit="pass") as bar:
        outputs = export_head(loaded)(images.tensors)
        reference = outputs[1].float()  # softmax(logits / T), or a multi-label model's sigmoid(logits)
        reference_scores = outputs[2].float() if len(outputs) > 2 else None
        bar.update(1)
        exported, scores = run(images.tensors)
        bar.update(1)
        single, single_scores = run(images.tensors[:1])
        bar.update(1)
    exported, single = exported.float(), single.float()
    agree = int((reference.argmax(1) == exported.argmax(1)).sum())
    return ParityResult(
        len(images.names),
        images.source,
        float((reference - exported).abs().max()),
        agree,
        float((reference[:1] - single).abs().max()),
        _score_parity(loaded, reference_scores, scores, single_scores),
    )


@dataclass
class ExportResult:
    path: Path
    format: str
    bytes: int
    seconds: float
    parity: ParityResult


def export_model(
    model: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike | None = None,
    check_data: str | os.PathLike | None = None,
) -> ExportResult:
    """Export MODEL to ONNX or TorchScript, check it against eager, then write it atomically.

    The check runs on check_data's images when given, else on the run's validation images (its split.csv, in
    MODEL or the run folder above it), else on synthetic images (with a note on stderr saying why).

    The default output is inside the model directory (model.onnx / model.torchscript.pt), where the
    onnxruntime backend of predict and serve finds it; a file written into the model directory has its sha256
    recorded in model.json, and predict and serve refuse it once it differs. A failed check raises
    ExportCheckFailed and writes nothing.
    """
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    loaded = load_model_dir(model, "cpu")
    path = Path(out) if out else loaded.path / FORMATS[fmt]
    if path.is_dir():
        raise UserError(f"--out {path}: is a folder; give a file name")
    images = load_check_images(loaded, check_data)
    start = time.perf_counter()
    data = onnx_bytes(loaded) if fmt == "onnx" else torchscript_bytes(loaded)
    seconds = time.perf_counter() - start
    parity = check_parity(loaded, _runner(fmt, data), images)
    if not parity.passed:
        raise ExportCheckFailed(f"{fmt} export of {loaded.path} not written: {parity.summary()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    if path.parent.resolve() == loaded.path.resolve():  # in the model directory: predict and serve may run it
        record_export(loaded.path, path.name)
    return ExportResult(path, fmt, len(data), seconds, parity)


def read_export_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of an exported file (ONNX metadata_props, or TorchScript's model.json) as strings."""
    path = Path(path)
    if path.suffix == ".onnx":
        return read_onnx_metadata(path)
    extra = {TORCHSCRIPT_META: ""}
    load_torchscript(path, extra)
    meta = json.loads(extra[TORCHSCRIPT_META])
    frames = {"input": json.dumps(meta["input"])} if "input" in meta else {}  # export --input uint8
    return {**export_metadata(meta), **frames}
