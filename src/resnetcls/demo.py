"""`resnetcls demo` (what `make demo` runs): synthesise data, train, evaluate, predict, say where it is."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from .analysis.evaluate import evaluate_model
from .analysis.report import write_report, write_training_report
from .config import build_config
from .data.sources import read_csv
from .data.synth import synthesize
from .engine.train import train
from .inference.predictor import Predictor

# A ResNet-18 at half width on 64 px images: about 200 training images/s on a 2-core laptop CPU, so the
# whole demo fits in a few minutes while still learning every factor of the synthetic objects.
DEMO_OVERRIDES = [
    "model.name=resnet18",
    "model.width=32",
    "model.stem=imagenet",
    "data.image_size=64",
    "data.min_crop_scale=0.35",
    "train.batch_size=64",
    "optim.name=adamw",
    "optim.lr=0.003",
    "optim.weight_decay=0.05",
    "sched.warmup_epochs=1",
    "loss.label_smoothing=0.1",
]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_demo(out: str | Path = "demo-run", classes: int = 10, per_class: int = 150, epochs: int = 18) -> dict:
    """The main job end to end on built-in data; returns the evaluation metrics."""
    out = Path(out)
    started = time.perf_counter()
    _say(f"[1/4] synthesising {classes} objects x {per_class} images into {out / 'data'}")
    manifest = synthesize(out / "data", classes=classes, per_class=per_class, image_size=64, seed=0)
    run_dir = out / "run"
    shutil.rmtree(
        run_dir, ignore_errors=True
    )  # the demo starts over; train refuses a directory with checkpoints
    _say(f"[2/4] training (train/val split from {manifest})")
    cfg = build_config(overrides=DEMO_OVERRIDES + [f"data.train={manifest}", f"train.epochs={epochs}"])
    result = train(cfg, run_dir)
    # as `resnetcls train` does
    write_training_report(result.run_dir, result.val_samples, cfg.data.num_workers, result.train_samples)
    _say("[3/4] evaluating the best model on the held-out test split")
    metrics = evaluate_model(run_dir, str(manifest), run_dir / "eval")
    c = metrics["calibration"]
    print(
        f"test top1 {metrics['top1']:.2%}  top5 {metrics['top5']:.2%} on {metrics['images']} images; ECE "
        f"{c['ece_after']:.3f} calibrated (temperature {c['temperature']:.3g}), "
        f"{c['ece_before']:.3f} raw softmax"
    )
    report = write_report(run_dir)  # again, now showing the test split's numbers and figures
    _say("[4/4] predicting a few held-out images")
    samples, split = read_csv(manifest)
    test_paths = [p for p, s in zip(samples.paths, split) if s == "test"][:: max(1, per_class // 4)][:5]
    for result in Predictor(run_dir).predict(test_paths, topk=3):
        top = "  ".join(f"{c} {p:.2f}" for c, p in result.top)
        print(f"{Path(result.path).parent.name}/{Path(result.path).name}: {top}")
    _say(
        f"done in {time.perf_counter() - started:.0f}s. Run: {run_dir}  model: {run_dir / 'best'}  "
        f"report: {report}  metrics: {run_dir / 'metrics.jsonl'}  "
        f"TensorBoard: tensorboard --logdir {run_dir / 'tb'}"
    )
    return metrics
