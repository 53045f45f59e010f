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

from .data.transforms import INTERPOLATIONS
from .errors import UserError
from .models import MODELS, create_model
from .models.resnet import STEMS

FORMAT = "resnetcls.model/1"
WEIGHTS = "model.safetensors"
META = "model.json"
ARCH_ARGS = {"stem": str, "stride_on_1x1": bool, "zero_init_residual": bool, "width": int}
RESIZE_MODES = ("shorter_side", "square")


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


def _check(cond: bool, where: Path, message: str) -> None:
    if not cond:
        raise UserError(f"{where}: {message}")


def _check_arch(meta: dict, where: Path) -> None:
    _check(meta["arch"] in MODELS, where, f"unknown arch {meta['arch']!r}; this resnetcls knows "
                                          f"{', '.join(MODELS)}")
    args = meta["arch_args"]
    _check(isinstance(args, dict), where, "arch_args must be an object")
    unknown = sorted(set(args) - set(ARCH_ARGS))
    _check(not unknown, where, f"unknown arch_args {', '.join(unknown)}; expected some of {', '.join(ARCH_ARGS)}")
    for key, value in args.items():
        ok = value in STEMS if key == "stem" else isinstance(value, ARCH_ARGS[key]) and \
            not (ARCH_ARGS[key] is int and (isinstance(value, bool) or value < 1))
        _check(ok, where, f"arch_args.{key}={value!r} is not valid")


def _check_classes(classes, where: Path) -> None:
    _check(isinstance(classes, list) and classes, where, "classes must be a non-empty list of names")
    _check(all(isinstance(c, str) and c for c in classes), where, "every class name must be a non-empty string")
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    _check(not dupes, where, f"class names listed twice: {', '.join(dupes)}")


def _check_preprocess(pre, where: Path) -> None:
    _check(isinstance(pre, dict), where, "preprocess must be an object")
    missing = [k for k in ("image_size", "resize", "interpolation", "mean", "std") if k not in pre]
    _check(not missing, where, f"preprocess lacks {', '.join(missing)}")
    for key in ("image_size", "resize"):
        value = pre[key]
        _check(isinstance(value, int) and not isinstance(value, bool) and value > 0, where,
               f"preprocess.{key}={value!r} must be a positive integer")
    _check(pre.get("resize_mode", "shorter_side") in RESIZE_MODES, where,
           f"preprocess.resize_mode={pre.get('resize_mode')!r}; expected one of {', '.join(RESIZE_MODES)}")
    _check(pre["interpolation"] in INTERPOLATIONS, where,
           f"preprocess.interpolation={pre['interpolation']!r}; expected one of {', '.join(INTERPOLATIONS)}")
    for key in ("mean", "std"):
        v = pre[key]
        ok = isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)
        _check(ok, where, f"preprocess.{key}={v!r} must be three numbers (R, G, B)")
    _check(all(x > 0 for x in pre["std"]), where, "preprocess.std must be positive")


def check_meta(meta, where: Path) -> dict:
    """Check every field of a parsed model.json; raise UserError naming the field and what is wrong."""
    got = meta.get("format") if isinstance(meta, dict) else None
    if isinstance(got, str) and got.startswith("resnetcls.model/") and got != FORMAT:
        raise UserError(f"{where}: format {got!r} is not {FORMAT!r} (written by another resnetcls version)")
    _check(got == FORMAT, where, f"format {got!r} is not {FORMAT!r}")
    for key in ("arch", "arch_args", "classes", "preprocess", "sha256"):
        _check(key in meta, where, f"missing key {key!r}")
    _check_arch(meta, where)
    _check_classes(meta["classes"], where)
    _check_preprocess(meta["preprocess"], where)
    _check(isinstance(meta.get("metrics", {}), dict), where, "metrics must be an object")
    digest = meta["sha256"].get(WEIGHTS) if isinstance(meta["sha256"], dict) else None
    _check(isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest),
           where, f"sha256.{WEIGHTS} must be a 64-digit hex digest")
    return meta


def read_meta(model_dir: Path) -> dict:
    """Parse and check model.json and the weights' hash, without building the model."""
    try:
        meta = json.loads((model_dir / META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{model_dir / META}: unreadable model metadata: {e}") from None
    check_meta(meta, model_dir / META)
    weights = model_dir / WEIGHTS
    if not weights.is_file():
        raise UserError(f"{weights}: weights file missing")
    if sha256_file(weights) != meta["sha256"][WEIGHTS]:
        raise UserError(f"{weights}: sha256 does not match model.json (file changed or truncated)")
    return meta


def load_model_dir(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load and verify a model directory: format, hash, architecture, class count, exact tensor names.

    The weights are read with safetensors only (a flat table of tensors): no pickle, so a planted file
    cannot run code; anything that is not valid safetensors is refused.
    """
    model_dir = resolve_model_dir(path)
    meta = read_meta(model_dir)
    weights = model_dir / WEIGHTS
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{weights}: not a valid safetensors file: {e}") from None
    classes = meta["classes"]
    head = state.get("fc.weight")
    if head is None or head.ndim != 2 or head.shape[0] != len(classes):
        rows = None if head is None else head.shape[0]
        raise UserError(f"{model_dir / META}: {len(classes)} classes listed but the weights' head has {rows}")
    model = create_model(meta["arch"], len(classes), **meta["arch_args"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:3])
        raise UserError(f"{weights}: weights do not fit {meta['arch']} with {meta['arch_args']}: {detail}") from None
    model.eval().to(device)
    return LoadedModel(model, meta, model_dir)
