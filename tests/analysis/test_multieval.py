"""`resnetcls eval` of a multi-label model: mAP, per-class AP, micro/macro F1, exact match and the per-class
table in the console, metrics.json, per_class.csv and the report, with the PR curves figure."""

import csv
import json
import math

import torch

from resnetcls.analysis.multieval import eval_labels, multilabel_lines, multilabel_report
from resnetcls.data.csvlabels import SINGLE_LABEL
from tests.conftest import run_cli

KEYS = {"map", "micro_f1", "macro_f1", "exact_match", "per_class_ap", "per_class", "images", "multi_label"}


def test_report_numbers_by_hand():
    probs = torch.tensor([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    m = multilabel_report(probs, targets, ["cup", "spoon"], {"thresholds": [0.5, 0.5], "rule": "r"})
    assert m["per_class_ap"] == {"cup": 1.0, "spoon": 1.0} and m["map"] == 1.0
    # cup answered on images 1 and 2 (one wrong), spoon on image 2: 2 true, 1 false positive
    assert math.isclose(m["micro_f1"], 2 * 2 / (2 * 2 + 1))
    assert math.isclose(m["exact_match"], 2 / 3)
    assert m["per_class"]["cup"] == {
        "threshold": 0.5,
        "ap": 1.0,
        "precision": 0.5,
        "recall": 1.0,
        "f1": 2 / 3,
        "support": 1,
    }
    lines = multilabel_lines({**m, "split": "val"})
    assert lines[0].startswith("3 images (val): mAP 1.0000  micro F1 0.8000")
    assert lines[2].split() == ["cup", "0.500", "1.000", "0.500", "1.000", "0.667", "1"]
    no_positive = multilabel_report(probs, torch.zeros(3, 2), ["cup", "spoon"], {"thresholds": [0.5, 0.5]})
    assert no_positive["per_class"]["cup"]["ap"] is None and no_positive["map"] is None  # JSON null, not NaN


def test_eval_reads_data_as_the_model_was_trained():
    assert eval_labels(None) is SINGLE_LABEL
    labels = eval_labels({"separator": "|", "thresholds": [0.5]})
    assert labels.multi_label == "on" and labels.separator == "|"


def test_eval_of_multilabel_model(multilabel_run, tmp_path):
    run, manifest, _ = multilabel_run
    result = run_cli("eval", run / "best", manifest, "--out", tmp_path / "ev", "--precision", "fp32")
    assert result.returncode == 0, result.stderr
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert KEYS <= set(m) and m["images"] == 16 and m["split"] == "val"
    assert set(m["per_class"]) == {"blue", "green", "red", "yellow"}
    assert set(m["per_class"]["red"]) == {"threshold", "ap", "precision", "recall", "f1", "support"}
    assert m["map"] > 0.7 and 0 <= m["exact_match"] <= 1
    # the same model, images, precision and thresholds as the end of training: the same mAP
    summary = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert math.isclose(m["map"], summary["best_val_map"], rel_tol=1e-4)
    assert result.stdout.startswith(f"16 images (val): mAP {m['map']:.4f}")
    assert "threshold" in result.stdout.splitlines()[1] and len(result.stdout.splitlines()) == 6
    rows = list(csv.reader((tmp_path / "ev" / "per_class.csv").open()))
    assert rows[0] == ["class", "threshold", "ap", "precision", "recall", "f1", "support"] and len(rows) == 5
    assert (tmp_path / "ev" / "pr_curves.png").stat().st_size > 1000


def test_training_report_shows_the_multilabel_evaluation(multilabel_run):
    run, _, _ = multilabel_run
    page = (run / "report.html").read_text()
    assert "Evaluation (multi-label)" in page and "id='per-class'" in page and 'id="fig-pr"' in page
    assert json.loads((run / "eval" / "metrics.json").read_text())["multi_label"] is True
