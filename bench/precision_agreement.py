"""bf16 and int8 vs fp32 inference on real images: top-1 agreement, the largest |dprob|, accuracy and speed.

What `--precision auto` and `--backend auto` cost in numbers where they pick bf16: the same model and the same
preprocessed images through the Predictor in fp32 and in bf16 (torch, channels_last), and, where the model
directory has them, its model.onnx on OpenVINO at auto precision (bf16 where native: what auto runs
there) and its model.int8.onnx on both runtimes, compared image by image with torch fp32. Speed is the model
alone on the preprocessed batches (median of 3 passes, the rows taking turns), so decoding is not in it.

    python bench/precision_agreement.py RUN_OR_MODEL_DIR DATA [--batch-size 64]
    # e.g. a model trained on COIL-100 and its unseen-viewpoint split:
    python bench/precision_agreement.py runs/coil-r18 ../shared/data/coil100-a/pose-split.csv
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from resnetcls.data.loader import build_loader  # noqa: E402
from resnetcls.data.sources import load_eval_samples  # noqa: E402
from resnetcls.inference.predictor import Predictor  # noqa: E402
from resnetcls.inference.sessions import INT8_FILE, ONNX_FILE  # noqa: E402
from resnetcls.records.envinfo import machine_line  # noqa: E402


def batches_of(
    predictor: Predictor, data: str, batch_size: int
) -> tuple[list[torch.Tensor], torch.Tensor, str]:
    """The preprocessed images of DATA (its val/test split, as eval picks it) in batches, with their
    labels."""
    samples, split = load_eval_samples(data, predictor.classes)
    images, labels, bad = [], [], []
    for batch in build_loader(samples, predictor.transform, batch_size, shuffle=False, num_workers=0):
        bad += batch["bad"]
        if batch["images"] is not None:
            images.append(batch["images"])
            labels.append(torch.as_tensor(batch["labels"]))
    if bad:
        print(f"{len(bad)} images could not be decoded and are left out", file=sys.stderr)
    return images, torch.cat(labels), split


def timed_pass(predictor: Predictor, batches: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    probs = torch.cat([predictor.probabilities(b) for b in batches])
    return probs, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="a model directory or a run directory (its best model)")
    parser.add_argument("data", help="DATA as for `resnetcls eval`")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    print(f"machine: {machine_line()}", flush=True)
    predictors = {
        p: Predictor(args.model, device="cpu", precision=p, backend="torch") for p in ("fp32", "bf16")
    }
    model_dir = predictors["fp32"].loaded.path
    if (model_dir / ONNX_FILE).is_file():
        predictors["openvino (auto precision)"] = Predictor(args.model, backend="openvino")
    if (model_dir / INT8_FILE).is_file():
        for backend in ("onnxruntime-int8", "openvino-int8"):
            predictors[backend] = Predictor(args.model, backend=backend)
    batches, labels, split = batches_of(predictors["fp32"], args.data, args.batch_size)
    n = int(labels.numel())
    print(
        f"{predictors['fp32'].loaded.meta['arch']} at "
        f"{predictors['fp32'].loaded.preprocess['image_size']} px, "
        f"{n} images ({split}) of {args.data}",
        flush=True,
    )
    probs, seconds = {}, {p: [] for p in predictors}
    for p in predictors:  # warm-up (oneDNN creates and caches its kernels on the first call of each shape)
        probs[p], _ = timed_pass(predictors[p], batches)
    # Each timed pass runs the whole set `repeat` times, so that a pass lasts about 2 s even for tiny models.
    _, once = timed_pass(predictors["fp32"], batches)
    repeat = max(1, round(2.0 / max(once, 1e-3)))
    for _ in range(3):
        for p, predictor in predictors.items():
            seconds[p].append(sum(timed_pass(predictor, batches)[1] for _ in range(repeat)) / repeat)
    top = {p: v.argmax(1) for p, v in probs.items()}
    base = statistics.median(seconds["fp32"])
    print(
        f"\n{'row':<26} {'precision':>9} {'top-1':>8} {'agrees':>11} {'max|dp|':>8} {'mean|dp|':>8} "
        f"{'img/s':>9} "
        f"{'x':>6}"
    )
    for p, predictor in predictors.items():
        s = statistics.median(seconds[p])
        accuracy = float((top[p] == labels).float().mean())
        agree, delta = int((top["fp32"] == top[p]).sum()), (probs["fp32"] - probs[p]).abs()
        print(
            f"{p:<26} {predictor.precision:>9} {accuracy:>8.2%} {f'{agree}/{n}':>11} "
            f"{float(delta.max()):>8.1e} "
            f"{float(delta.mean()):>8.1e} {n / s:>9.1f} {base / s:>5.2f}x"
        )
    print(
        "\nagrees: top-1 the same as torch fp32; |dp|: over all classes, against torch fp32; "
        "img/s: the model alone"
        " on preprocessed batches, median of 3 passes"
    )


if __name__ == "__main__":
    main()
