"""`resnetcls eval` of a multi-label model (model.json's "multi_label" record; the definitions are
utils/multilabel.py's): every image's sigmoid probabilities against its label set, at the model's per-class
thresholds.

OUT/metrics.json holds mAP (the mean over classes with a positive image of each class's average precision),
the per-class AP, micro and macro F1 at the thresholds, the exact-match ratio (every class of an image right)
and one row a class (threshold, AP, precision, recall, F1, support); OUT/per_class.csv the same rows and
OUT/pr_curves.png the precision-recall curve of each class. evaluate.py hands a multi-label model here; the
report shows the same (multilabel_section) and `eval` prints multilabel_lines.
"""

from __future__ import annotations

import html
import json
import math
import sys
from pathlib import Path

import torch

from ..data.csvlabels import SINGLE_LABEL, CsvLabels
from ..data.loader import build_loader
from ..data.sources import Samples
from ..errors import UserError
from ..inference.predictor import Predictor
from ..utils.atomic import csv_text, write_text_atomic
from ..utils.multilabel import DEFAULT_SEPARATOR, decide, multilabel_metrics, pr_curve
from ..utils.progress import progress_bar
from .report_sections import cards_html, embedded_png, eval_section, html_value

FIGURE = "pr_curves.png"
PER_CLASS_CSV = "per_class.csv"
MAX_CURVES = 20  # the PR figure draws at most this many classes (those with the most positives)
COLUMNS = ("threshold", "ap", "precision", "recall", "f1", "support")


def eval_labels(record: dict | None) -> CsvLabels:
    """How eval reads DATA for a model: a multi-label model's CSV as label sets with its separator."""
    if record is None:
        return SINGLE_LABEL
    return CsvLabels(separator=record.get("separator", DEFAULT_SEPARATOR), multi_label="on")


def model_probabilities(
    predictor: Predictor, samples: Samples, batch_size: int, num_workers: int
) -> tuple[torch.Tensor, torch.Tensor, list[int], list]:
    """(N, C) sigmoid probabilities, (N, C) multi-hot targets, the sample indices they belong to and the bad
    images (path, reason) of samples streamed through the model in its preprocessing."""
    loader = build_loader(samples, predictor.transform, batch_size, shuffle=False, num_workers=num_workers)
    probs, targets, index, bad = [], [], [], []
    with progress_bar(len(samples), "eval") as bar:
        for batch in loader:
            bad += batch["bad"]
            if batch["images"] is not None:
                probs.append(predictor.probabilities(batch["images"]))  # sigmoid, in the chosen backend
                targets.append(torch.as_tensor(batch["labels"]).float())
                index += [int(i) for i in batch["index"]]
            bar.update(len(batch["bad"]) + (len(batch["index"]) if batch["images"] is not None else 0))
    if not probs:
        raise UserError(f"none of the {len(samples)} images could be decoded")
    return torch.cat(probs), torch.cat(targets), index, bad


def finite(value):
    """NaN (a class without positives has no AP) as None, so metrics.json stays standard JSON."""
    return None if isinstance(value, float) and math.isnan(value) else value


def multilabel_report(probs: torch.Tensor, targets: torch.Tensor, classes: list[str], record: dict) -> dict:
    """metrics.json's numbers: the headline, per-class AP and the per-class rows, keyed by class name."""
    metrics = multilabel_metrics(probs, targets, record["thresholds"])
    rows = {name: {k: finite(v) for k, v in row.items()} for name, row in zip(classes, metrics["per_class"])}
    return {
        "multi_label": True,
        "images": len(probs),
        **{k: finite(v) for k, v in metrics.items() if k != "per_class"},
        "per_class_ap": {name: row["ap"] for name, row in rows.items()},
        "per_class": rows,
        "thresholds": {"rule": record.get("rule"), "fitted_on": record.get("fitted_on")},
    }


def curves(probs: torch.Tensor, targets: torch.Tensor, classes: list[str], metrics: dict) -> list[dict]:
    """The PR curves of the classes with the most positives (at most MAX_CURVES), for figures.pr_curves."""
    support = targets.sum(0)
    order = sorted(range(len(classes)), key=lambda c: (-float(support[c]), classes[c]))[:MAX_CURVES]
    drawn = []
    for c in order:
        precision, recall = pr_curve(probs[:, c], targets[:, c] > 0.5)
        row = metrics["per_class"][classes[c]]
        point = (row["precision"], row["recall"]) if row["precision"] is not None else None
        ap = row["ap"] if row["ap"] is not None else float("nan")
        drawn.append(
            {"name": classes[c], "precision": precision, "recall": recall, "ap": ap, "at_threshold": point}
        )
    return drawn


def write_per_class_csv(metrics: dict, out: Path) -> Path:
    rows = [["class", *COLUMNS]]
    for name, row in metrics["per_class"].items():
        rows.append([name, *("" if row[k] is None else row[k] for k in COLUMNS)])
    return write_text_atomic(out / PER_CLASS_CSV, csv_text(rows))


