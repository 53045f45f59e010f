"""`resnetcls similar MODEL QUERY... --index emb.npy|emb.parquet --topk 10`: the indexed images nearest to
each query image by cosine similarity of the model's pooled features (the index that `resnetcls embed`
wrote, embed.py).

The index is read in chunks of about CHUNK_BYTES (a memory map of the .npy, the parquet file's batches) and a
running top-k is kept per query, so memory stays bounded whatever the index's size; the paths and labels of
the matches are then looked up in one more pass (emb.csv, or the parquet table's columns). An index that is
missing, unreadable, not written by `embed`, or built by another model (its model_sha256 differs from the
query model's: embed.model_sha256) is refused in one line (exit 2).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .embed import (
    COLUMNS,
    FORMAT,
    METADATA_KEY,
    embed_inputs,
    feature_predictor,
    model_sha256,
    require_pyarrow,
    stream,
)
from .inputs import expand_inputs, to_items
from .predictor import Predictor

CHUNK_BYTES = 64 << 20  # index rows read (and compared) at a time
EMBED_HINT = "write one with `resnetcls embed MODEL IMAGES --out FILE`"


@dataclass
class Match:
    """One indexed image near a query: its rank (1 = nearest), cosine similarity, path, the model's label
    and confidence when it was embedded, and its row in the index."""

    rank: int
    similarity: float
    path: str
    label: str
    confidence: float
    row: int

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "similarity": round(self.similarity, 6),
            "confidence": round(self.confidence, 6),
        }


def check_record(record, where: Path) -> dict:
    """The index record (emb.json, the parquet metadata) as a dict, or UserError naming where it is."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise UserError(
            f"{where}: not an index written by resnetcls embed (no {FORMAT} record); {EMBED_HINT}"
        )
    for key, kind in (("model_sha256", str), ("dim", int)):
        if not isinstance(record.get(key), kind):
            raise UserError(f"{where}: the index record's {key!r} is missing or not a {kind.__name__}")
    return record


