"""A model.onnx on its own: Predictor, `resnetcls predict` and `serve` run it from its metadata, refuse what
needs the eager weights (torch, Grad-CAM) in one line, refuse an ONNX file we did not export naming the keys
it lacks, and the export guide's ONNX-Runtime-only snippets (docs/guides/export.md) reproduce the Predictor's
predictions; a file exported from a model with an open-set score rejects the images its model directory
rejects, with the threshold it carries, in both runtimes."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

import resnetcls
from resnetcls.cli import main
from resnetcls.data.transforms import make_preprocess
from resnetcls.errors import UserError
from resnetcls.export.formats import export_model
from resnetcls.inference.predictor import Predictor
from resnetcls.inference.standalone import is_onnx_file, load_onnx_file
from resnetcls.records.modelfile import load_model_dir, write_calibration, write_meta_record
from resnetcls.utils.openset import UNKNOWN, threshold_for
from tests.export.test_formats import CLASSES, add_open_set, make_tiny_model_dir, open_set_photos
from tests.serve.test_admission import client_for
from tests.serve.test_app import png_bytes

DOC = Path(__file__).parents[2] / "docs" / "guides" / "export.md"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A calibrated tiny model (T = 0.5: the temperature must travel in the file) exported in place."""
    model = make_tiny_model_dir(tmp_path_factory.mktemp("standalone") / "model")
    write_calibration(model, {"calibrated": True, "temperature": 0.5, "fitted_on": "val", "images": 30})
    export_model(model, "onnx")
    return model


@pytest.fixture(scope="module")
def bare(model_dir, tmp_path_factory):
    """The exported file copied alone into a folder without model.json or weights."""
    path = tmp_path_factory.mktemp("alone") / "model.onnx"
    shutil.copy(model_dir / "model.onnx", path)
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    pixels = rng.integers(0, 255, size=(12, 17, 3), dtype=np.uint8)
    Image.fromarray(pixels).resize((70, 50), Image.BICUBIC).save(path, quality=90)
    return path


def test_a_bare_file_predicts_as_its_model_directory(model_dir, bare, photo):
    alone = Predictor(bare, backend="onnxruntime")
    beside = Predictor(model_dir, backend="onnxruntime")
    assert alone.classes == CLASSES and alone.model is None and alone.precision == "fp32"
    assert alone.temperature == 0.5 and alone.loaded.meta["calibration"]["temperature"] == 0.5
    assert (
        repr(alone)
        == f"Predictor(model='{bare}', classes=3, backend='onnxruntime', precision='fp32', open_set='off')"
    )
    [a], [b] = alone.predict(photo), beside.predict(photo)
    assert [c for c, _ in a.top] == [c for c, _ in b.top]
    assert np.allclose([p for _, p in a.top], [p for _, p in b.top], atol=1e-6)
    auto = resnetcls.load(bare)
    assert auto.backend in ("onnxruntime", "openvino") and auto.predict(photo)[0].top[0][0] == a.top[0][0]