def evaluate_multilabel(
    predictor: Predictor, samples: Samples, out: Path, about: dict, batch_size: int, num_workers: int
) -> dict:
    """Evaluate a multi-label model on labelled samples; write metrics.json, per_class.csv, pr_curves.png
    into out; return the metrics (with "out")."""
    if samples.label_sets is None:  # a folder layout, or a CSV read as single-label
        sets = [(label,) for label in samples.labels]
        samples = Samples(samples.paths, samples.labels, samples.classes, samples.extra, sets)
    record = predictor.loaded.multi_label
    probs, targets, index, bad = model_probabilities(predictor, samples, batch_size, num_workers)
    for path, reason in bad:
        print(f"warning: skipped bad image {path}: {reason}", file=sys.stderr)
    classes = predictor.classes
    metrics = multilabel_report(probs, targets, classes, record)
    about = {k: v for k, v in about.items() if k != "open_set"}
    bad_images = [{"path": path, "reason": reason} for path, reason in bad]
    metrics.update({"model": str(predictor.loaded.path), **about, "bad_images": bad_images})
    metrics["most_uncertain"] = uncertain_images(
        probs, targets, index, samples, classes, record["thresholds"]
    )
    out.mkdir(parents=True, exist_ok=True)
    write_per_class_csv(metrics, out)
    title = f"Precision-recall per class on {len(probs)} images (dots: at the class's threshold)"
    if len(classes) > MAX_CURVES:
        title += f"; the {MAX_CURVES} classes with the most positives"
    from ..records.figures import pr_curves  # matplotlib: imported when a figure is drawn

    pr_curves(curves(probs, targets, classes, metrics), out / FIGURE, title)
    metrics["figures"] = {"pr_curves": FIGURE}
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    metrics["out"] = str(out)
    return metrics


def uncertain_images(probs, targets, index, samples: Samples, classes: list[str], thresholds, k: int = 10):
    """The k images with the most wrong classes at the thresholds: path, true labels, answered labels."""
    answered, positive = decide(probs, thresholds), targets > 0.5
    wrong = (answered != positive).sum(1)
    order = sorted(range(len(probs)), key=lambda i: (-int(wrong[i]), i))[:k]
    return [
        {
            "path": samples.paths[index[i]],
            "labels": [classes[c] for c in range(len(classes)) if positive[i, c]],
            "answered": [classes[c] for c in range(len(classes)) if answered[i, c]],
            "wrong_classes": int(wrong[i]),
        }
        for i in order
        if int(wrong[i])
    ]


def multilabel_lines(m: dict) -> list[str]:
    """What `eval` prints for a multi-label model: the headline, then one line a class."""
    lines = [
        f"{m['images']} images ({m['split']}): mAP {m['map']:.4f}  micro F1 {m['micro_f1']:.4f}  macro F1 "
        f"{m['macro_f1']:.4f}  exact match {m['exact_match']:.4f}",
        f"{'class':<20} {'threshold':>9} {'AP':>6} {'precision':>9} {'recall':>6} {'F1':>6} {'support':>7}",
    ]
    for name, row in m["per_class"].items():
        cells = [_cell(row[k]) for k in ("threshold", "ap", "precision", "recall", "f1")]
        lines.append(
            f"{name[:20]:<20} {cells[0]:>9} {cells[1]:>6} {cells[2]:>9} {cells[3]:>6} {cells[4]:>6} "
            f"{row['support']:>7}"
        )
    return lines


def _cell(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def multilabel_section(m: dict, eval_dir: Path) -> str:
    """The report's evaluation section of a multi-label model."""
    header = "".join(f"<th>{html.escape(k)}</th>" for k in ("class", *COLUMNS))
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td>{html_value(row[k])}</td>" for k in COLUMNS)
        + "</tr>"
        for name, row in m["per_class"].items()
    )
    figure = eval_dir / FIGURE
    return (
        f"<h2>Evaluation (multi-label)</h2><p class='sub'>{m['images']} images of "
        f"{html.escape(str(m.get('data')))} (split: {html.escape(str(m.get('split')))}), model "
        f"{html.escape(str(m.get('model')))}; each class answered at its threshold "
        f"({html.escape(str(m['thresholds'].get('rule')))})</p>"
        + cards_html(
            [
                ("mAP", m["map"]),
                ("micro F1", m["micro_f1"]),
                ("macro F1", m["macro_f1"]),
                ("exact match", m["exact_match"]),
                ("labels per image", m["labels_per_image"]),
                ("answered per image", m["answered_per_image"]),
            ]
        )
        + f"<table id='per-class'><tr>{header}</tr>{rows}</table>"
        + (embedded_png(figure, "fig-pr", "precision-recall curve per class") if figure.is_file() else "")
    )


def evaluation_section(eval_dir: Path) -> str:
    """The report's evaluation section: a multi-label model's (multilabel_section), else eval_section."""
    path = eval_dir / "metrics.json"
    try:
        m = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable evaluation: {e}") from None
    return multilabel_section(m, eval_dir) if m.get("multi_label") else eval_section(eval_dir)
