"""`resnetcls embed MODEL PATH... --out emb.npy|emb.parquet`: the model's pooled penultimate features of
every image, L2-normalised, for searching a collection by image similarity (`resnetcls similar`,
similar.py; FiftyOne, a vector database, plain numpy).

Two file formats, both written as the images are embedded (decoded a batch at a time on a few threads, so
memory stays bounded whatever the number of images), then renamed into place:
- .npy: an (N, D) float32 array (a preallocated memory map of the counted inputs, trimmed to the readable
  ones at the end), with emb.csv beside it (row, path, label, confidence: one line per row of the array)
  and emb.json (the index record: format, model, model_sha256, dim, rows, precision);
- .parquet: one table with the columns row, path, label, confidence and embedding (list<float32>), one row
  group per batch, the index record in the schema's metadata (key "resnetcls"). Needs pyarrow, the
  optional extra resnetcls[embed].

label is the model's answer (its top class, or "unknown" below the model's open-set threshold) and confidence
its calibrated probability, as `predict` gives them. model_sha256 names the features: the sha256 of the
weights' and the preprocessing's hashes, so `similar` refuses to compare a query with an index that another
model (or the same weights at another image size) built. Images that cannot be read are named on stderr,
counted, and make the exit code 2, as in `predict`; the file of the others is written all the same.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.decode import DecodeError
from ..errors import UserError
from ..utils.atomic import DISK_FULL, UMASK, write_error, write_text_atomic
from ..utils.calibration import calibrated_probabilities
from ..utils.hardware import usable_cores
from ..utils.openset import UNKNOWN, normalise
from ..utils.progress import progress_bar
from .inputs import Inputs, expand_inputs, to_items
from .predictor import Predictor
from .standalone import is_onnx_file

FORMAT = "resnetcls.embeddings/1"
SUFFIXES = (".npy", ".parquet")
METADATA_KEY = b"resnetcls"  # the parquet schema's metadata key holding the index record
COLUMNS = ["row", "path", "label", "confidence"]  # emb.csv; the parquet table adds "embedding"
EXTRA = "pip install 'resnetcls[embed]'"
COPY_BYTES = 64 << 20  # trimming a .npy copies this much at a time


@dataclass
class Embedded:
    """One batch of embedded images: their names, unit feature vectors (n, D) float32, the model's answers
    and their calibrated probabilities; and the inputs of the batch that could not be read (name, reason)."""

    names: list[str]
    vectors: np.ndarray
    labels: list[str]
    confidence: np.ndarray
    bad: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class EmbedSummary:
    """What embed wrote: the file(s), the rows (readable images), the feature size, and the inputs that could
    not be read (name, reason)."""

    out: Path
    files: list[Path]
    rows: int
    dim: int
    skipped: list[tuple[str, str]]


def require_pyarrow(path: str | os.PathLike):
    """pyarrow and pyarrow.parquet, or the one-line UserError naming the extra that installs them."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise UserError(
            f"{path}: .parquet needs pyarrow, which is not installed: {EXTRA} (or write .npy)"
        ) from None
    return pyarrow, pyarrow.parquet


