"""`resnetcls eval`: every metric of a model directory on a DATA argument, as files a person can look at.

OUT/metrics.json holds every number; OUT/per_class.csv, OUT/confusion_matrix.csv, and the figures
confusion_matrix.png, reliability.png and most_confident_wrong.png show them. The images stream through the
model (Accumulator: counts and a few numbers per image, never every image's probabilities); the heatmap draws
at most HEATMAP_MAX_CLASSES classes and metrics.json carries the matrix up to MATRIX_IN_JSON_MAX_CLASSES, the
CSV always. The last shows each image as the model saw it beside its Grad-CAM overlay for the (wrong)
predicted class: where the model found the evidence that misled it (explain.py). Every number comes from the
probabilities predict and serve give: calibrated with model.json's temperature (calibration.py);
metrics.json's headline holds the balanced accuracy and the worst class with its recall (classmetrics.py),
its "calibration" the temperature and ECE/NLL before (raw softmax) and after, its "open_set" the open-set
numbers (openeval.py).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from ..data.loader import build_loader
from ..data.sources import Samples, load_eval_samples
from ..errors import UserError
from ..inference.explain import Explainer
from ..inference.predictor import Predictor
from ..utils.atomic import csv_text, write_atomic, write_text_atomic
from ..utils.calibration import calibrated_probabilities, calibration_error
from ..utils.limits import MATRIX_IN_JSON_MAX_CLASSES
from ..utils.progress import progress_bar
from .classmetrics import most_confused, per_class_table, worst_class
from .multieval import eval_labels, evaluate_multilabel
from .openeval import OpenSetOptions, eval_predictor, open_set_summary, scoring_for
from .overlap import Routed, find_overlap, train_summary

FIGURES = {
    "confusion": "confusion_matrix.png",
    "reliability": "reliability.png",
    "wrong": "most_confident_wrong.png",
}
CONFUSION_CSV = "confusion_matrix.csv"
# The heatmap draws at most this many classes (the most confused ones when there are more, said in its title
# and in metrics.json's "confusion_figure"); confusion_matrix.csv always holds every class.
HEATMAP_MAX_CLASSES = 50
TOPK = 5


class Accumulator:
    """What eval keeps while the batches stream past: the C x C integer confusion matrix, running NLL sums
    and, per image, a few numbers (label, sample index, top-1 class, calibrated and raw top-1 probability,
    top-k hit), about 20 bytes an image: never the N x C logits or probabilities, so a large set evaluates in
    bounded memory.
    """

    def __init__(self, num_classes: int, temperature: float = 1.0) -> None:
        self.temperature, self.k = temperature, min(TOPK, num_classes)
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.nll_sum = self.raw_nll_sum = 0.0
        self.parts: list[tuple[torch.Tensor, ...]] = []

    def add(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> None:
        """One batch of raw logits (probabilities: softmax(logits / T), what predict and serve give)."""
        labels, rows = labels.long(), torch.arange(len(labels))
        log_probs = logits.double().log_softmax(dim=1)
        self.raw_nll_sum -= float(log_probs[rows, labels].sum())
        self.nll_sum -= float((logits.double() / self.temperature).log_softmax(dim=1)[rows, labels].sum())
        probs = calibrated_probabilities(logits, self.temperature)
        confidence, pred = probs.max(dim=1)
        hit = (probs.topk(self.k, dim=1).indices == labels[:, None]).any(dim=1)
        raw_confidence, raw_pred = calibrated_probabilities(logits).max(dim=1)
        np.add.at(self.confusion, (labels.numpy(), pred.numpy()), 1)
        self.parts.append(
            (labels.int(), index.int(), pred.int(), confidence, hit, raw_confidence, raw_pred == labels)
        )

    def columns(self) -> dict[str, torch.Tensor]:
        """The per-image numbers of every batch so far, each one tensor (the batches joined once)."""
        if len(self.parts) > 1:
            self.parts = [tuple(torch.cat(column) for column in zip(*self.parts))]
        names = ("labels", "index", "pred", "confidence", "topk_hit", "raw_confidence", "raw_correct")
        return dict(zip(names, self.parts[0]))

    def metrics(self, classes: list[str]) -> dict:
        """All numbers of an evaluation. Rows of the confusion matrix are true classes, columns predicted.

        Balanced accuracy (the mean per-class recall), the worst class (lowest recall) and the macro averages
        are taken over the classes present in the data, so a DATA holding a subset of the model's classes is
        judged on those (predictions into the others still count as errors). The matrix is in the dict (and
        metrics.json) up to MATRIX_IN_JSON_MAX_CLASSES classes; confusion_matrix.csv always holds it.
        """
        c = self.columns()
        n, confusion = len(c["labels"]), self.confusion
        per_class = per_class_table(confusion, classes)
        present = [name for name in classes if per_class[name]["support"]]
        correct = c["pred"] == c["labels"]
        ece, bins = calibration_error(c["confidence"], correct)
        return {
            "images": n,
            "top1": float(correct.float().mean()),
            "top5": float(c["topk_hit"].float().mean()),
            "top5_k": self.k,
            "balanced_accuracy": float(np.mean([per_class[p]["recall"] for p in present])),
            **worst_class(per_class),
            "macro_precision": float(np.mean([per_class[p]["precision"] for p in present])),
            "macro_recall": float(np.mean([per_class[p]["recall"] for p in present])),
            "macro_f1": float(np.mean([per_class[p]["f1"] for p in present])),
            "macro_over": f"{len(present)} classes present in the data",
            "nll": self.nll_sum / n + 0.0,
            "ece": ece,
            "ece_bins": bins,
            "per_class": per_class,
            "most_confused": most_confused(confusion, classes),
            "confusion_matrix": confusion.tolist() if len(classes) <= MATRIX_IN_JSON_MAX_CLASSES else None,
            "confusion_matrix_csv": CONFUSION_CSV,
            "classes": classes,
            "classes_in_data": present,
        }


def compute_metrics(probs: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """Accumulator.metrics of (N, C) probabilities in one batch (softmax(log p) = p)."""
    acc = Accumulator(len(classes))
    acc.add(probs.clamp_min(1e-12).log(), labels, torch.arange(len(labels)))
    return acc.metrics(classes)


def run_model(
    predictor: Predictor, samples: Samples, batch_size: int, num_workers: int, acc: Accumulator
) -> list:
    """Stream samples through the model in its preprocessing into acc; the bad images (path, reason)."""
    loader = build_loader(samples, predictor.transform, batch_size, shuffle=False, num_workers=num_workers)
    bad = []
    with progress_bar(len(samples.paths), "eval") as bar:
        for batch in loader:
            bad += batch["bad"]
            if batch["images"] is not None:
                acc.add(
                    predictor.logits(batch["images"]),
                    torch.as_tensor(batch["labels"]),
                    torch.as_tensor(batch["index"]),
                )
            bar.update(len(batch["bad"]) + (len(batch["labels"]) if batch["images"] is not None else 0))
    return bad


def calibration_summary(acc: Accumulator, predictor: Predictor, metrics: dict) -> dict:
    """The model's temperature and, on this data, ECE and NLL of the raw softmax (before) and of the
    calibrated probabilities every other number here is computed from (after), with the raw softmax's
    reliability bins."""
    c = acc.columns()
    ece_before, bins_before = calibration_error(c["raw_confidence"], c["raw_correct"])
    record = predictor.loaded.meta.get("calibration", {})
    return {
        "temperature": predictor.temperature,
        "calibrated": bool(record.get("calibrated", False)),
        "fitted_on": record.get("fitted_on"),
        "fitted_images": record.get("images"),
        "ece_before": ece_before,
        "ece_after": metrics["ece"],
        "nll_before": acc.raw_nll_sum / metrics["images"],
        "nll_after": metrics["nll"],
        "ece_bins_before": bins_before,
    }


def most_confident_wrong(acc: Accumulator, samples: Samples, classes: list[str], k: int) -> list[dict]:
    """The k wrong predictions with the highest predicted probability, most confident first."""
    c = acc.columns()
    wrong = torch.nonzero(c["pred"] != c["labels"]).flatten()
    order = wrong[c["confidence"][wrong].argsort(descending=True, stable=True)][:k].tolist()
    return [
        {
            "path": samples.paths[int(c["index"][i])],
            "true": classes[int(c["labels"][i])],
            "pred": classes[int(c["pred"][i])],
            "prob": float(c["confidence"][i]),
        }
        for i in order
    ]


def write_tables(metrics: dict, confusion: np.ndarray, out: Path) -> None:
    """per_class.csv and confusion_matrix.csv (first column: true class; header: predicted classes), the
    matrix written a row at a time."""
    classes = metrics["classes"]
    per_class = [["class", "precision", "recall", "f1", "support"]]
    for c in classes:
        row = metrics["per_class"][c]
        cells = ["" if row[k] is None else f"{row[k]:.6f}" for k in ("precision", "recall", "f1")]
        per_class.append([c, *cells, row["support"]])
    write_text_atomic(out / "per_class.csv", csv_text(per_class))

    def rows(f) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        writer = csv.writer(text)
        writer.writerow(["true \\ predicted"] + classes)
        for name, row in zip(classes, confusion):
            writer.writerow([name] + row.tolist())
        text.flush()
        text.detach()

    write_atomic(out / CONFUSION_CSV, rows, size_hint=confusion.size * 2)


def heatmap_classes(confusion: np.ndarray, classes: list[str], limit: int = HEATMAP_MAX_CLASSES) -> dict:
    """The classes the heatmap shows, in class order: those present in the data or predicted, or, when there
    are more than limit, the limit most confused ones (most images wrongly in or out of the class: row plus
    column sums off the diagonal; ties in class order). {"index", "classes", "of", "capped", "caption"}."""
    errors = confusion.sum(axis=1) + confusion.sum(axis=0) - 2 * np.diag(confusion)
    seen = np.flatnonzero(confusion.sum(axis=1) + confusion.sum(axis=0))
    caption, capped = f"all {len(seen)} classes present in the data or predicted", len(seen) > limit
    if capped:
        seen = np.sort(seen[np.lexsort((seen, -errors[seen]))][:limit])
        caption = (
            f"the {limit} most confused of {len(classes)} classes (most images wrongly in or out of the "
            f"class); every class in {CONFUSION_CSV}"
        )
    return {
        "index": seen.tolist(),
        "classes": [classes[i] for i in seen],
        "of": len(classes),
        "capped": capped,
        "caption": caption,
    }


def explain_wrong(predictor: Predictor, wrong: list[dict]) -> list[np.ndarray | None]:
    """Each wrong image's model input beside its Grad-CAM for the predicted class (None: unreadable now)."""
    explainer = Explainer(
        predictor.model, predictor.loaded.preprocess, predictor.device, temperature=predictor.temperature
    )
    index = {name: i for i, name in enumerate(predictor.classes)}
    views = []
    for item in wrong:
        image = predictor.load(item["path"])
        views.append(
            None if isinstance(image, str) else explainer.explain(image, index[item["pred"]]).side_by_side()
        )
    return views


