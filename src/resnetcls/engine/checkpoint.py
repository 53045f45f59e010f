"""Resumable training state: atomic checkpoints, keep-last-K plus best, every RNG, nothing unpickled as code.

A checkpoint is two files in RUN_DIR/checkpoints/:
  step-00001234.pt    torch.save of tensors and plain Python values only (loads with weights_only=True)
  step-00001234.json  what it is (epoch, step, metric, config, versions) and the .pt's sha256
The .pt is written to a temporary file, flushed, fsynced and renamed (atomic.write_atomic); the .json is
written the same way after it. A kill at any instant therefore leaves either no .json (the checkpoint is
ignored) or a complete pair, and the previous checkpoints are untouched. On load the hash is checked, so a
truncated or corrupted file is skipped with a warning and the next older one is used.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import CkptConfig
from ..records.envinfo import provenance
from ..records.modelfile import sha256_file
from ..utils.atomic import write_atomic, write_text_atomic
from ..utils.redact import mask_tree
from . import distributed
from .loop import EpochStats, Optimization

CKPT_FORMAT = "resnetcls.checkpoint/1"


def environment_info() -> dict:
    """Library versions, machine (CPU model, native bf16), the source's git commit and the command line with
    its passwords masked: envinfo.provenance()."""
    return provenance()


def capture_rng() -> dict:
    """Every RNG the training touches: Python, NumPy, torch CPU and each CUDA device, as
    tensors/primitives."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _tensor_bytes(value) -> int:
    """Bytes of the tensors in a nested state (what torch.save will write, give or take its headers)."""
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def save_checkpoint(ckpt_dir: Path, state: dict, info: dict) -> Path:
    """Write state (tensors/primitives) as step-<global_step>.pt plus its .json description, atomically."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stem = f"step-{state['global_step']:08d}"
    pt = ckpt_dir / f"{stem}.pt"
    write_atomic(pt, lambda f: torch.save(state, f), size_hint=_tensor_bytes(state))
    meta = {"format": CKPT_FORMAT, "file": pt.name, "sha256": sha256_file(pt), **info}
    write_text_atomic(ckpt_dir / f"{stem}.json", json.dumps(meta, indent=1) + "\n")
    return pt


def list_checkpoints(ckpt_dir: Path) -> list[tuple[Path, dict]]:
    """(json path, its content) of every checkpoint description that parses, oldest first."""
    found = []
    for path in sorted(ckpt_dir.glob("step-*.json")) if ckpt_dir.is_dir() else []:
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # reported by load_latest when it would matter
        if isinstance(meta, dict) and meta.get("format") == CKPT_FORMAT:
            found.append((path, meta))
    return sorted(found, key=lambda item: item[1].get("global_step", -1))


def load_latest(ckpt_dir: Path, warn: Callable[[str], None]) -> tuple[dict, dict] | None:
    """The newest complete checkpoint as (state, description); partial or corrupt ones are skipped with a
    warning naming the file. None when there is none."""
    described = {p.with_suffix(".pt") for p, _ in list_checkpoints(ckpt_dir)}
    for pt in sorted(ckpt_dir.glob("step-*.pt")) if ckpt_dir.is_dir() else []:
        if pt not in described:
            warn(f"warning: skipping {pt}: incomplete checkpoint (no valid {pt.with_suffix('.json').name})")
    for json_path, meta in reversed(list_checkpoints(ckpt_dir)):
        pt = json_path.with_suffix(".pt")
        if not pt.is_file():
            warn(f"warning: skipping {json_path}: its {pt.name} is missing")
            continue
        if sha256_file(pt) != meta.get("sha256"):
            warn(f"warning: skipping {pt}: corrupt checkpoint (sha256 does not match {json_path.name})")
            continue
        try:
            state = torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as e:  # any unreadable file is skipped; the next older one may be fine
            warn(f"warning: skipping {pt}: unreadable checkpoint: {str(e).splitlines()[0]}")
            continue
        return state, meta
    return None


def prune_checkpoints(ckpt_dir: Path, keep_last: int, metric: str) -> None:
    """Delete all but the newest keep_last checkpoints and the best one by metric (val_loss: lowest)."""
    items = list_checkpoints(ckpt_dir)
    keep = {p for p, _ in items[-max(1, keep_last) :]}
    scored = [(m["metrics"][metric], p) for p, m in items if metric in (m.get("metrics") or {})]
    if scored:
        keep.add(min(scored)[1] if metric.endswith("loss") else max(scored)[1])
    for path, _ in items:
        if path not in keep:
            path.unlink(missing_ok=True)  # the .json first: a half-pruned checkpoint is never "complete"
            path.with_suffix(".pt").unlink(missing_ok=True)
    for tmp in ckpt_dir.glob("*.tmp"):
        tmp.unlink(missing_ok=True)  # left by a kill in the middle of a write


@dataclass
class RunState:
    """Where a run is: the epoch being trained, its running stats, the global step and the best so far."""

    epoch: int = 1
    global_step: int = 0
    stats: EpochStats = field(default_factory=EpochStats)
    best_value: float | None = None
    best_epoch: int = 0
    bad_files: dict = field(default_factory=dict)
    train_images: int = 0  # over finished epochs, for the summary's images/s
    train_seconds: float = 0.0


def capture_state(run: RunState, model: nn.Module, opt: Optimization | None, batch_size: int) -> dict:
    """Everything needed to continue bit for bit, as tensors and plain values (weights_only-loadable).
    opt=None (lifelong, between tasks: the next task starts a fresh optimizer) leaves the optimizer out."""
    stats = dataclasses.asdict(run.stats)
    stats["bad"] = [list(b) for b in stats["bad"]]
    return {
        "format": CKPT_FORMAT,
        "model": model.state_dict(),
        "optimizer": opt.optimizer.state_dict() if opt is not None else None,
        "scheduler": opt.scheduler.state_dict() if opt is not None else None,
        "scaler": opt.scaler.state_dict() if opt is not None else None,
        "ema": opt.ema.state_dict() if opt is not None and opt.ema is not None else None,
        "epoch": run.epoch,
        "step_in_epoch": run.stats.steps,
        "global_step": run.global_step,
        "sampler": {"epoch": run.epoch, "position": run.stats.batches * batch_size},
        "epoch_stats": stats,
        "best": {"value": run.best_value, "epoch": run.best_epoch},
        "bad_files": dict(run.bad_files),
        "totals": [run.train_images, run.train_seconds],
        "rng": capture_rng(),
    }


def restore_state(state: dict, model: nn.Module, opt: Optimization | None) -> RunState:
    """Load a checkpoint's state into model/opt (when the checkpoint has one) and the RNGs; return where the
    run stands."""
    model.load_state_dict(state["model"])
    if opt is not None and state["optimizer"] is not None:
        opt.optimizer.load_state_dict(state["optimizer"])
        opt.scheduler.load_state_dict(state["scheduler"])
        opt.scaler.load_state_dict(state["scaler"])
        if opt.ema is not None and state["ema"] is not None:
            opt.ema.load_state_dict(state["ema"])
    stats = EpochStats(**{**state["epoch_stats"], "bad": [tuple(b) for b in state["epoch_stats"]["bad"]]})
    restore_rng(state["rng"])
    return RunState(
        state["epoch"],
        state["global_step"],
        stats,
        state["best"]["value"],
        state["best"]["epoch"],
        dict(state["bad_files"]),
        *state["totals"],
    )


class Checkpointer:
    """Saves a run's state (atomically, keep-last-K plus best) with its config and environment.

    config: the resolved config as a dict (recorded in both files); a non-zero torchrun rank saves nothing
    (distributed.is_main). extra(): more of the caller's state and description, as (state, info) dicts, saved
    under state["extra"] and merged into the .json (lifelong: the task, the strategy's state, R so far).
    """

    def __init__(
        self,
        run_dir: Path,
        ckpt: CkptConfig,
        batch_size: int,
        config: dict,
        env: dict,
        model: nn.Module,
        opt: Optimization | None,
        extra: Callable[[], tuple[dict, dict]] | None = None,
    ) -> None:
        self.dir, self.ckpt, self.batch_size = run_dir / "checkpoints", ckpt, batch_size
        self.config, self.env = mask_tree(config), mask_tree(env)  # as recorded: passwords masked (redact.py)
        self.model, self.opt, self.extra, self.enabled = model, opt, extra, distributed.is_main()

    def save(self, run: RunState, metrics: dict | None = None) -> Path | None:
        """One checkpoint named by run.global_step; None on a rank that does not write."""
        if not self.enabled:
            return None
        info = {
            "epoch": run.epoch,
            "step_in_epoch": run.stats.steps,
            "global_step": run.global_step,
            "metrics": metrics,
            "config": self.config,
            "env": self.env,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        state = capture_state(run, self.model, self.opt, self.batch_size)
        state.update(config=self.config, env=self.env)
        if self.extra is not None:
            state["extra"], more = self.extra()
            info.update(more)
        path = save_checkpoint(self.dir, state, info)
        prune_checkpoints(self.dir, self.ckpt.keep_last, self.ckpt.metric)
        return path
