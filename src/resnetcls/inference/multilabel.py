"""Multi-label models at prediction time: a model directory (or exported file) whose model.json has the
"multi_label" record answers every class whose probability reaches that class's threshold.

- Probabilities are sigmoid(logits), one independent probability a class (no temperature: calibration is not
  fitted for a multi-label model); a single-label model keeps softmax(logits / T).
- The answer of an image, its labels, is every class at or above its threshold, highest probability first;
  it may be empty (no class reaches its threshold). Top-k still lists the k highest sigmoid probabilities.
- The thresholds are the record's, fitted per class on the validation images at the end of training;
  predict's and serve's --threshold X replaces every class's threshold by X.
- Open-set rejection ("unknown") is off for a multi-label model: an image of none of the classes is already
  answered with no label.

The exported files carry the record as the ONNX metadata key "multi_label" (JSON), and their `probabilities`
output is the sigmoid, so ONNX Runtime, OpenVINO and a bare model.onnx answer the same labels.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..records.modelfile import write_meta_record
from ..utils.calibration import calibrated_probabilities
from ..utils.multilabel import DEFAULT_SEPARATOR, decide

NO_LABEL = "(none)"  # the table's labels cell of an image whose classes all stay below their thresholds
SIGMOID_NOTE = "probabilities (sigmoid(logits), one a class; multi_label holds each class's threshold)"


@dataclass(frozen=True)
class LabelRule:
    """How a multi-label model answers: its classes, the threshold of each (the record's, or --threshold
    for all) and the separator that joins labels in CSV cells."""

    classes: list[str]
    thresholds: list[float]
    separator: str = DEFAULT_SEPARATOR
    overridden: bool = False  # --threshold replaced the record's thresholds

    def answers(self, probs: torch.Tensor) -> list[list[tuple[str, float]]]:
        """(N, classes) sigmoid probabilities -> each image's (class, probability) at or above the class's
        threshold, highest first (an empty list: no class reached its threshold)."""
        answered = decide(probs.float(), self.thresholds)
        rows = []
        for row, keep in zip(probs.tolist(), answered.tolist()):
            chosen = [(self.classes[c], p) for c, (p, yes) in enumerate(zip(row, keep)) if yes]
            rows.append(sorted(chosen, key=lambda pair: -pair[1]))
        return rows

    def annotate(self, predictions: list, probs: torch.Tensor) -> None:
        """Set each Prediction's `labels` (names, highest first) and `label_probs` (name -> probability)."""
        for prediction, answer in zip(predictions, self.answers(probs)):
            prediction.labels = [name for name, _ in answer]
            prediction.label_probs = dict(answer)

    def info(self) -> dict:
        """serve's /info fields: multi_label true, each class's threshold in use, the separator."""
        return {
            "multi_label": True,
            "thresholds": dict(zip(self.classes, self.thresholds)),
            "label_separator": self.separator,
        }


def label_rule(model, threshold: float | None = None) -> LabelRule | None:
    """The LabelRule of a loaded model (a model directory's or a bare ONNX file's: its `multi_label` record
    and classes), or None for a single-label model. threshold (--threshold): one threshold for every class,
    a probability in [0, 1]; refused for a single-label model, which answers its top class."""
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 <= threshold <= 1):
        raise UserError(f"--threshold {threshold}: expected a probability between 0 and 1")
    record = getattr(model, "multi_label", None)
    if record is None:
        if threshold is not None:
            raise UserError(
                f"{model.path}: --threshold applies to multi-label models; this one is single-label (its "
                "model.json has no multi_label record) and answers its top class"
            )
        return None
    classes = list(model.classes)
    thresholds = [float(threshold)] * len(classes) if threshold is not None else list(record["thresholds"])
    separator = record.get("separator", DEFAULT_SEPARATOR)
    return LabelRule(classes, thresholds, separator, threshold is not None)