def write_figures(metrics: dict, confusion: np.ndarray, out: Path, wrong_views: list | None = None) -> dict:
    """The three eval PNGs; the heatmap shows heatmap_classes() (at most HEATMAP_MAX_CLASSES, coloured by the
    share of all the true class's images), recorded in metrics["confusion_figure"]; wrong_views (from
    explain_wrong) go into the sheet of the most confidently wrong images."""
    # matplotlib: only here
    from ..records.figures import confusion_heatmap, contact_sheet, reliability_diagram

    shown = heatmap_classes(confusion, metrics["classes"])
    keep = shown.pop("index")
    metrics["confusion_figure"] = shown
    title = (
        f"Confusion matrix: the {len(keep)} most confused of {shown['of']} classes (colour: share of the "
        f"true class)"
        if shown["capped"]
        else ""
    )
    confusion_heatmap(
        confusion[np.ix_(keep, keep)],
        shown["classes"],
        out / FIGURES["confusion"],
        title,
        row_totals=confusion[keep].sum(axis=1),
    )
    reliability_diagram(
        metrics["ece_bins"], metrics["ece"], out / FIGURES["reliability"], metrics.get("calibration")
    )
    contact_sheet(metrics["most_confident_wrong"], out / FIGURES["wrong"], views=wrong_views)
    return dict(FIGURES)


