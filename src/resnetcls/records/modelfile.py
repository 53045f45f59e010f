"""The self-describing model directory (DESIGN.md section 5): model.safetensors + model.json.

Nothing here unpickles: weights are safetensors, metadata is JSON, and every field is checked on load.

Optional field "calibration" (written by engine/calibrate.py at the end of train, calibration.py's record):
{"calibrated": bool, "temperature": T, "fitted_on": "val" | null, "images": n, "nll_before", "nll_after",
"ece_before", "ece_after", "temperature_range": [lo, hi], "note"?}. Predict, serve, eval and the exports give
softmax(logits / T); a model directory without the field (older ones) loads as T = 1.

Optional field "open_set" (engine/openset.py at the end of train; inference/addclass.py adding a class):
{"score": msp|energy|mahalanobis|knn, "threshold": t, "accept": share of known val images accepted,
"quantiles": the known val scores' 101 quantiles, "file": "open_set.safetensors", "k", "fitted_on", "images",
...}; the scorer's tensors (and the per-class statistics of the pooled features) are in that file, hashed in
"sha256". A model directory without it loads with open-set rejection off.

Optional field "multi_label" (the end of a multi-label train): {"thresholds": one per class,
"separator": the label separator of its CSVs, "rule", "fitted_on", "images"}. Such a model answers every class
whose sigmoid probability (utils/multilabel.py) reaches its threshold; without the field a model is
single-label (softmax).

"sha256" holds the weights' hash, model.json's content hash and, once exported into the directory, the hash of
each exported file (model.onnx, model.int8.onnx, model.torchscript.pt: record_export); predict and serve run
an exported file only when its hash is the one recorded (check_export_hash).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from ..errors import UserError
from ..models import create_model
from ..utils.atomic import building_dir, recover_dir, sha256_file, write_atomic, write_text_atomic
from ..utils.openset import OpenSetScorer
from .metacheck import FORMAT, OPEN_SET_FILE, WEIGHTS, check_meta

META = "model.json"


@dataclass
class LoadedModel:
    model: nn.Module
    meta: dict
    path: Path
    scorer: OpenSetScorer | None = None  # the open-set score (model.json "open_set") on the CPU, else None

    @property
    def open_set(self) -> dict | None:
        """model.json's "open_set" record: score, threshold, accept, quantiles (None: rejection off)."""
        return self.meta.get("open_set")

    @property
    def multi_label(self) -> dict | None:
        """model.json's "multi_label" record: thresholds (one a class), separator (None: single-label)."""
        return self.meta.get("multi_label")

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def preprocess(self) -> dict:
        return self.meta["preprocess"]

    @property
    def temperature(self) -> float:
        """The calibration temperature probabilities are computed with (1 for a model without a record)."""
        return temperature_of(self.meta)


def temperature_of(meta: dict) -> float:
    """model.json's calibration.temperature; model directories written before calibration existed have no
    "calibration" field and load as T = 1 (the raw softmax they always gave)."""
    return float(meta.get("calibration", {}).get("temperature", 1.0))


