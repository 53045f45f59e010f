"""`resnetcls eval`: the numbers, the tables and the figures a user looks at after training."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from resnetcls.analysis.evaluate import compute_metrics, evaluate_samples, explain_wrong
from resnetcls.cli import main
from resnetcls.data.sources import load_eval_samples
from resnetcls.data.transforms import make_preprocess
from resnetcls.inference.predictor import Predictor
from resnetcls.models import create_model
from resnetcls.records.figures import confusion_heatmap
from resnetcls.records.modelfile import save_model_dir
from tests.conftest import run_cli


def one_hot_probs(preds: list[int], num_classes: int, confidence: float) -> torch.Tensor:
    rest = (1 - confidence) / (num_classes - 1)
    probs = torch.full((len(preds), num_classes), rest)
    probs[torch.arange(len(preds)), torch.tensor(preds)] = confidence
    return probs


def test_metrics_match_hand_computed_values():
    # 4 model classes; class "d" never appears in the data (a subset DATA).
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    preds = [0, 0, 0, 1, 1, 0, 2, 3]
    m = compute_metrics(one_hot_probs(preds, 4, 0.7), labels, ["a", "b", "c", "d"])
    assert m["top1"] == pytest.approx(5 / 8)
    # recall a=3/4, b=1/2, c=1/2; precision a=3/4, b=1/2, c=1; over the 3 classes present
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2 + 1 / 2) / 3)
    # the worst class: lowest recall among the classes present ("d" has none), the first on a tie
    assert m["worst_class"] == "b" and m["worst_class_recall"] == pytest.approx(1 / 2)
    assert m["macro_precision"] == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    f1 = [2 * p * r / (p + r) for p, r in ((3 / 4, 3 / 4), (1 / 2, 1 / 2), (1, 1 / 2))]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": None, "f1": None, "support": 0}
    assert m["per_class"]["a"]["support"] == 4 and m["classes_in_data"] == ["a", "b", "c"]
    assert m["confusion_matrix"][2] == [0, 0, 1, 1]
    # every image at confidence 0.7 with accuracy 5/8: ECE = |0.7 - 0.625|
    assert m["ece"] == pytest.approx(0.075)
    assert sum(b["count"] for b in m["ece_bins"]) == 8
    assert {"true": "a", "pred": "b", "count": 1} in m["most_confused"]


def test_eval_cli_writes_every_number_table_and_figure(tiny_run, tiny_data, tmp_path, capsys):
    out, model = tmp_path / "ev", shutil.copytree(tiny_run / "best", tmp_path / "model")  # no split.csv
    assert main(["eval", str(model), str(tiny_data), "--out", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    assert "top1" in stdout and "balanced accuracy" in stdout and "ECE" in stdout
    m = json.loads((out / "metrics.json").read_text())
    lowest = min(m["per_class"], key=lambda name: m["per_class"][name]["recall"])
    assert (
        m["worst_class_recall"]
        == m["per_class"][m["worst_class"]]["recall"]
        == m["per_class"][lowest]["recall"]
    )
    assert f"worst class {m['worst_class']}: recall {m['worst_class_recall']:.4f}  macro F1" in stdout
    assert stdout.startswith("36 images (all): top1 ")  # nothing known about training: plain "images"
    # the model directory has no run beside it: eval cannot tell which images trained it, and says so
    assert (
        f"note: cannot tell which of the 36 images in {tiny_data} trained the model (no "
        f"{tmp_path / 'split.csv'}); scoring all 36\n"
    ) in stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["images"] == 36 and m["classes"] == ["blue", "green", "red"] and m["split"] == "all"
    for key in (
        "top1",
        "top5",
        "balanced_accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "ece",
        "nll",
    ):
        assert 0.0 <= m[key] <= (1.0 if key != "nll" else 100), key
    assert sum(map(sum, m["confusion_matrix"])) == 36
    rows = list(csv.DictReader(open(out / "per_class.csv")))
    assert [r["class"] for r in rows] == ["blue", "green", "red"] and all(r["support"] == "12" for r in rows)
    matrix = list(csv.reader(open(out / "confusion_matrix.csv")))
    assert matrix[0][1:] == ["blue", "green", "red"] and sum(int(v) for r in matrix[1:] for v in r[1:]) == 36
    for name in m["figures"].values():
        with Image.open(out / name) as img:
            assert img.width > 150 and img.height > 150


def test_eval_on_a_subset_of_the_classes_and_a_csv_with_splits(tiny_run, tiny_data, tmp_path):
    rows = ["path,label,split"] + [
        f"{c}/{i}.jpg,{c},{'test' if i < 4 else 'train'}" for c in ("red", "blue") for i in range(12)
    ]
    (tiny_data / "subset.csv").write_text("\n".join(rows) + "\n")
    model = shutil.copytree(tiny_run / "best", tmp_path / "model")  # no split.csv: every image scored
    try:
        code = main(["eval", str(model), str(tiny_data / "subset.csv"), "--out", str(tmp_path / "ev")])
    finally:
        (tiny_data / "subset.csv").unlink()
    assert code == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["split"] == "test" and m["images"] == 8 and m["classes_in_data"] == ["blue", "red"]
    assert m["per_class"]["green"]["support"] == 0 and m["per_class"]["green"]["recall"] is None


def test_eval_names_classes_the_model_does_not_know(tiny_run, tiny_data, tmp_path, capsys):
    for name in ("purple", "red"):
        (tmp_path / "d" / name).mkdir(parents=True)
        shutil.copy(tiny_data / "red" / "0.jpg", tmp_path / "d" / name / "0.jpg")
    assert main(["eval", str(tiny_run), str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "purple" in err and "Traceback" not in err


def test_most_confidently_wrong_images_are_listed_and_drawn(tiny_data, tmp_path):
    torch.manual_seed(0)
    classes = ["blue", "green", "red"]
    args = {"stem": "small", "width": 8}
    model = save_model_dir(
        tmp_path / "m", create_model("resnet18", 3, **args), "resnet18", args, classes, make_preprocess(32)
    )
    predictor = Predictor(model)
    samples, _ = load_eval_samples(str(tiny_data), classes)
    m = evaluate_samples(
        predictor,
        samples,
        tmp_path / "ev",
        {"data": str(tiny_data), "split": "all"},
        num_workers=0,
        wrong_k=5,
    )
    wrong = m["most_confident_wrong"]
    assert len(wrong) == min(5, 36 - round(m["top1"] * 36)) > 0  # an untrained model gets most wrong
    assert all(w["true"] != w["pred"] and Path(w["path"]).parent.name == w["true"] for w in wrong)
    assert [w["prob"] for w in wrong] == sorted((w["prob"] for w in wrong), reverse=True)
    with Image.open(tmp_path / "ev" / "most_confident_wrong.png") as img:
        assert img.width >= 4 * 250  # four pairs a row: each photo beside its Grad-CAM overlay
    views = explain_wrong(predictor, wrong)  # what the sheet draws
    assert all(v.shape == (32, 64, 3) for v in views)
    assert all((v[:, 32:] != v[:, :32]).any() for v in views)  # the right half carries the heatmap


def test_confusion_heatmap_stays_readable_at_100_classes(tmp_path):
    names = [f"object_{i:03d}" for i in range(100)]
    confusion = torch.eye(100, dtype=torch.long).numpy() * 5
    confusion[3, 7] = 2
    confusion_heatmap(confusion, names, tmp_path / "cm.png")
    with Image.open(tmp_path / "cm.png") as img:
        # at least ~16 px per class row/column so every class name carries a legible label
        assert img.width >= 100 * 16 and img.height >= 100 * 16


def test_eval_uses_the_calibrated_probabilities_and_records_ece_before_and_after(tiny_data, tmp_path, capsys):
    from resnetcls.records.modelfile import write_calibration

    torch.manual_seed(0)
    model = save_model_dir(
        tmp_path / "model",
        create_model("resnet18", 3, width=8),
        "resnet18",
        {"width": 8},
        ["blue", "green", "red"],
        make_preprocess(32),
    )
    args = [str(tiny_data), "--precision", "fp32"]
    assert main(["eval", str(model), *args, "--out", str(tmp_path / "raw")]) == 0
    raw = json.loads((tmp_path / "raw" / "metrics.json").read_text())
    assert raw["calibration"]["temperature"] == 1.0 and raw["calibration"]["calibrated"] is False
    assert raw["calibration"]["ece_before"] == pytest.approx(raw["calibration"]["ece_after"])
    write_calibration(model, {"calibrated": True, "temperature": 0.3, "fitted_on": "val", "images": 20})
    assert main(["eval", str(model), *args, "--out", str(tmp_path / "cal")]) == 0
    assert "temperature 0.3; raw softmax ECE" in capsys.readouterr().out
    cal = json.loads((tmp_path / "cal" / "metrics.json").read_text())
    c = cal["calibration"]
    assert c["temperature"] == 0.3 and c["calibrated"] is True and c["fitted_on"] == "val"
    assert c["ece_before"] == pytest.approx(raw["ece"], abs=1e-6)  # before: the raw softmax
    assert c["ece_after"] == cal["ece"] and c["nll_after"] == pytest.approx(cal["nll"], abs=1e-4)
    assert c["nll_before"] == pytest.approx(raw["nll"], abs=1e-4) and cal["top1"] == raw["top1"]
    assert sum(b["count"] for b in c["ece_bins_before"]) == 36


def test_streamed_batches_give_the_numbers_of_one_pass():
    from resnetcls.analysis.evaluate import Accumulator

    torch.manual_seed(0)
    logits, labels = torch.randn(50, 7) * 3, torch.randint(0, 7, (50,))
    whole, streamed = Accumulator(7, temperature=1.7), Accumulator(7, temperature=1.7)
    whole.add(logits, labels, torch.arange(50))
    for start in range(0, 50, 8):  # batches of 8, the last of 2
        streamed.add(
            logits[start : start + 8], labels[start : start + 8], torch.arange(start, min(start + 8, 50))
        )
    classes = list("abcdefg")
    one, many = whole.metrics(classes), streamed.metrics(classes)
    assert one.pop("nll") == pytest.approx(many.pop("nll"), rel=1e-12) and one == many
    expected = (logits.double() / 1.7).log_softmax(dim=1)[torch.arange(50), labels].mean()
    assert many["confusion_matrix"] is not None and sum(map(sum, many["confusion_matrix"])) == 50
    assert whole.nll_sum / 50 == pytest.approx(-float(expected), rel=1e-12)


def test_the_heatmap_shows_the_most_confused_classes_above_its_cap():
    import numpy as np

    from resnetcls.analysis.evaluate import HEATMAP_MAX_CLASSES, heatmap_classes

    names = [f"c{i}" for i in range(200)]
    confusion = np.eye(200, dtype=np.int64) * 3
    few = heatmap_classes(confusion[:40, :40], names[:40])
    assert not few["capped"] and few["classes"] == names[:40] and "all 40 classes" in few["caption"]
    for i in range(0, 120, 2):  # 60 confused pairs: class i taken for class i+1, the later pairs more often
        confusion[i, i + 1] = 1 + i // 2
    shown = heatmap_classes(confusion, names)
    assert shown["capped"] and len(shown["classes"]) == HEATMAP_MAX_CLASSES and shown["of"] == 200
    assert shown["classes"] == [f"c{i}" for i in range(70, 120)]  # the 25 most frequent pairs, both classes
    assert f"the {HEATMAP_MAX_CLASSES} most confused of 200 classes" in shown["caption"]


def test_eval_runs_the_exported_model_with_backend_onnxruntime(tiny_run, tiny_data, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_run / "best", model)
    assert main(["export", str(model), "--to", "onnx"]) == 0
    assert (
        main(["eval", str(model), str(tiny_data), "--out", str(tmp_path / "t"), "--precision", "fp32"]) == 0
    )
    assert (
        main(["eval", str(model), str(tiny_data), "--out", str(tmp_path / "o"), "--backend", "onnxruntime"])
        == 0
    )
    eager = json.loads((tmp_path / "t" / "metrics.json").read_text())
    onnx = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert onnx["inference_precision"] == "fp32" and onnx["images"] == eager["images"]
    assert onnx["top1"] == eager["top1"] and abs(onnx["nll"] - eager["nll"]) < 1e-4
    # The numbers come from model.onnx itself: a changed file is refused, naming it.
    (model / "model.onnx").write_bytes((model / "model.onnx").read_bytes() + b"\0")
    changed = run_cli("eval", model, tiny_data, "--out", tmp_path / "x", "--backend", "onnxruntime")
    assert changed.returncode == 2 and f"{model / 'model.onnx'}: sha256 does not match" in changed.stderr


def run_split(run: Path) -> dict[str, list[str]]:
    """The run's split.csv: split name -> its image paths."""
    by_split: dict[str, list[str]] = {}
    for row in csv.DictReader(open(run / "split.csv", encoding="utf-8")):
        by_split.setdefault(row["split"], []).append(row["path"])
    return by_split