class NpyIndex:
    """emb.npy (memory-mapped), with emb.json (the record) and emb.csv (row, path, label, confidence)."""

    def __init__(self, path: Path) -> None:
        self.path, self.csv, meta = path, path.with_suffix(".csv"), path.with_suffix(".json")
        for beside in (meta, self.csv):
            if not beside.is_file():
                raise UserError(f"{beside}: missing; a .npy index needs the .json and .csv that embed writes")
        try:
            self.record = check_record(json.loads(meta.read_text(encoding="utf-8")), meta)
            self.array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: cannot read the index ({e}); {EMBED_HINT}") from None
        self.rows, self.dim = check_shape(self.array, self.record, path)

    def chunks(self, step: int) -> Iterator[np.ndarray]:
        for start in range(0, self.rows, step):
            yield np.asarray(self.array[start : start + step], dtype=np.float32)

    def describe(self, wanted: set[int]) -> dict[int, tuple[str, str, float]]:
        """{row: (path, label, confidence)} of the wanted rows, read from emb.csv in one pass."""
        found, count = {}, 0
        try:
            with open(self.csv, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                if next(reader, None) != COLUMNS:
                    raise UserError(f"{self.csv}: expected the header {','.join(COLUMNS)}")
                for count, line in enumerate(reader, 1):
                    if count - 1 in wanted:
                        found[count - 1] = csv_row(line, self.csv, count + 1)
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{self.csv}: cannot read it ({e})") from None
        if count != self.rows:
            raise UserError(
                f"{self.csv}: {count} rows, but {self.path} has {self.rows}; embed the images again"
            )
        return found


def check_shape(array: np.ndarray, record: dict, path: Path) -> tuple[int, int]:
    """(rows, dim) of a float32 (rows, dim) array that matches its record, or UserError."""
    if array.ndim != 2 or array.dtype != np.float32 or array.shape[1] != record["dim"]:
        raise UserError(
            f"{path}: a {array.dtype} array of shape {array.shape}, expected float32 (rows, {record['dim']})"
        )
    if record.get("rows", array.shape[0]) != array.shape[0]:
        raise UserError(f"{path}: {array.shape[0]} rows, but its record says {record['rows']}")
    return array.shape[0], array.shape[1]


def csv_row(line: list[str], path: Path, number: int) -> tuple[str, str, float]:
    try:
        return line[1], line[2], float(line[3])
    except (IndexError, ValueError):
        raise UserError(f"{path}:{number}: expected {','.join(COLUMNS)}, got {','.join(line)!r}") from None


class ParquetIndex:
    """emb.parquet: the columns row, path, label, confidence, embedding; the record in its metadata."""

    def __init__(self, path: Path) -> None:
        self.pa, parquet = require_pyarrow(path)
        self.path = path
        try:
            self.file = parquet.ParquetFile(path)
            metadata = self.file.schema_arrow.metadata or {}
            record = json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else None
        except (OSError, ValueError, self.pa.ArrowException) as e:
            raise UserError(f"{path}: cannot read the index ({e}); {EMBED_HINT}") from None
        self.record = check_record(record, path)
        names = self.file.schema_arrow.names
        if any(name not in names for name in [*COLUMNS, "embedding"]):
            raise UserError(f"{path}: expected the columns {', '.join(COLUMNS)}, embedding; has {names}")
        self.rows, self.dim = self.file.metadata.num_rows, self.record["dim"]

    def batches(self, step: int, columns: list[str]):
        try:
            yield from self.file.iter_batches(batch_size=step, columns=columns)
        except (OSError, ValueError, self.pa.ArrowException) as e:
            raise UserError(f"{self.path}: cannot read the index ({e})") from None

    def chunks(self, step: int) -> Iterator[np.ndarray]:
        for batch in self.batches(step, ["embedding"]):
            values = batch.column(0).flatten().to_numpy(zero_copy_only=False)
            if len(values) != batch.num_rows * self.dim:
                raise UserError(f"{self.path}: an embedding is not {self.dim} numbers long")
            yield np.array(values, dtype=np.float32).reshape(batch.num_rows, self.dim)

    def describe(self, wanted: set[int]) -> dict[int, tuple[str, str, float]]:
        found, start = {}, 0
        for batch in self.batches(1 << 16, ["path", "label", "confidence"]):
            columns = [batch.column(k).to_pylist() for k in range(3)]
            for row in wanted.intersection(range(start, start + batch.num_rows)):
                found[row] = tuple(column[row - start] for column in columns)
            start += batch.num_rows
        return found


def open_index(index: str | os.PathLike) -> NpyIndex | ParquetIndex:
    """The index file (.npy or .parquet), checked; UserError for one missing, unreadable or not embed's."""
    path = Path(index)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".parquet"):
        raise UserError(f"--index {index}: expected a .npy or .parquet file written by resnetcls embed")
    if not path.is_file():
        raise UserError(f"{index}: index not found; {EMBED_HINT}")
    return NpyIndex(path) if suffix == ".npy" else ParquetIndex(path)


def check_model(index: NpyIndex | ParquetIndex, predictor: Predictor) -> None:
    """UserError when another model (other weights or preprocessing) built the index."""
    if index.record["model_sha256"] != model_sha256(predictor):
        raise UserError(
            f"{index.path}: built by another model ({index.record.get('model', '?')}); its features cannot "
            f"be compared with {predictor.loaded.path}'s: embed the images again with this model"
        )


