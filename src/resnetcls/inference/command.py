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
from ..utils.multilabel import DEFAULT_SEPARATOR
from .explain import Explainer, OverlayWriter, writable_dir
from .inputs import expand_inputs
from .multilabel import labels_cells, labels_text
from .predictor import EachImage, Prediction, Predictor
from .standalone import is_onnx_file

OPEN_SET_COLUMNS = ["label", "unknown", "open_set_score"]  # csv columns with open-set rejection on
ANSWER_HEADER = "answer (open-set score)"  # the table's answer column with open-set rejection on
LABEL_COLUMNS = ["labels", "label_probs"]  # csv columns of a multi-label model
LABELS_HEADER = "labels (probability)"  # the table's answer column of a multi-label model


def overlay_each(predictor: Predictor, out_dir: Path) -> tuple[OverlayWriter, EachImage]:
    """`predict --explain`: the OverlayWriter into out_dir and the Predictor.predict `each` callback that
    writes each image's Grad-CAM overlay of its top-1 class as it is predicted, sets its `gradcam` path, or
    prints one warning line naming the image and why its overlay could not be written."""
    explainer = Explainer(
        predictor.model,
        predictor.loaded.preprocess,
        predictor.device,
        temperature=predictor.temperature,
        sigmoid=predictor.label_rule is not None,
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


def format_results(
    results: list[Prediction], fmt: str, explained: bool = False, separator: str = DEFAULT_SEPARATOR
) -> str:
    """table (for people: the path column padded to the longest path, each class column to its widest
    entry, so every row lines up), json (a list of objects) or csv (path,rank,class,prob,error); with overlays
    (explained, --explain), each format also names the image's Grad-CAM overlay (csv: a gradcam column, empty
    where none was written). With open-set rejection on (any result has an open-set score), each format
    also gives the answer: the top class or "unknown" (table: an answer column with the score; json: label,
    unknown and open_set_score keys; csv: label, unknown and open_set_score columns). For a multi-label
    model (results with labels), each format gives the labels at or above their thresholds (table: a labels
    column, "(none)" when no class reached its threshold; json: labels, a list of {label, probability};
    csv: labels and label_probs columns, each joined with the model's separator, empty for none)."""
    explained = explained or any(r.gradcam for r in results)
    open_set = any(r.open_set_score is not None for r in results)
    multi_label = any(r.labels is not None for r in results)
    if fmt == "json":
        return json.dumps([r.to_dict() for r in results], indent=2) + "\n"
    if fmt == "csv":
        return _csv(results, explained, open_set, separator if multi_label else None)
    if multi_label:
        return _table(results, [labels_text(r) for r in results], LABELS_HEADER)
    return _table(results, [_answer(r) for r in results] if open_set else None)


def _csv(results: list[Prediction], explained: bool, open_set: bool, separator: str | None = None) -> str:
    """One row per path and rank; separator: a multi-label model's (its labels and label_probs columns)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    extra = OPEN_SET_COLUMNS * open_set + LABEL_COLUMNS * (separator is not None)
    writer.writerow(["path", "rank", "class", "prob", "error"] + extra + ["gradcam"] * explained)
    for r in results:
        answer = _answer_cells(r) if open_set else []
        answer += labels_cells(r, separator) if separator is not None else []
        rows = [
            [r.path, k + 1, c, f"{p:.6f}", ""] + answer + [r.gradcam] * explained
            for k, (c, p) in enumerate(r.top)
        ]
        blank = [""] * (len(extra) + explained)
        writer.writerows(rows or [[r.path, "", "", "", r.error] + blank])
    return buf.getvalue()


def _answer_cells(r: Prediction) -> list[str]:
    """label, unknown, open_set_score as CSV cells (empty where the image has no score)."""
    if r.open_set_score is None:
        return [r.label, "", ""]
    return [r.label, str(r.unknown).lower(), f"{r.open_set_score:.6f}"]


def _answer(r: Prediction) -> str:
    """The table's answer cell: the top class or "unknown", with the open-set score."""
    return "" if r.open_set_score is None else f"{r.label} ({r.open_set_score:.3f})"


def _table(results: list[Prediction], answers: list[str] | None = None, header: str = ANSWER_HEADER) -> str:
    """answers: each image's answer cell, a column after the path (None: no such column)."""
    width = max([len("path")] + [len(r.path) for r in results])
    cells = [[f"{c} ({p:.3f})" for c, p in r.top] for r in results]
    widths = [
        max(len(row[k]) for row in cells if len(row) > k) for k in range(max(map(len, cells), default=0))
    ]
    answer_width = max([len(header)] + [len(a) for a in answers or []])
    answer_head = f"{header:<{answer_width}}  " if answers is not None else ""
    lines = [f"{'path':<{width}}  {answer_head}top classes (probability)"]
    for n, (r, row) in enumerate(zip(results, cells)):
        body = f"ERROR: {r.error}" if r.error else "  ".join(f"{c:<{w}}" for c, w in zip(row, widths))
        if answers is not None and not r.error:
            body = f"{answers[n]:<{answer_width}}  {body}"
        body = body.rstrip() + (f"  gradcam: {r.gradcam}" if r.gradcam else "")
        lines.append(f"{r.path:<{width}}  {body}")
    return "\n".join(lines) + "\n"


def unknown_accept_note(predictor: Predictor) -> str:
    """The one line said on stderr when --unknown-accept moves the threshold ("" when it was not given or
    rejection is off)."""
    info = predictor.open_set_info()
    if predictor.unknown_accept is None or not info["on"]:
        return ""
    record = predictor.loaded.open_set
    share, own_share = predictor.unknown_accept * 100, record["accept"] * 100
    return (
        f"--unknown-accept {predictor.unknown_accept:g}: unknown below {info['score']} score "
        f"{info['threshold']:.4g}, which accepts {share:g}% of the known validation images (the model's own "
        f"threshold: {record['threshold']:.4g}, accepting {own_share:g}%)"
    )


@dataclass(frozen=True)
class PredictOptions:
    """What `predict` computes and prints, apart from how the model runs (backend, precision): the top-k
    classes, the output format, the batch size, flip TTA, the folder of Grad-CAM overlays (--explain), and
    open-set rejection (--open-set auto|on|off, --unknown-accept SHARE: utils.openset.open_set_threshold),
    and a multi-label model's one threshold for every class (--threshold; None: each class's own)."""

    topk: int = 5
    fmt: str = "table"
    batch_size: int = 32
    tta: bool = False
    explain_dir: str | None = None
    open_set: str = "auto"
    unknown_accept: float | None = None
    label_threshold: float | None = None


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
    predictor = Predictor(
        model,
        backend=backend,
        precision=precision,
        open_set=options.open_set,
        unknown_accept=options.unknown_accept,
        label_threshold=options.label_threshold,
    )
    note = unknown_accept_note(predictor)
    if note:
        print(note, file=sys.stderr)
    items = expand_inputs(inputs)
    good = [p for p, reason in items if not reason]
    writer, each = overlay_each(predictor, out_dir) if out_dir is not None else (None, None)
    predicted = iter(
        predictor.predict(
            good, options.topk, options.batch_size, options.tta, progress=len(good) > 1, each=each
        )
    )
    results = [Prediction(p, error=reason) if reason else next(predicted) for p, reason in items]
    separator = predictor.label_rule.separator if predictor.label_rule is not None else DEFAULT_SEPARATOR
    sys.stdout.write(format_results(results, options.fmt, writer is not None, separator))
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