def test_eval_leaves_out_the_models_training_images_and_says_so(tiny_run, tiny_data, tmp_path, capsys):
    split = run_split(tiny_run)
    trained, val = len(split["train"]), len(split["val"])
    assert trained + val == 36 and val > 0
    assert main(["eval", str(tiny_run), str(tiny_data), "--out", str(tmp_path / "ev")]) == 0
    out, err = capsys.readouterr()
    assert (
        f"note: {trained} of 36 images in {tiny_data} are the model's training images "
        f"({tiny_run / 'split.csv'}); scoring the other {val} (--include-train to score all); {val} of the "
        f"held-out images are the run's val images (its val score came from them)\n"
    ) in err
    assert out.startswith(f"{val} held-out images (all): top1 ")
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["images"] == val and sum(map(sum, m["confusion_matrix"])) == val and "train_images" not in m
    assert m["overlap"] == {
        "split_csv": str(tiny_run / "split.csv"),
        "data_images": 36,
        "training_images": trained,
        "val_images": val,
        "held_out_images": val,
        "include_train": False,
    }
    rows = list(csv.DictReader(open(tmp_path / "ev" / "per_class.csv")))
    assert sum(int(r["support"]) for r in rows) == val  # the tables are of the held-out images too


def test_eval_refuses_data_that_is_all_training_images(tiny_run, tiny_data, tmp_path):
    # the training images under another folder name (symlinks): the same files, found by resolved path
    for path in run_split(tiny_run)["train"]:
        link = tmp_path / "again" / Path(path).parent.name / Path(path).name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    result = run_cli("eval", tiny_run, tmp_path / "again", "--out", tmp_path / "ev")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "error" in line]
    assert f"all {len(run_split(tiny_run)['train'])} images in {tmp_path / 'again'} are the model's " in line
    assert "--include-train" in line and not (tmp_path / "ev").exists()