def model_sha256(predictor: Predictor) -> str:
    """The features' identity: sha256 of the weights' sha256, the architecture and the preprocessing (a
    recalibrated model keeps its index; new weights or another image size need a new one)."""
    meta = predictor.loaded.meta
    content = {
        "weights": meta["sha256"]["model.safetensors"],
        "arch": meta["arch"],
        "arch_args": meta["arch_args"],
        "preprocess": meta["preprocess"],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def feature_predictor(model: str | os.PathLike, precision: str = "auto") -> Predictor:
    """The eager Predictor that gives features (a model or run directory; a bare ONNX file has none)."""
    if is_onnx_file(model):
        raise UserError(
            f"{model}: a bare ONNX file has no pooled features to embed; give its model directory "
            "(model.safetensors + model.json)"
        )
    return Predictor(model, precision=precision, backend="torch")


def index_record(predictor: Predictor, rows: int | None = None) -> dict:
    """The index record (emb.json, or the parquet schema's metadata); rows: for .npy only."""
    record = {
        "format": FORMAT,
        "model": str(predictor.loaded.path),
        "model_sha256": model_sha256(predictor),
        "arch": predictor.loaded.meta["arch"],
        "dim": feature_dim(predictor),
        "precision": predictor.precision,
        "normalised": "l2",
    }
    return record if rows is None else {**record, "rows": rows}


def feature_dim(predictor: Predictor) -> int:
    return int(predictor.model.fc.in_features)


@torch.inference_mode()
def embed_batch(predictor: Predictor, batch: torch.Tensor) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(n, 3, S, S) preprocessed images -> unit pooled features (n, D) float32, the model's answers (top
    class, or "unknown" below the open-set threshold) and their calibrated probabilities."""
    features, logits = predictor.features_and_logits(batch)
    confidence, top = calibrated_probabilities(logits, predictor.temperature).max(dim=1)
    labels = [predictor.classes[i] for i in top.tolist()]
    scores = predictor.open_set_scores(features, logits)
    if scores is not None:
        labels = [UNKNOWN if s < predictor.threshold else lab for lab, s in zip(labels, scores.tolist())]
    return normalise(features).numpy(), labels, confidence.numpy().astype(np.float32)


def stream(predictor: Predictor, items: list, names: list[str], batch_size: int) -> Iterator[Embedded]:
    """Embed items (paths, PIL images, arrays: inputs.to_items's) a batch at a time, decoding the next batch
    on a few threads while the model runs on this one; at most two batches of images are held."""
    batches = [range(s, min(s + batch_size, len(items))) for s in range(0, len(items), batch_size)]
    with (
        ThreadPoolExecutor(max(1, min(4, usable_cores()))) as threads,
        progress_bar(len(items), "embed", enabled=None if len(batches) > 1 else False) as bar,
    ):
        pending = [
            threads.map(predictor.load, [items[i] for i in r], [names[i] for i in r]) for r in batches[:1]
        ]
        for n, rows in enumerate(batches):
            if n + 1 < len(batches):
                nxt = batches[n + 1]
                pending.append(threads.map(predictor.load, [items[i] for i in nxt], [names[i] for i in nxt]))
            loaded, pending[n] = list(pending[n]), None
            good = [(names[i], item) for i, item in zip(rows, loaded) if not isinstance(item, str)]
            bad = [(names[i], item) for i, item in zip(rows, loaded) if isinstance(item, str)]
            if good:
                vectors, labels, confidence = embed_batch(predictor, torch.stack([t for _, t in good]))
            else:
                vectors, labels, confidence = np.empty((0, feature_dim(predictor)), np.float32), [], []
            yield Embedded([name for name, _ in good], vectors, labels, np.asarray(confidence), bad)
            bar.update(len(rows))


def embed_images(predictor: Predictor, images, batch_size: int = 32) -> np.ndarray:
    """(N, D) float32 unit pooled features of images (anything Predictor.predict takes: paths, PIL images,
    arrays, tensors, a list or a batch of them), in order; an image that cannot be read raises its
    DecodeError (a UserError)."""
    return embed_inputs(predictor, to_items(images), batch_size)


def embed_inputs(predictor: Predictor, inputs: Inputs, batch_size: int = 32) -> np.ndarray:
    """embed_images of inputs already turned into items (inputs.to_items)."""
    parts = []
    for batch in stream(predictor, inputs.items, inputs.names, batch_size):
        if batch.bad:
            raise DecodeError(*batch.bad[0])
        parts.append(batch.vectors)
    return np.concatenate(parts) if parts else np.empty((0, feature_dim(predictor)), np.float32)


class NpyWriter:
    """emb.npy (a memory map of `count` rows, trimmed to the rows written), emb.csv and emb.json, each built
    in a temporary file beside its target and renamed into place by finish()."""

    def __init__(self, out: Path, count: int, record: dict) -> None:
        self.out, self.record, self.rows = out, record, 0
        self.files = [out, out.with_suffix(".csv"), out.with_suffix(".json")]
        self.tmp = [temp_beside(out), temp_beside(self.files[1])]
        try:
            self.array = new_memmap(self.tmp[0], (count, record["dim"]))
        except OSError as e:
            for path in self.tmp:
                path.unlink(missing_ok=True)
            raise write_error(out, e, count * record["dim"] * 4) from None
        self.csv_file = open(self.tmp[1], "w", newline="", encoding="utf-8")  # closed by finish or abort
        self.csv = csv.writer(self.csv_file)
        self.csv.writerow(COLUMNS)

    def write(self, batch: Embedded) -> None:
        n = len(batch.names)
        self.array[self.rows : self.rows + n] = batch.vectors
        for k, (name, label, conf) in enumerate(zip(batch.names, batch.labels, batch.confidence.tolist())):
            self.csv.writerow([self.rows + k, name, label, f"{conf:.6f}"])
        self.rows += n

    def finish(self) -> list[Path]:
        self.csv_file.flush()
        os.fsync(self.csv_file.fileno())
        self.csv_file.close()
        self.array.flush()
        if self.rows < len(self.array):  # some inputs were unreadable: keep only the rows written
            self.tmp[0] = trimmed_copy(self.array, self.rows, self.out)
        del self.array
        os.replace(self.tmp[0], self.out)
        os.replace(self.tmp[1], self.files[1])
        write_text_atomic(self.files[2], json.dumps({**self.record, "rows": self.rows}, indent=2) + "\n")
        return self.files

    def abort(self) -> None:
        if not self.csv_file.closed:
            self.csv_file.close()
        self.array = None
        for path in self.tmp:
            Path(path).unlink(missing_ok=True)


def temp_beside(path: Path) -> Path:
    """A new temporary file's name in path's folder (same file system: it can be renamed onto path)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~UMASK)  # mkstemp makes 0600; the written file should look like any other
    return Path(name)