def evaluate_samples(
    predictor: Predictor,
    samples: Samples,
    out: Path,
    about: dict,
    batch_size: int = 32,
    num_workers: int = -1,
    wrong_k: int = 18,
    apart: list[int] | None = None,
) -> dict:
    """Evaluate already-labelled samples (in the model's class order); write every output into out.

    apart: indices of samples (the model's training images) scored on their own, into metrics["train_images"];
    every other number, table and figure is of the rest (of these images when there is no rest). about's
    "open_set" (OpenSetOptions, not written): --unknown and co. (openeval.py).
    """
    about = dict(about)
    if not len(samples):
        raise UserError(f"{about.get('data', 'DATA')}: no images to evaluate")
    if predictor.loaded.multi_label is not None:  # multi-label model: multieval.py
        return evaluate_multilabel(predictor, samples, out, about, batch_size, num_workers)
    acc = Accumulator(len(predictor.classes), predictor.temperature)
    trained = Accumulator(len(predictor.classes), predictor.temperature) if apart else None
    sink = Routed(acc, trained, apart, len(samples)) if apart else acc
    scoring = scoring_for(predictor, sink, about.pop("open_set", None))
    bad = run_model(scoring or predictor, samples, batch_size, num_workers, scoring or sink)
    for path, reason in bad:
        print(f"warning: skipped bad image {path}: {reason}", file=sys.stderr)
    if not acc.parts and not (trained and trained.parts):
        raise UserError(f"{about.get('data', 'DATA')}: none of the {len(samples)} images could be decoded")
    train_block = train_summary(trained, predictor.classes) if trained and trained.parts else None
    acc = acc if acc.parts else trained  # every held-out image undecodable, or none: the training images
    metrics = acc.metrics(predictor.classes)
    metrics["calibration"] = calibration_summary(acc, predictor, metrics)
    metrics["most_confident_wrong"] = most_confident_wrong(acc, samples, predictor.classes, wrong_k)
    metrics.update(
        {
            "model": str(predictor.loaded.path),
            **about,
            "inference_precision": predictor.precision,
            "bad_images": [{"path": p, "reason": r} for p, r in bad],
        }
    )
    if train_block is not None:
        metrics["train_images"] = train_block
    out.mkdir(parents=True, exist_ok=True)
    write_tables(metrics, acc.confusion, out)
    views = explain_wrong(predictor, metrics["most_confident_wrong"])
    metrics["figures"] = write_figures(metrics, acc.confusion, out, views)
    if scoring is not None:
        metrics["open_set"] = open_set_summary(scoring, acc, out, (batch_size, num_workers))
        metrics["figures"]["open_set"] = metrics["open_set"]["figure"]
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    metrics["out"] = str(out)
    return metrics


