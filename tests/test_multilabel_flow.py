"""A multi-label model from end to end on planted colour patches (one label per patch colour): train ->
eval -> predict -> export, every step answering the same labels for the same images."""

import csv
import io
import json
import shutil

import onnxruntime as ort
import torch

from resnetcls.data.decode import decode_image
from resnetcls.data.transforms import build_eval_transform
from resnetcls.records.modelfile import load_model_dir
from tests.conftest import run_cli


def val_rows(manifest) -> list[dict]:
    rows = list(csv.DictReader(manifest.open()))
    return [{**row, "path": str(manifest.parent / row["path"])} for row in rows if row["split"] == "val"]


def test_train_eval_predict_and_export_answer_the_same_labels(multilabel_run, tmp_path):
    run, manifest, _ = multilabel_run
    model = tmp_path / "model"
    shutil.copytree(run / "best", model)
    rows = val_rows(manifest)
    truth = [set(row["label"].split(";")) for row in rows]

    predicted = run_cli(
        "predict", model, *[r["path"] for r in rows], "--format", "json", "--precision", "fp32"
    )
    assert predicted.returncode == 0, predicted.stderr
    answers = [{label["label"] for label in entry["labels"]} for entry in json.loads(predicted.stdout)]
    # The planted patches are learned: most images answered exactly, far above a constant answer.
    exact = sum(a == t for a, t in zip(answers, truth)) / len(rows)
    constant = max(sum(t == {name} for t in truth) for name in ("blue", "green", "red", "yellow")) / len(rows)
    assert exact > constant

    evaluated = run_cli("eval", model, manifest, "--out", tmp_path / "ev", "--precision", "fp32")
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["exact_match"] == exact  # eval and predict decide alike

    exported = run_cli("export", model, "--to", "onnx")
    assert exported.returncode == 0, exported.stderr
    loaded = load_model_dir(model)
    thresholds = torch.tensor(loaded.multi_label["thresholds"])
    transform = build_eval_transform(loaded.preprocess)
    batch = torch.stack([transform(decode_image(r["path"])) for r in rows]).numpy()
    session = ort.InferenceSession(str(model / "model.onnx"), providers=["CPUExecutionProvider"])
    probs = torch.from_numpy(session.run(["probabilities"], {session.get_inputs()[0].name: batch})[0])
    onnx_answers = [
        {loaded.classes[c] for c in row.nonzero().flatten().tolist()} for row in probs >= thresholds
    ]
    assert onnx_answers == answers
    via_backend = run_cli(
        "predict", model, *[r["path"] for r in rows], "--format", "csv", "--backend", "onnxruntime"
    )
    assert via_backend.returncode == 0, via_backend.stderr
    cells = {row["path"]: row["labels"] for row in csv.DictReader(io.StringIO(via_backend.stdout))}
    assert [set(filter(None, cells[r["path"]].split(";"))) for r in rows] == answers