def new_memmap(path: Path, shape: tuple[int, int]) -> np.memmap:
    """A float32 .npy memory map of shape at path, its disk space reserved up front where the file system
    can, so a full disk is an error here rather than a crash when a page of it is written."""
    array = np.lib.format.open_memmap(path, "w+", np.float32, shape)
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            except OSError as e:
                if e.errno in DISK_FULL:  # other refusals (a file system without it): write as it goes
                    raise
    return array


def trimmed_copy(array: np.ndarray, rows: int, out: Path) -> Path:
    """A new temporary .npy of array's first `rows` rows, copied in bounded pieces; the old one removed."""
    path = temp_beside(out)
    try:
        trimmed = new_memmap(path, (rows, array.shape[1]))
        step = max(1, COPY_BYTES // max(1, array.shape[1] * 4))
        for start in range(0, rows, step):
            end = min(start + step, rows)
            trimmed[start:end] = array[start:end]
        trimmed.flush()
        del trimmed
    except OSError:
        path.unlink(missing_ok=True)
        raise
    Path(array.filename).unlink(missing_ok=True)
    return path


class ParquetWriter:
    """One parquet table (row, path, label, confidence, embedding list<float32>), a row group per batch,
    written to a temporary file and renamed into place by finish()."""

    def __init__(self, out: Path, record: dict) -> None:
        self.pa, parquet = require_pyarrow(out)
        self.out, self.rows, self.files = out, 0, [out]
        self.tmp = [temp_beside(out)]
        schema = self.pa.schema(
            [
                ("row", self.pa.int64()),
                ("path", self.pa.string()),
                ("label", self.pa.string()),
                ("confidence", self.pa.float32()),
                ("embedding", self.pa.list_(self.pa.float32())),
            ],
            metadata={METADATA_KEY: json.dumps(record).encode()},
        )
        self.writer = parquet.ParquetWriter(self.tmp[0], schema)

    def write(self, batch: Embedded) -> None:
        n, dim = batch.vectors.shape
        if not n:
            return
        offsets = self.pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
        columns = {
            "row": self.pa.array(np.arange(self.rows, self.rows + n, dtype=np.int64)),
            "path": self.pa.array(batch.names, self.pa.string()),
            "label": self.pa.array(batch.labels, self.pa.string()),
            "confidence": self.pa.array(batch.confidence.astype(np.float32)),
            "embedding": self.pa.ListArray.from_arrays(offsets, self.pa.array(batch.vectors.reshape(-1))),
        }
        self.writer.write_table(self.pa.table(columns, schema=self.writer.schema))
        self.rows += n

    def finish(self) -> list[Path]:
        self.writer.close()
        with open(self.tmp[0], "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp[0], self.out)
        return self.files

    def abort(self) -> None:
        self.writer.close()
        Path(self.tmp[0]).unlink(missing_ok=True)


def check_out(out: str | os.PathLike) -> Path:
    """--out: a .npy or .parquet file in an existing folder (pyarrow installed for .parquet)."""
    path = Path(out)
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"--out {out}: expected a .npy or .parquet file name")
    if not path.parent.is_dir():
        raise UserError(f"--out {out}: folder {path.parent} does not exist")
    if path.suffix.lower() == ".parquet":
        require_pyarrow(out)
    return path


def write_embeddings(predictor: Predictor, paths: list[str], out: Path, batch_size: int) -> EmbedSummary:
    """Embed paths (all readable-looking files) into out, streaming; the unreadable ones are skipped."""
    if out.suffix.lower() == ".npy":
        writer = NpyWriter(out, len(paths), index_record(predictor))
    else:
        writer = ParquetWriter(out, index_record(predictor))
    skipped: list[tuple[str, str]] = []
    try:
        for batch in stream(predictor, paths, paths, batch_size):
            writer.write(batch)
            skipped += batch.bad
        files = writer.finish()
    except OSError as e:
        writer.abort()
        raise write_error(out, e, None) from None
    except BaseException:
        writer.abort()
        raise
    return EmbedSummary(out, files, writer.rows, feature_dim(predictor), skipped)


def embed(
    model: str | os.PathLike,
    inputs: list[str],
    out: str | os.PathLike,
    batch_size: int = 32,
    precision: str = "auto",
) -> EmbedSummary:
    """Embed the images of inputs (files, folders searched recursively, globs, CSV lists) into out (.npy
    with .csv and .json beside it, or .parquet); inputs that give no image are skipped with their reason."""
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: expected a whole number of at least 1")
    path = check_out(out)
    items = expand_inputs([os.fspath(p) for p in inputs])
    paths = [p for p, reason in items if not reason]
    missing = [(p, reason) for p, reason in items if reason]
    if not paths:
        where = "; ".join(f"{p}: {reason}" for p, reason in missing[:3])
        raise UserError(f"no image files to embed ({where})")
    summary = write_embeddings(feature_predictor(model, precision), paths, path, batch_size)
    summary.skipped = missing + summary.skipped
    return summary


def run_embed(model: str, inputs: list[str], out: str, batch_size: int = 32, precision: str = "auto") -> int:
    """`resnetcls embed`: write the embeddings, one summary line on stderr; exit 2 when an input was
    skipped."""
    summary = embed(model, inputs, out, batch_size, precision)
    for path, reason in summary.skipped:
        print(f"warning: {path}: {reason} (not embedded)", file=sys.stderr)
    total = summary.rows + len(summary.skipped)
    print(
        f"embedded {summary.rows} images ({summary.dim} features each) into "
        + ", ".join(str(p) for p in summary.files)
        + (f"; {len(summary.skipped)} of {total} inputs could not be read" if summary.skipped else ""),
        file=sys.stderr,
    )
    return 2 if summary.skipped else 0
