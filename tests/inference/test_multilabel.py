"""A multi-label model (model.json "multi_label") at prediction time: sigmoid probabilities, every class at or
above its threshold, the same answers from the eager model, ONNX Runtime, OpenVINO and a bare model.onnx."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from resnetcls.errors import UserError
from resnetcls.export.formats import export_model, read_export_metadata
from resnetcls.inference.command import PredictOptions, run_predict
from resnetcls.inference.multilabel import LabelRule, label_rule
from resnetcls.inference.predictor import Predictor
from resnetcls.inference.sessions import onnx_file_current
from resnetcls.records.modelfile import load_model_dir, write_meta_record
from resnetcls.utils.multilabel import THRESHOLD_RULE

# blue always answered (threshold 0), green never (threshold 1: a sigmoid below 1), red always.
ALWAYS_NEVER_ALWAYS = [0.0, 1.0, 0.0]


def multilabel_model(tiny_run: Path, path: Path, thresholds: list[float], separator: str = ";") -> Path:
    """A copy of the tiny run's best model with a "multi_label" record: a multi-label model of its three
    classes (blue, green, red) with these thresholds."""
    shutil.copytree(tiny_run / "best", path)
    record = {
        "thresholds": thresholds,
        "separator": separator,
        "rule": THRESHOLD_RULE,
        "fitted_on": "val",
        "images": 3,
    }
    return write_meta_record(path, "multi_label", record)


@pytest.fixture(scope="module")
def model(tiny_run, tmp_path_factory):
    return multilabel_model(tiny_run, tmp_path_factory.mktemp("ml") / "model", ALWAYS_NEVER_ALWAYS)


@pytest.fixture(scope="module")
def image(tiny_data):
    return next((tiny_data / "red").glob("*.jpg"))


def sigmoid_of(model_dir: Path, image: Path) -> torch.Tensor:
    """The eager fp32 sigmoid probabilities of one image, computed here from the model's logits."""
    predictor = Predictor(model_dir, backend="torch", precision="fp32")
    return predictor.logits(predictor.load(image)[None])[0].sigmoid()


def test_labels_are_the_classes_at_or_above_their_thresholds_highest_first(model, image):
    probs = sigmoid_of(model, image)
    assert float(probs[1]) < 1  # green stays below its threshold of 1
    (result,) = Predictor(model, backend="torch", precision="fp32").predict(image, topk=3)
    expected = sorted(["blue", "red"], key=lambda name: -float(probs[["blue", "green", "red"].index(name)]))
    assert result.labels == expected
    assert result.label_probs == pytest.approx({"blue": float(probs[0]), "red": float(probs[2])}, abs=1e-6)
    # top-k lists the sigmoid probabilities (not a softmax: they need not sum to 1)
    assert dict(result.top) == pytest.approx(dict(zip(["blue", "green", "red"], probs.tolist())), abs=1e-6)
    assert result.to_dict()["labels"] == [
        {"label": name, "probability": round(result.label_probs[name], 6)} for name in expected
    ]
    assert repr(result).startswith(f"Prediction({str(image)!r}: labels [{expected[0]} ")


def test_thresholds_between_the_probabilities_decide_each_class(tiny_run, image, tmp_path):
    probs = sigmoid_of(tiny_run / "best", image).tolist()
    order = sorted(range(3), key=lambda c: -probs[c])
    # just below the highest and the lowest class, just above the middle one: two labels, known in advance
    thresholds = [0.0] * 3
    thresholds[order[0]] = probs[order[0]] - 1e-4
    thresholds[order[1]] = min(1.0, probs[order[1]] + 1e-4)
    thresholds[order[2]] = probs[order[2]] - 1e-4
    model = multilabel_model(tiny_run, tmp_path / "model", thresholds)
    (result,) = Predictor(model, backend="torch", precision="fp32").predict(image)
    classes = ["blue", "green", "red"]
    assert result.labels == [classes[order[0]], classes[order[2]]]


def test_one_threshold_for_every_class_and_an_empty_answer(model, image, capsys):
    (everything,) = Predictor(model, backend="torch", label_threshold=0.0).predict(image)
    assert sorted(everything.labels) == ["blue", "green", "red"]
    (nothing,) = Predictor(model, backend="torch", label_threshold=1.0).predict(image)
    assert nothing.labels == [] and nothing.label_probs == {}
    assert nothing.to_dict()["labels"] == []
    options = PredictOptions(label_threshold=1.0)
    assert run_predict(str(model), [str(image)], options, backend="torch") == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[1:3] == ["labels", "(probability)"]
    assert "(none)" in row


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_a_threshold_outside_0_1_or_on_a_single_label_model_is_refused(model, tiny_run, value):
    with pytest.raises(UserError, match=f"--threshold {value}: expected a probability between 0 and 1"):
        Predictor(model, backend="torch", label_threshold=value)
    with pytest.raises(
        UserError, match="--threshold applies to multi-label models; this one is single-label"
    ):
        Predictor(tiny_run, backend="torch", label_threshold=0.5)


def test_open_set_is_off_for_a_multi_label_model_and_said_once(model, capsys):
    predictor = Predictor(model, backend="torch", open_set="on")
    assert predictor.threshold is None and not predictor.open_set_info()["on"]
    err = capsys.readouterr().err
    assert err.count("open-set rejection is off for a multi-label model") == 1
    Predictor(model, backend="torch")  # not asked for: nothing said
    assert "open-set" not in capsys.readouterr().err


