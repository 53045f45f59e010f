"""The files a finished lifelong run leaves: R.csv, R.json, R.png (accuracy after each task on every task),
metrics.json (continual-learning metrics, sizes, times) and final/ (the model directory)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..engine.prepare import arch_args
from ..errors import UserError
from ..records.envinfo import cpu_model
from ..records.figures import accuracy_matrix_heatmap
from ..records.modelfile import save_model_dir
from ..utils.atomic import csv_text, write_text_atomic
from .metrics import continual_metrics


def summarize(R: list[list[float]], b: list[float], strategy: str, joint: str | None) -> dict:
    """continual_metrics for a sequence (square R); mean accuracy for joint (one row); gap to a joint run."""
    if strategy == "joint":
        out = {"tasks": len(R[0]), "ACC": sum(R[-1]) / len(R[-1]), "per_task": R[-1]}
    else:
        out = continual_metrics(R, b)
    if joint:
        path = Path(joint) / "metrics.json"
        if not path.is_file():
            raise UserError(
                f"--joint {joint}: no metrics.json (run `resnetcls lifelong ... --strategy joint` "
                f"--out {joint} first)"
            )
        ref = json.loads(path.read_text(encoding="utf-8"))
        out["joint_ACC"], out["gap_to_joint"] = ref["ACC"], ref["ACC"] - out["ACC"]
        if "overall" in out and ref["ACC"] > 0:  # Kemker's Omega_all: over-all accuracy relative to offline
            out["overall_vs_joint"] = out["overall"] / ref["ACC"]
    return out


@dataclass
class LifelongResults:
    """What a finished lifelong run leaves to write: its strategy, model (config, module, classes,
    preprocessing), task names, accuracy matrix R and b, train seconds per task, the strategy's buffer stats,
    the inference time per image (in evaluation batches, and alone: batch 1), the device and the number of bad
    images skipped."""

    strategy: str
    model_cfg: ModelConfig
    names: list[str]
    classes: list[str]
    model: nn.Module
    device: str
    preprocess: dict
    buffer_stats: dict
    R: list
    b: list
    seconds: list
    inference_s_per_image: float
    bad_images: int
    inference_ms_batch1: float | None = None


def device_name(device: str) -> str:
    """The machine an inference time was measured on: the CPU's name, or the GPU's on CUDA."""
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return cpu_model()


def write_results(results: LifelongResults, run_dir: Path, joint: str | None) -> dict:
    """Write the run's result files (R.csv/json/png, metrics.json, final/); return metrics.json's content."""
    strategy, names, R, b = results.strategy, results.names, results.R, results.b
    model, model_cfg, seconds = results.model, results.model_cfg, results.seconds
    metrics = summarize(R, b, strategy, joint)
    n_params = sum(p.numel() for p in model.parameters())
    state_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    metrics.update(
        {
            "strategy": strategy,
            "task_names": names,
            "R": R,
            "b": b,
            "train_seconds_per_task": seconds,
            "train_seconds": round(sum(seconds), 3),
            **results.buffer_stats,
            "model_params": n_params,
            "model_mb": round(state_bytes / 1e6, 3),
            "inference_ms_per_image": round(1000 * results.inference_s_per_image, 4),
            "inference_ms_batch1": (
                round(results.inference_ms_batch1, 4) if results.inference_ms_batch1 is not None else None
            ),
            "device": results.device,
            "device_name": device_name(results.device),
            "classes": len(results.classes),
            "bad_images": results.bad_images,
        }
    )
    rows = [("before", b)] + [(names[i] if strategy != "joint" else "joint", r) for i, r in enumerate(R)]
    write_text_atomic(
        run_dir / "R.csv",
        csv_text([["after", *names]] + [[name, *[f"{a:.6f}" for a in row]] for name, row in rows]),
    )
    write_text_atomic(run_dir / "R.json", json.dumps({"tasks": names, "b": b, "R": R}, indent=1) + "\n")
    accuracy_matrix_heatmap(
        R, b, names, [n for n, _ in rows[1:]], run_dir / "R.png", f"{strategy}: accuracy after each task"
    )
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    save_model_dir(
        run_dir / "final",
        model,
        model_cfg.name,
        arch_args(model_cfg),
        results.classes,
        results.preprocess,
        {"ACC": metrics["ACC"]},
    )
    return metrics
