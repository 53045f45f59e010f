"""`resnetcls predict`: the predictions of a Predictor (predictor.py) for PATH arguments, printed as a
table, JSON or CSV, with a Grad-CAM overlay of each image on request (--explain); the exit code says whether
every input and overlay succeeded.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from .explain import Explainer, OverlayWriter, writable_dir
from .inputs import expand_inputs
from .predictor import EachImage, Prediction, Predictor
from .standalone import is_onnx_file


def overlay_each(predictor: Predictor, out_dir: Path) -> tuple[OverlayWriter, EachImage]:
    """`predict --explain`: the OverlayWriter into out_dir and the Predictor.predict `each` callback that
    writes each image's Grad-CAM overlay of its top-1 class as it is predicted, sets its `gradcam` path, or
    prints one warning line naming the image and why its overlay could not be written."""
    explainer = Explainer(
        predictor.model, predictor.loaded.preprocess, predictor.device, temperature=predictor.temperature
    )
    writer = OverlayWriter(explainer, out_dir)
    index = {name: i for i, name in enumerate(predictor.classes)}

    def each(result: Prediction, image: torch.Tensor) -> None:
        result.gradcam, reason = writer.write(result.path, image, index[result.top[0][0]])
        if reason:
            print(
                f"warning: {result.path}: Grad-CAM overlay not written ({reason}); its prediction stands",
                file=sys.stderr,
            )

    return writer, each


def format_results(results: list[Prediction], fmt: str, explained: bool = False) -> str:
    """table (for people: the path column padded to the longest path, each class column to its widest
    entry, so every row lines up), json (a list of objects) or csv (path,rank,class,prob,error); with overlays
    (explained, --explain), each format also names the image's Grad-CAM overlay (csv: a gradcam column, empty
    where none was written)."""
    explained = explained or any(r.gradcam for r in results)
    if fmt == "json":
        return json.dumps([r.to_dict() for r in results], indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", "rank", "class", "prob", "error"] + ["gradcam"] * explained)
        for r in results:
            rows = [
                [r.path, k + 1, c, f"{p:.6f}", ""] + [r.gradcam] * explained for k, (c, p) in enumerate(r.top)
            ]
            writer.writerows(rows or [[r.path, "", "", "", r.error] + [""] * explained])
        return buf.getvalue()
    return _table(results)


def _table(results: list[Prediction]) -> str:
    width = max([len("path")] + [len(r.path) for r in results])
    cells = [[f"{c} ({p:.3f})" for c, p in r.top] for r in results]
    widths = [
        max(len(row[k]) for row in cells if len(row) > k) for k in range(max(map(len, cells), default=0))
    ]
    lines = [f"{'path':<{width}}  top classes (probability)"]
    for r, row in zip(results, cells):
        body = f"ERROR: {r.error}" if r.error else "  ".join(f"{c:<{w}}" for c, w in zip(row, widths))
        body = body.rstrip() + (f"  gradcam: {r.gradcam}" if r.gradcam else "")
        lines.append(f"{r.path:<{width}}  {body}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PredictOptions:
    """What `predict` computes and prints, apart from how the model runs (backend, precision): the top-k
    classes, the output format, the batch size, flip TTA, and the folder of Grad-CAM overlays (--explain)."""

    topk: int = 5
    fmt: str = "table"
    batch_size: int = 32
    tta: bool = False
    explain_dir: str | None = None


def run_predict(
    model: str,
    inputs: list[str],
    options: PredictOptions | None = None,
    backend: str = "auto",
    precision: str = "auto",
) -> int:
    """`resnetcls predict`: predictions to stdout in options.fmt; exit code 2 when any input gave an error row
    or any overlay could not be written (the predictions are printed all the same).

    options.explain_dir: also write a Grad-CAM overlay of each image's top-1 class there, each as it is
    predicted (explain.py; on the eager model in fp32 whatever the backend, since ONNX files have no
    gradients)."""
    options = options or PredictOptions()
    if options.topk < 1:
        raise UserError(f"--topk {options.topk}: expected a whole number of at least 1")
    if options.batch_size < 1:
        raise UserError(f"--batch-size {options.batch_size}: expected a whole number of at least 1")
    explain_dir = options.explain_dir
    if explain_dir is not None and is_onnx_file(model):
        raise UserError(
            f"--explain: {model} is a bare ONNX file; Grad-CAM needs the eager weights, so give the model "
            "directory (model.safetensors + model.json)"
        )
    out_dir = writable_dir(explain_dir, "--explain") if explain_dir is not None else None
    predictor = Predictor(model, backend=backend, precision=precision)
    items = expand_inputs(inputs)
    good = [p for p, reason in items if not reason]
    writer, each = overlay_each(predictor, out_dir) if out_dir is not None else (None, None)
    predicted = iter(
        predictor.predict(
            good, options.topk, options.batch_size, options.tta, progress=len(good) > 1, each=each
        )
    )
    results = [Prediction(p, error=reason) if reason else next(predicted) for p, reason in items]
    sys.stdout.write(format_results(results, options.fmt, explained=writer is not None))
    failed = sum(1 for r in results if r.error)
    if failed:
        print(
            f"{failed} of {len(results)} inputs could not be predicted (see the error rows)", file=sys.stderr
        )
    unwritten = writer.failed if writer is not None else 0
    if unwritten:
        print(
            f"{unwritten} of {len(results) - failed} Grad-CAM overlays could not be written "
            "(see the warnings); the predictions are complete",
            file=sys.stderr,
        )
    return 2 if failed or unwritten else 0
