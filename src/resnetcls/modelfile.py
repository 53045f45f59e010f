"""The self-describing model directory (DESIGN.md section 5): model.safetensors + model.json.

Nothing here unpickles: weights are safetensors, metadata is JSON, and every field is checked on load.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import UserError
from .models import create_model

FORMAT = "resnetcls.model/1"
WEIGHTS = "model.safetensors"
META = "model.json"


@dataclass
class LoadedModel:
    model: nn.Module
    meta: dict
    path: Path

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def preprocess(self) -> dict:
        return self.meta["preprocess"]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_model_dir(path: str | os.PathLike, model: nn.Module, arch: str, arch_args: dict,
                   classes: list[str], preprocess: dict, metrics: dict | None = None) -> Path:
    """Write weights and metadata; the weights are renamed into place before model.json names their hash."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = path / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path / WEIGHTS)
    meta = {
        "format": FORMAT,
        "arch": arch,
        "arch_args": arch_args,
        "classes": list(classes),
        "preprocess": preprocess,
        "metrics": metrics or {},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "sha256": {WEIGHTS: sha256_file(path / WEIGHTS)},
    }
    _write_atomic(path / META, (json.dumps(meta, indent=2) + "\n").encode())
    return path


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """MODEL may be a model directory or a run directory (then its best/, else final/)."""
    path = Path(path)
    if (path / META).is_file():
        return path
    for sub in ("best", "final"):
        if (path / sub / META).is_file():
            return path / sub
    if not path.exists():
        raise UserError(f"{path}: no such model directory")
    raise UserError(f"{path}: not a model directory (no {META}) nor a run directory with best/ or final/")


def read_meta(model_dir: Path) -> dict:
    """Parse and check model.json and the weights' hash, without building the model."""
    try:
        meta = json.loads((model_dir / META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{model_dir / META}: unreadable model metadata: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise UserError(f"{model_dir / META}: format {got!r} is not {FORMAT!r}")
    for key in ("arch", "arch_args", "classes", "preprocess", "sha256"):
        if key not in meta:
            raise UserError(f"{model_dir / META}: missing key {key!r}")
    weights = model_dir / WEIGHTS
    if not weights.is_file():
        raise UserError(f"{weights}: weights file missing")
    expected = meta["sha256"].get(WEIGHTS)
    if sha256_file(weights) != expected:
        raise UserError(f"{weights}: sha256 does not match model.json (file changed or truncated)")
    return meta


def load_model_dir(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load and verify a model directory: format, hash, architecture, class count, exact tensor names."""
    model_dir = resolve_model_dir(path)
    meta = read_meta(model_dir)
    weights = model_dir / WEIGHTS
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{weights}: not a valid safetensors file: {e}") from None
    classes = meta["classes"]
    head = state.get("fc.weight")
    if head is None or head.shape[0] != len(classes):
        rows = None if head is None else head.shape[0]
        raise UserError(f"{model_dir / META}: {len(classes)} classes listed but the weights' head has {rows}")
    try:
        model = create_model(meta["arch"], len(classes), **meta["arch_args"])
    except TypeError as e:
        raise UserError(f"{model_dir / META}: bad arch_args: {e}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{weights}: weights do not fit {meta['arch']}: {str(e).splitlines()[0]}") from None
    model.eval().to(device)
    return LoadedModel(model, meta, model_dir)
