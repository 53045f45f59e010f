"""The files a finished lifelong run leaves: R.csv, R.json, R.png (accuracy after each task on every task),
metrics.json (continual-learning metrics, sizes, times) and final/ (the model directory)."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..config import ModelConfig
from ..engine.prepare import arch_args
from ..errors import UserError
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


def write_results(
    strategy: str,
    m: ModelConfig,
    run_dir: Path,
    names: list[str],
    classes: list[str],
    model: nn.Module,
    device: str,
    preprocess: dict,
    buffer_stats: dict,
    R: list,
    b: list,
    seconds: list,
    inference_s_per_image: float,
    joint: str | None,
    bad_images: int,
) -> dict:
    """Write the run's result files (R.csv/json/png, metrics.json, final/); return metrics.json's content."""
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
            **buffer_stats,
            "model_params": n_params,
            "model_mb": round(state_bytes / 1e6, 3),
            "inference_ms_per_image": round(1000 * inference_s_per_image, 4),
            "device": device,
            "classes": len(classes),
            "bad_images": bad_images,
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
        run_dir / "final", model, m.name, arch_args(m), classes, preprocess, {"ACC": metrics["ACC"]}
    )
    return metrics