def model_probabilities(logits: torch.Tensor, model) -> torch.Tensor:
    """(N, classes) logits -> fp32 probabilities: sigmoid(logits) for a multi-label model (a loaded model
    directory or bare ONNX file with a `multi_label` record), else the calibrated softmax(logits / T)."""
    if getattr(model, "multi_label", None) is not None:
        return logits.float().sigmoid()
    return calibrated_probabilities(logits, model.temperature)


def head_probabilities(logits: torch.Tensor, temperature: float, sigmoid: bool) -> torch.Tensor:
    """What the exported graph's `probabilities` output computes: sigmoid(logits) for a multi-label model,
    else softmax(logits / T)."""
    return logits.sigmoid() if sigmoid else (logits / temperature).softmax(dim=1)


def open_set_mode(model, open_set: str, unknown_accept: float | None) -> tuple[str, float | None]:
    """--open-set and --unknown-accept as they apply: unchanged for a single-label model; "off" for a
    multi-label one, said once on stderr when the user asked for rejection (--open-set on or
    --unknown-accept)."""
    if getattr(model, "multi_label", None) is None:
        return open_set, unknown_accept
    if open_set == "on" or unknown_accept is not None:
        print(
            f"note: {model.path}: open-set rejection is off for a multi-label model (an image of none of its "
            "classes is answered with no label)",
            file=sys.stderr,
        )
    return "off", None


def refuse_new_class(model) -> None:
    """add-class on a multi-label model: UserError (its new class would have no threshold fitted)."""
    if getattr(model, "multi_label", None) is not None:
        raise UserError(
            f"{model.path}: a multi-label model cannot learn a class from photos alone (the class would "
            "have no fitted threshold); retrain it on data that holds the class"
        )


def write_kept_thresholds(out, meta: dict, classes: list[str]) -> None:
    """A multi-label model's record in the model directory `out` of some of its classes (remove-class): the
    thresholds of those classes, by name; nothing for a single-label model."""
    record = meta.get("multi_label")
    if record is not None:
        by_name = dict(zip(meta["classes"], record["thresholds"]))
        write_meta_record(out, "multi_label", {**record, "thresholds": [by_name[c] for c in classes]})


def export_fields(meta: dict) -> dict[str, str]:
    """The metadata an exported file of a multi-label model adds: the record as JSON under "multi_label",
    and the input/output note saying the probabilities are sigmoids ({} for a single-label model)."""
    record = meta.get("multi_label")
    if record is None:
        return {}
    note = f"float32 (N,3,S,S) RGB, preprocessed as in 'preprocess'; outputs: logits (raw), {SIGMOID_NOTE}"
    return {"multi_label": json.dumps(record), "input": note}


def labels_json(prediction) -> dict:
    """A Prediction's "labels" for JSON ({} for a single-label model): [{label, probability}], highest
    first."""
    if getattr(prediction, "labels", None) is None or prediction.error:
        return {}
    probs = prediction.label_probs
    return {"labels": [{"label": name, "probability": round(probs[name], 6)} for name in prediction.labels]}


def labels_cells(prediction, separator: str) -> list[str]:
    """A Prediction's CSV cells: labels and label_probs, each joined with the model's separator (both empty
    when no class reached its threshold)."""
    names = prediction.labels or []
    return [separator.join(names), separator.join(f"{prediction.label_probs[n]:.6f}" for n in names)]


def labels_text(prediction) -> str:
    """The table's labels cell: "cup (0.912) spoon (0.640)", or "(none)"."""
    names = prediction.labels or []
    return "  ".join(f"{n} ({prediction.label_probs[n]:.3f})" for n in names) or NO_LABEL


def labels_repr(prediction) -> str:
    """The start of a multi-label Prediction's repr: "labels [cup 0.91, spoon 0.64]; top " ("" otherwise)."""
    if getattr(prediction, "labels", None) is None:
        return ""
    return f"labels [{', '.join(f'{n} {prediction.label_probs[n]:.2f}' for n in prediction.labels)}]; top "