def test_include_train_scores_all_and_keeps_the_training_images_apart(tiny_run, tiny_data, tmp_path, capsys):
    split = run_split(tiny_run)
    trained, val = len(split["train"]), len(split["val"])
    out = tmp_path / "ev"
    assert main(["eval", str(tiny_run), str(tiny_data), "--out", str(out), "--include-train"]) == 0
    stdout, stderr = capsys.readouterr()
    assert "scoring all 36, the training images' numbers apart" in stderr
    m = json.loads((out / "metrics.json").read_text())
    t = m["train_images"]
    assert m["images"] == val and t["images"] == trained and m["overlap"]["include_train"] is True
    lines = stdout.splitlines()
    assert lines[0] == f"{val} held-out images (all): top1 {m['top1']:.4f}  top5 {m['top5']:.4f}"
    assert lines[2] == (
        f"training images ({trained}): top1 {t['top1']:.4f}  top5 {t['top5']:.4f}  balanced accuracy "
        f"{t['balanced_accuracy']:.4f}  macro F1 {t['macro_f1']:.4f}  ECE {t['ece']:.4f}"
    )
    assert sum(row["support"] for row in t["per_class"].values()) == trained
    assert "confusion_matrix" not in t  # the matrix, tables and figures are the held-out images'
    # every training image given alone: scored as asked, the headline says what they are
    only = tmp_path / "train.csv"
    only.write_text("path,label\n" + "".join(f"{p},{Path(p).parent.name}\n" for p in split["train"]))
    assert main(["eval", str(tiny_run), str(only), "--out", str(tmp_path / "t"), "--include-train"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith(f"{trained} training images (all): top1 ") and len(stdout.splitlines()) == 2


def test_the_api_leaves_out_training_images_unless_asked(tiny_run, tiny_data, tmp_path, capsys):
    import resnetcls

    val = len(run_split(tiny_run)["val"])
    held = resnetcls.evaluate(tiny_run, tiny_data, out=tmp_path / "a", precision="fp32")
    assert held["images"] == val and "are the model's training images" in capsys.readouterr().err
    both = resnetcls.evaluate(tiny_run, tiny_data, out=tmp_path / "b", precision="fp32", include_train=True)
    assert both["images"] == val and both["train_images"]["images"] == 36 - val
    assert both["top1"] == held["top1"]