def evaluate_model(
    model: str | os.PathLike,
    data: str,
    out_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    precision: str = "auto",
    backend: str = "auto",
    include_train: bool = False,
    open_set: OpenSetOptions | None = None,
) -> dict:
    """Evaluate MODEL on DATA; write OUT (default: eval/ next to the model, i.e. RUN_DIR/eval).

    DATA's classes may be a subset of the model's; classes the model does not know are an error naming them.
    precision and backend are the Predictor's, as predict's --precision and --backend (precision auto: bf16
    where the CPU/GPU has it natively; fp32 for bit-stable numbers; backend onnxruntime: the exported
    model.onnx). The Grad-CAM figure always runs the eager model.

    DATA's images the model was trained on (by its run's split.csv, overlap.py) are left out, said in one
    line on stderr; all of them: an error. include_train scores them too, their numbers in "train_images".
    open_set: --unknown, --open-set and --unknown-accept (openeval.OpenSetOptions).
    """
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: expected a whole number of at least 1")
    predictor, open_set = eval_predictor(model, precision, backend, open_set)
    samples, split = load_eval_samples(data, predictor.classes, "", eval_labels(predictor.loaded.multi_label))
    overlap = find_overlap(predictor.loaded.path, samples)
    if overlap.train and len(overlap.train) == len(samples) and not include_train:
        raise UserError(overlap.refusal(data))
    note = overlap.note(data, include_train)
    if note:
        print(note, file=sys.stderr)
    about = {"data": str(data), "split": split, "overlap": overlap.record(include_train)}
    out = Path(out_dir) if out_dir else predictor.loaded.path.parent / "eval"
    if not include_train:
        samples = samples.subset(overlap.held_out)
    apart = overlap.train if include_train else None
    return evaluate_samples(predictor, samples, out, {**about, "open_set": open_set}, batch_size, apart=apart)