def nearest(index: NpyIndex | ParquetIndex, queries: np.ndarray, topk: int) -> tuple[np.ndarray, np.ndarray]:
    """The topk rows of the index nearest each query (unit vectors (Q, D)) by cosine similarity, and their
    similarities, both (Q, k), best first (ties: the lower row first), from one pass over the index. Per
    chunk only the rows at or above each query's k-th best similarity there (np.partition, linear) join the
    running top-k, so the pass costs about one matrix product."""
    query = np.ascontiguousarray(queries, dtype=np.float32)
    best = [np.empty(0, np.float32) for _ in query]
    rows = [np.empty(0, np.int64) for _ in query]
    start = 0
    for chunk in index.chunks(max(1, CHUNK_BYTES // (4 * index.dim))):
        similarity = query @ chunk.T  # (Q, n)
        k = min(topk, len(chunk))
        kth = np.partition(similarity, len(chunk) - k, axis=1)[:, len(chunk) - k]
        for q in range(len(query)):
            columns = np.flatnonzero(similarity[q] >= kth[q])  # the k best and any tied with the k-th
            values = np.concatenate([best[q], similarity[q, columns]])
            where = np.concatenate([rows[q], columns + start])
            order = np.lexsort((where, -values))[:topk]  # by similarity, then the lower row
            best[q], rows[q] = values[order], where[order]
        start += len(chunk)
    if not len(query):
        return np.empty((0, 0), np.int64), np.empty((0, 0), np.float32)
    return np.stack(rows), np.stack(best)


def search(
    predictor: Predictor, index: NpyIndex | ParquetIndex, queries: np.ndarray, topk: int
) -> list[list[Match]]:
    """Each query's matches (nearest first), with the paths and labels the index holds."""
    if topk < 1:
        raise UserError(f"--topk {topk}: expected a whole number of at least 1")
    check_model(index, predictor)
    rows, best = nearest(index, queries, topk)
    described = index.describe({int(r) for r in rows.flat})
    results = []
    for query_rows, query_best in zip(rows.tolist(), best.tolist()):
        matches = []
        for k, (row, value) in enumerate(zip(query_rows, query_best)):
            path, label, confidence = described[row]
            matches.append(Match(k + 1, value, path, label, float(confidence), row))
        results.append(matches)
    return results


def similar(
    model: str | os.PathLike,
    query,
    index: str | os.PathLike,
    topk: int = 10,
    batch_size: int = 32,
    precision: str = "auto",
) -> list[Match] | list[list[Match]]:
    """The topk indexed images nearest the query: one image (a path, PIL image or array) -> its matches; a
    list or batch of images -> a list of matches per image. An unreadable image raises its DecodeError."""
    found = open_index(index)
    predictor = feature_predictor(model, precision)
    check_model(found, predictor)
    inputs = to_items(query)
    matches = search(predictor, found, embed_inputs(predictor, inputs, batch_size), topk)
    return matches[0] if inputs.single else matches


def format_matches(results: list[tuple[str, list[Match]]], as_json: bool) -> str:
    """similar's output: JSON (a list of {query, matches}) or, for people, a table per query."""
    if as_json:
        rows = [{"query": q, "matches": [m.to_dict() for m in ms]} for q, ms in results]
        return json.dumps(rows, indent=2) + "\n"
    blocks = []
    for query, matches in results:
        width = max([len("path")] + [len(m.path) for m in matches])
        lines = [f"query: {query}", f"rank  similarity  {'path':<{width}}  label"]
        lines += [f"{m.rank:<4}  {m.similarity:<10.4f}  {m.path:<{width}}  {m.label}" for m in matches]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def run_similar(
    model: str,
    queries: list[str],
    index: str,
    topk: int = 10,
    as_json: bool = False,
    batch_size: int = 32,
    precision: str = "auto",
) -> int:
    """`resnetcls similar`: the matches of every readable query on stdout (as_json: JSON, else a table per
    query); exit 2 when a query was skipped (named on stderr)."""
    if topk < 1:
        raise UserError(f"--topk {topk}: expected a whole number of at least 1")
    found = open_index(index)
    predictor = feature_predictor(model, precision)
    check_model(found, predictor)
    items = expand_inputs(queries)
    skipped = [(p, reason) for p, reason in items if reason]
    paths = [p for p, reason in items if not reason]
    names, vectors = [], []
    for batch in stream(predictor, paths, paths, batch_size):
        names += batch.names
        vectors.append(batch.vectors)
        skipped += batch.bad
    for path, reason in skipped:
        print(f"warning: {path}: {reason} (no matches looked up)", file=sys.stderr)
    if names:
        matches = search(predictor, found, np.concatenate(vectors), topk)
        sys.stdout.write(format_matches(list(zip(names, matches)), as_json))
    return 2 if skipped else 0