def test_torch_int8_and_explain_need_the_model_directory(bare, photo, capsys):
    with pytest.raises(
        UserError, match=r"--backend torch needs the model directory .*onnxruntime or openvino"
    ):
        Predictor(bare, backend="torch")
    with pytest.raises(UserError, match="--backend onnxruntime-int8: a bare ONNX file runs with"):
        Predictor(bare, backend="onnxruntime-int8")
    assert main(["predict", str(bare), str(photo), "--explain", str(bare.parent / "cams")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Grad-CAM needs the eager weights" in err
    assert not (bare.parent / "cams").exists()


def test_the_cli_predicts_with_a_bare_file(bare, photo, capsys):
    assert main(["predict", str(bare), str(photo), "--backend", "onnxruntime", "--topk", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[0] == str(photo) and table[1].split()[1] in CLASSES


def test_an_onnx_file_without_our_metadata_is_refused_naming_the_missing_keys(bare, tmp_path):
    proto = onnx.load(str(bare))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in ("classes", "preprocess")]
    del proto.metadata_props[:]
    for key, value in kept:
        proto.metadata_props.add(key=key, value=value)
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, str(foreign))
    with pytest.raises(
        UserError, match=r"foreign.onnx: not a resnetcls export: its metadata lacks classes, "
    ):
        Predictor(foreign)
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(UserError, match="junk.onnx: not a readable ONNX file"):
        load_onnx_file(tmp_path / "junk.onnx")
    with pytest.raises(UserError, match="missing.onnx: no such file"):
        Predictor(tmp_path / "missing.onnx")
    assert is_onnx_file(bare) and not is_onnx_file(bare.parent)


def test_serve_runs_a_bare_file_and_explains_only_with_the_directory(bare):
    with client_for(bare, backend="onnxruntime") as client:
        answer = client.post("/predict", content=png_bytes(20, 20))
        assert answer.status_code == 200 and answer.json()["top"][0]["class"] in CLASSES
        info = client.get("/info").json()
        assert info["classes"] == CLASSES and info["arch"] == "resnet18" and info["backend"] == "onnxruntime"
        refused = client.post("/explain", content=png_bytes(20, 20))
        assert refused.status_code == 501 and "needs the model directory" in refused.json()["detail"]


def test_the_documented_onnxruntime_snippet_reproduces_the_predictor(bare, photo, tmp_path, monkeypatch):
    section = re.search(r"^#+ Without resnetcls.*?```python\n(.*?)```", DOC.read_text(), re.S | re.M)
    assert section, f"{DOC} has no 'Without resnetcls' section with a python block"
    snippet = section.group(1)
    shutil.copy(bare, tmp_path / "model.onnx")
    shutil.copy(photo, tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, str(DOC), "exec"), scope)
    predictor = Predictor(bare, backend="onnxruntime")
    predictor.loader.fast = False  # the snippet resizes then crops, as eval does (not predict's fast path)
    [ours] = predictor.predict(photo, topk=len(CLASSES))
    by_class = dict(ours.top)
    expected = np.array([by_class[c] for c in CLASSES])
    # Both run the same graph in float32; they differ only in how the input is normalised and where the
    # softmax runs: a few float32 roundings of values near 1.
    tolerance = 64 * np.finfo(np.float32).eps
    assert scope["classes"][int(scope["probs"].argmax())] == ours.top[0][0]
    assert np.abs(scope["probs"] - expected).max() <= tolerance


def run_documented_snippet(onnx_file, photo, folder, monkeypatch) -> dict:
    """The export guide's ONNX-Runtime-only snippet run on onnx_file and photo; its variables."""
    section = re.search(r"^#+ Without resnetcls.*?```python\n(.*?)```", DOC.read_text(), re.S | re.M)
    assert section, f"{DOC} has no 'Without resnetcls' section with a python block"
    shutil.copy(onnx_file, folder / "model.onnx")
    shutil.copy(photo, folder / "photo.jpg")
    monkeypatch.chdir(folder)
    scope: dict = {}
    exec(compile(section.group(1), str(DOC), "exec"), scope)
    return scope


def test_letterbox_predicts_alike_in_torch_onnxruntime_and_the_documented_snippet(
    model_dir, tmp_path, monkeypatch
):
    """data.resize=letterbox travels in the file: ONNX Runtime, through the Predictor or through the guide's
    plain snippet, pads a wide photo as the torch Predictor does (same top-1, probabilities within float
    tolerance). The exported graph does not depend on the preprocessing, so this module's export with its
    preprocess record made letterbox's, in model.json and in the file, is a letterbox model's export."""
    folder = Path(shutil.copytree(model_dir, tmp_path / "model"))
    letterbox = make_preprocess(32, mode="letterbox")
    proto = onnx.load(folder / "model.onnx")
    next(p for p in proto.metadata_props if p.key == "preprocess").value = json.dumps(letterbox)
    onnx.save(proto, folder / "model.onnx")
    write_meta_record(folder, "preprocess", letterbox, hashed=("model.onnx",))
    photo = tmp_path / "wide.jpg"
    pixels = np.random.default_rng(5).integers(0, 255, size=(6, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).resize((150, 45), Image.BICUBIC).save(photo, quality=95)
    [torch_top] = Predictor(folder, backend="torch", precision="fp32").predict(photo, topk=len(CLASSES))
    [ort_top] = Predictor(folder, backend="onnxruntime").predict(photo, topk=len(CLASSES))
    scope = run_documented_snippet(folder / "model.onnx", photo, tmp_path, monkeypatch)
    expected = np.array([dict(torch_top.top)[c] for c in CLASSES])
    assert json.loads(scope["meta"]["preprocess"])["resize_mode"] == "letterbox"
    assert scope["image"].size == (32, 32) and scope["image"].getpixel((0, 0)) == (124, 116, 104)
    assert ort_top.top[0][0] == torch_top.top[0][0] == scope["classes"][int(scope["probs"].argmax())]
    assert np.abs(np.array([dict(ort_top.top)[c] for c in CLASSES]) - expected).max() < 1e-4
    assert np.abs(scope["probs"] - expected).max() < 1e-4
    # the crop record on the same file and photo sees another picture: the mode is really applied
    [cropped] = Predictor(model_dir, backend="onnxruntime").predict(photo, topk=len(CLASSES))
    assert np.abs(np.array([dict(cropped.top)[c] for c in CLASSES]) - expected).max() > 1e-3


@pytest.fixture(scope="module", params=["knn", "mahalanobis"])
def open_set_bare(request, tmp_path_factory):
    """A model directory with an open-set score, exported in place, and its model.onnx copied alone."""
    fit, check = open_set_photos()
    model = make_tiny_model_dir(tmp_path_factory.mktemp(f"os-{request.param}") / "model")
    add_open_set(model, request.param, fit, check)
    export_model(model, "onnx")
    path = tmp_path_factory.mktemp(f"os-alone-{request.param}") / "model.onnx"
    shutil.copy(model / "model.onnx", path)
    return model, path, check


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_bare_file_rejects_the_images_its_model_directory_rejects(open_set_bare, backend):
    model, bare, check = open_set_bare
    beside = Predictor(model, backend="torch", precision="fp32").predict(check)
    alone = Predictor(bare, backend=backend, precision="fp32")
    assert alone.loaded.scorer is None and alone.threshold == load_model_dir(model).open_set["threshold"]
    answers = alone.predict(check)
    assert [p.unknown for p in answers] == [p.unknown for p in beside]
    assert 0 < sum(p.unknown for p in answers) < len(check)  # both answers occur on these images
    assert all((p.label == UNKNOWN) == p.unknown for p in answers)
    assert all(p.to_dict()["label"] == p.label for p in answers)
    # The feature-space scores' float32 rounding differs a little between runtimes and eager (see
    # export/formats.py score_limit); far below the gaps between these images' scores.
    spread = max(p.open_set_score for p in beside) - min(p.open_set_score for p in beside)
    diffs = [abs(a.open_set_score - b.open_set_score) for a, b in zip(answers, beside)]
    assert max(diffs) <= 1e-4 * max(1.0, spread)


def test_the_threshold_and_its_quantiles_round_trip_through_the_file(open_set_bare):
    model, bare, _ = open_set_bare
    record = load_model_dir(model).open_set
    assert load_onnx_file(bare).open_set == record
    moved = Predictor(bare, backend="onnxruntime", unknown_accept=0.9)
    assert moved.threshold == threshold_for(record["quantiles"], 0.9)
    assert moved.threshold == Predictor(model, backend="torch", unknown_accept=0.9).threshold
    assert Predictor(bare, backend="onnxruntime", open_set="off").threshold is None


def test_the_documented_open_set_snippet_answers_unknown_as_the_predictor_does(
    open_set_bare, tmp_path, monkeypatch
):
    _, bare, check = open_set_bare
    section = DOC.read_text().split("### Without resnetcls", 1)[1]
    first, second = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    assert "open_set_score" in second and 'meta["open_set"]' in second
    shutil.copy(bare, tmp_path / "model.onnx")
    monkeypatch.chdir(tmp_path)
    predictor = Predictor(bare, backend="onnxruntime")
    predictor.loader.fast = False  # the snippet resizes then crops, as eval does (not predict's fast path)
    for photo in check[:3] + check[-3:]:  # known-looking and flower photographs
        shutil.copy(photo, tmp_path / "photo.jpg")
        scope: dict = {}
        exec(compile(first + second, str(DOC), "exec"), scope)
        [ours] = predictor.predict(photo)
        assert scope["label"] == ours.label
        assert abs(float(scope["score"]) - ours.open_set_score) <= 1e-4 * max(1.0, abs(ours.open_set_score))


def test_a_bad_open_set_record_in_the_metadata_is_refused_naming_the_field(bare, tmp_path):
    proto = onnx.load(str(bare))
    record = {"score": "knn", "threshold": 0.5, "accept": 0.95, "quantiles": [0.1, 0.2], "k": 5}
    proto.metadata_props.add(key="open_set", value=json.dumps({**record, "file": "open_set.safetensors"}))
    edited = tmp_path / "edited.onnx"
    onnx.save(proto, str(edited))
    with pytest.raises(
        UserError, match=r"edited.onnx: open_set.quantiles must be 101 non-decreasing numbers"
    ):
        load_onnx_file(edited)