def cached_sha256(path: str | os.PathLike) -> str:
    """sha256_file, computed once per file version: path, inode, size, mtime and ctime (an atomic rewrite
    gives a new inode; an in-place rewrite changes the size or the times, and ctime cannot be set back), so a
    Predictor that checks a file twice, or a second Predictor in the process, does not read a large file
    again."""
    stat = os.stat(path)
    return _sha256_of(os.fspath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_of(path: str, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    return sha256_file(Path(path))


def content_sha256(meta: dict) -> str:
    """The hash of everything model.json says except its own hashes (canonical JSON: sorted keys, ASCII)."""
    content = {k: v for k, v in meta.items() if k != "sha256"}
    return hashlib.sha256(
        json.dumps(content, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode()
    ).hexdigest()


def save_model_dir(
    path: str | os.PathLike,
    model: nn.Module,
    arch: str,
    arch_args: dict,
    classes: list[str],
    preprocess: dict,
    metrics: dict | None = None,
) -> Path:
    """Write weights and metadata into a new folder, then rename it into the place of path as a whole: a kill
    or a full disk at any instant leaves the previous model directory (if any) loadable."""
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "arch": arch,
        "arch_args": arch_args,
        "classes": list(classes),
        "preprocess": preprocess,
        "metrics": metrics or {},
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    check_meta({**meta, "sha256": {WEIGHTS: "0" * 64}}, path / META)  # never write what load would refuse
    with building_dir(path) as tmp:
        write_atomic(tmp / WEIGHTS, save(state), size_hint=sum(t.nbytes for t in state.values()))
        meta["sha256"] = {WEIGHTS: sha256_file(tmp / WEIGHTS), META: content_sha256(meta)}
        write_text_atomic(tmp / META, json.dumps(meta, indent=2) + "\n")
    return path


def write_calibration(path: str | os.PathLike, record: dict) -> Path:
    """Store record as model.json's "calibration" field (weights untouched), its content hash updated; the
    file is replaced atomically, so a kill leaves the old or the new model.json, both loadable."""
    return write_meta_record(path, "calibration", record)


def write_meta_record(
    path: str | os.PathLike, key: str, record: dict | None, hashed: tuple[str, ...] = ()
) -> Path:
    """Store record as model.json's field `key` ("calibration", "int8"; None: no field), as write_calibration
    describes, and the sha256 of the files named in `hashed` (exports in the directory) beside the hashes
    kept."""
    model_dir = Path(path)
    meta = read_meta(model_dir)
    exports = {k: v for k, v in meta["sha256"].items() if k not in (WEIGHTS, META)}
    meta = {k: v for k, v in meta.items() if k != "sha256"}
    if record is not None:
        meta[key] = record
    placeholders = {WEIGHTS: "0" * 64, **exports, **{name: "0" * 64 for name in hashed}}
    check_meta({**meta, "sha256": placeholders}, model_dir / META)
    exports.update({name: sha256_file(model_dir / name) for name in hashed})
    meta["sha256"] = {WEIGHTS: sha256_file(model_dir / WEIGHTS), META: content_sha256(meta), **exports}
    write_text_atomic(model_dir / META, json.dumps(meta, indent=2) + "\n")
    return model_dir


def write_open_set(path: str | os.PathLike, scorer: OpenSetScorer, record: dict) -> Path:
    """Store the open-set scorer's tensors as OPEN_SET_FILE and record (score, threshold, accept, quantiles,
    ...) as model.json's "open_set" field, with the file's sha256; both written atomically."""
    model_dir = Path(path)
    tensors = scorer.tensors()
    write_atomic(model_dir / OPEN_SET_FILE, save(tensors), size_hint=sum(t.nbytes for t in tensors.values()))
    record = {**record, "score": scorer.score, "k": scorer.k, "file": OPEN_SET_FILE}
    return write_meta_record(model_dir, "open_set", record, hashed=(OPEN_SET_FILE,))


def load_scorer(model_dir: Path, meta: dict) -> OpenSetScorer | None:
    """The open-set scorer of a model directory whose model.json has an "open_set" record (its file's hash
    checked first), else None."""
    record = meta.get("open_set")
    if record is None:
        return None
    path = model_dir / OPEN_SET_FILE
    try:
        digest = cached_sha256(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read the open-set score's file: {e.strerror or e}") from None
    if digest != meta["sha256"][OPEN_SET_FILE]:
        raise UserError(f"{path}: sha256 does not match model.json (file changed or truncated)")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a valid safetensors file: {e}") from None
    return OpenSetScorer(record["score"], tensors, temperature_of(meta), k=int(record.get("k", 5)))


def record_export(path: str | os.PathLike, name: str, key: str = "", record: dict | None = None) -> Path:
    """Record the sha256 of the exported file path/name in model.json's "sha256" table (and record as field
    key), after the file was checked and written; predict and serve run it only while it still has that
    hash."""
    return write_meta_record(path, key, record, hashed=(name,))


def check_export_hash(loaded: LoadedModel, name: str, command: str) -> bool:
    """True when model.json records the sha256 of the exported file `name` in the model directory and the file
    has it; False when it records none (exported by an older resnetcls, or copied in); UserError naming the
    file and `command` (what re-exports it) when the file differs from the record. Hashed once per file
    version."""
    expected = loaded.meta["sha256"].get(name)
    if expected is None:
        return False
    path = loaded.path / name
    try:
        actual = cached_sha256(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read it: {e.strerror or e}") from None
    if actual != expected:
        raise UserError(
            f"{path}: sha256 does not match model.json (changed or replaced since it was exported); "
            f"re-export it with `{command}`"
        )
    return True


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """MODEL may be a model directory or a run directory (then its best/, else final/)."""
    path = recover_dir(Path(path))
    if (path / META).is_file():
        return path
    for sub in ("best", "final"):
        if (recover_dir(path / sub) / META).is_file():  # (a kill mid-replacement left the old one aside)
            return path / sub
    if not path.exists():
        raise UserError(f"{path}: no such model directory")
    raise UserError(f"{path}: not a model directory (no {META}) nor a run directory with best/ or final/")


def read_meta(model_dir: Path) -> dict:
    """Parse and check model.json, its content hash and the weights' hash, without building the model."""
    try:
        meta = json.loads((model_dir / META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"{model_dir / META}: unreadable model metadata: {e}") from None
    check_meta(meta, model_dir / META)
    weights = model_dir / WEIGHTS
    if not weights.is_file():
        raise UserError(f"{weights}: weights file missing")
    if sha256_file(weights) != meta["sha256"][WEIGHTS]:
        raise UserError(f"{weights}: sha256 does not match model.json (file changed or truncated)")
    return meta


def _check_content_hash(meta: dict, where: Path) -> None:
    """Model directories written before the content hash existed have none and still load (same format)."""
    expected = meta["sha256"].get(META)
    if expected is not None and content_sha256(meta) != expected:
        raise UserError(
            f"{where}: its content does not match its sha256.{META} (classes, preprocess or "
            f"another field was edited); restore the file or retrain"
        )


def _check_shapes(weights: Path, meta: dict) -> None:
    """The tensors' names and shapes against what arch + arch_args + classes describe, from the safetensors
    header and a model on the meta device: nothing is allocated for a model that does not fit."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{weights}: not a valid safetensors file: {e}") from None
    classes, where = meta["classes"], weights.with_name(META)
    head = shapes.get("fc.weight")
    if head is None or len(head) != 2 or head[0] != len(classes):
        raise UserError(
            f"{where}: {len(classes)} classes listed but the weights' head has "
            f"{None if head is None else head[0]}"
        )
    with torch.device("meta"):
        expected = {
            k: tuple(v.shape)
            for k, v in create_model(meta["arch"], len(classes), **meta["arch_args"]).state_dict().items()
        }
    missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    wrong = [k for k in expected if k in shapes and shapes[k] != expected[k]]
    if missing or unexpected or wrong:
        detail = (
            f"missing {', '.join(missing[:3])}"
            if missing
            else f"unexpected {', '.join(unexpected[:3])}"
            if unexpected
            else f"{wrong[0]} is {list(shapes[wrong[0]])}, expected {list(expected[wrong[0]])}"
        )
        raise UserError(f"{weights}: weights do not fit {meta['arch']} with {meta['arch_args']}: {detail}")


def load_model_dir(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load and verify a model directory: fields, weights' hash, tensor names and shapes against the
    architecture, then model.json's content hash; only then are the weights read and the model built.

    The weights are read with safetensors only (a flat table of tensors): no pickle, so a planted file
    cannot run code; anything that is not valid safetensors is refused.
    """
    model_dir = resolve_model_dir(path)
    meta = read_meta(model_dir)
    weights = model_dir / WEIGHTS
    _check_shapes(weights, meta)
    _check_content_hash(meta, model_dir / META)
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{weights}: not a valid safetensors file: {e}") from None
    model = create_model(meta["arch"], len(meta["classes"]), **meta["arch_args"])
    model.load_state_dict(state, strict=True)  # names and shapes were checked above
    model.eval().to(device)
    return LoadedModel(model, meta, model_dir, load_scorer(model_dir, meta))