def test_predict_csv_and_json_carry_the_labels(model, image, tiny_data, capsys):
    green = next((tiny_data / "green").glob("*.jpg"))
    options = PredictOptions(topk=2, fmt="csv")
    assert run_predict(str(model), [str(image), str(green)], options, backend="torch") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0]) == ["path", "rank", "class", "prob", "error", "labels", "label_probs"]
    assert len(rows) == 4  # two ranks per image, the labels repeated on each
    first = rows[0]
    names, probs = first["labels"].split(";"), [float(p) for p in first["label_probs"].split(";")]
    assert sorted(names) == ["blue", "red"] and probs == sorted(probs, reverse=True)
    assert run_predict(str(model), [str(image)], PredictOptions(fmt="json"), backend="torch") == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert [label["label"] for label in entry["labels"]] == names


def test_the_separator_of_the_record_joins_the_csv_cells(tiny_run, image, tmp_path, capsys):
    model = multilabel_model(tiny_run, tmp_path / "model", ALWAYS_NEVER_ALWAYS, separator="|")
    assert run_predict(str(model), [str(image)], PredictOptions(topk=1, fmt="csv"), backend="torch") == 0
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sorted(row["labels"].split("|")) == ["blue", "red"]


def test_a_label_rule_answers_rows_and_describes_itself():
    rule = LabelRule(["cup", "spoon", "fork"], [0.5, 0.3, 0.9], ";")
    probs = torch.tensor([[0.6, 0.7, 0.95], [0.1, 0.2, 0.3]])
    assert rule.answers(probs) == [
        [("fork", pytest.approx(0.95)), ("spoon", pytest.approx(0.7)), ("cup", pytest.approx(0.6))],
        [],
    ]
    assert rule.info() == {
        "multi_label": True,
        "thresholds": {"cup": 0.5, "spoon": 0.3, "fork": 0.9},
        "label_separator": ";",
    }


def test_a_single_label_model_has_no_rule_and_keeps_its_outputs(tiny_run, image):
    assert label_rule(load_model_dir(tiny_run / "best", "cpu")) is None
    (result,) = Predictor(tiny_run, backend="torch").predict(image)
    assert result.labels is None and "labels" not in result.to_dict()
    assert sum(p for _, p in result.top) == pytest.approx(1.0, abs=1e-5)  # softmax over the 3 classes


@pytest.fixture(scope="module")
def exported(model):
    """The multi-label model exported to ONNX (parity-checked on its probabilities) in its directory."""
    result = export_model(model, "onnx")
    assert result.parity.passed
    return result.path


@pytest.fixture(scope="module")
def eager(model, image, tiny_data):
    """Four images and the eager fp32 model's predictions of them."""
    images = [image, *sorted((tiny_data / "green").glob("*.jpg"))[:3]]
    return images, Predictor(model, backend="torch", precision="fp32").predict(images, topk=3)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "bare"])
def test_the_exported_file_answers_what_the_eager_model_answers(model, exported, eager, backend):
    images, expected = eager
    if backend == "bare":  # the file alone: its thresholds come from its metadata
        runner = Predictor(exported, backend="onnxruntime")
    else:
        runner = Predictor(model, backend=backend, precision="fp32")
    assert runner.session is not None and runner.label_rule.thresholds == ALWAYS_NEVER_ALWAYS
    for want, got in zip(expected, runner.predict(images, topk=3)):
        assert got.labels == want.labels
        assert dict(got.top) == pytest.approx(dict(want.top), abs=1e-4)


def test_the_export_carries_the_record_and_a_sigmoid_output(model, exported):
    meta = read_export_metadata(exported)
    assert json.loads(meta["multi_label"])["thresholds"] == ALWAYS_NEVER_ALWAYS
    assert "sigmoid(logits)" in meta["input"]
    loaded = load_model_dir(model, "cpu")
    assert onnx_file_current(loaded)
    # new thresholds (a re-fit): the file no longer matches the model directory
    write_meta_record(model, "multi_label", {**loaded.multi_label, "thresholds": [0.5, 0.5, 0.5]})
    assert not onnx_file_current(load_model_dir(model, "cpu"))
    write_meta_record(model, "multi_label", loaded.multi_label)


def test_predict_and_serve_take_the_threshold_on_the_command_line(model, image):
    from resnetcls.cli.deploy_commands import serve_settings
    from tests.cli.test_deploy_commands import serve_args
    from tests.conftest import run_cli

    result = run_cli("predict", model, image, "--threshold", "1", "--format", "json", "--backend", "torch")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["labels"] == []
    bad = run_cli("predict", model, image, "--threshold", "2")
    assert bad.returncode == 2 and "argument --threshold: must be between 0 and 1, got 2" in bad.stderr
    assert serve_settings(serve_args("--threshold", "0.3"))[0].threshold == 0.3
    assert serve_settings(serve_args())[0].threshold is None  # -1, the default: each class's own


def test_remove_class_keeps_the_kept_classes_thresholds_and_add_class_refuses(model, tiny_data, tmp_path):
    from resnetcls.inference.addclass import add_class, remove_class

    out = remove_class(model, "green", tmp_path / "two")
    meta = json.loads((out / "model.json").read_text())
    assert meta["classes"] == ["blue", "red"] and meta["multi_label"]["thresholds"] == [0.0, 0.0]
    with pytest.raises(UserError, match="a multi-label model cannot learn a class from photos alone"):
        add_class(model, "yellow", [next(tiny_data.rglob("*.jpg"))], tmp_path / "four")
    assert not (tmp_path / "four").exists()
