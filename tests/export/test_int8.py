"""`resnetcls export MODEL --to onnx --int8`: the int8 file, its agreement check and record, the refusal
below --min-agreement (in either runtime), bad --calibration, and predict/serve on both int8 backends; a model
with an open-set score keeps its open_set_score output in float32, checked by its unknown/known decisions."""

import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from resnetcls.inference.predictor import Predictor
from resnetcls.records.modelfile import load_model_dir, sha256_file
from resnetcls.serve.app import create_app
from resnetcls.serve.schema import ServeSettings
from tests.conftest import run_cli
from tests.export.test_formats import add_open_set


@pytest.fixture(scope="module")
def int8_run(tiny_run, tmp_path_factory):
    """A copy of the shared tiny run, exported to int8 in place (calibration from its config.yaml)."""
    import shutil

    run = tmp_path_factory.mktemp("int8") / "run"
    shutil.copytree(tiny_run, run)
    result = run_cli("export", run, "--to", "onnx", "--int8", "--min-agreement", "0.8")
    assert result.returncode == 0, result.stderr
    return run, result.stdout


def test_int8_export_writes_the_file_and_records_its_agreement(int8_run):
    run, stdout = int8_run
    assert (run / "best" / "model.int8.onnx").is_file()
    assert "top-1 agrees on" in stdout and "accuracy fp32" in stdout and "drop" in stdout
    assert "ONNX Runtime" in stdout and "OpenVINO" in stdout  # each runtime's own int8 kernels were checked
    meta = json.loads((run / "best" / "model.json").read_text())
    record = meta["int8"]
    assert record["file"] == "model.int8.onnx"
    assert meta["sha256"]["model.int8.onnx"] == sha256_file(
        run / "best" / "model.int8.onnx"
    )  # what predict checks
    assert record["agreement"] >= 0.8 and record["images"] > 0 and record["calibration_images"] > 0
    assert set(record["runtimes"]) == {"onnxruntime", "openvino"}
    assert record["agreement"] == min(r["agreement"] for r in record["runtimes"].values())
    # model.json stays loadable (its content hash was updated with the record)
    assert Predictor(run, backend="torch").classes


@pytest.mark.parametrize("backend", ["onnxruntime-int8", "openvino-int8"])
def test_int8_backend_gives_the_same_top1_as_fp32_on_most_images(int8_run, tiny_data, backend):
    run, _ = int8_run
    paths = sorted(str(p) for p in tiny_data.rglob("*.jpg"))
    fp32 = Predictor(run, backend="torch", precision="fp32").predict(paths, topk=1)
    predictor = Predictor(run, backend=backend)
    assert predictor.precision == "int8"
    int8 = predictor.predict(paths, topk=1)
    same = sum(a.top[0][0] == b.top[0][0] for a, b in zip(fp32, int8))
    assert same >= 0.9 * len(paths)
    result = run_cli("predict", run, paths[0], "--backend", backend, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["top"][0]["class"] == fp32[0].top[0][0]


@pytest.mark.parametrize("backend", ["onnxruntime-int8", "openvino-int8"])
def test_serve_runs_the_int8_backend(int8_run, tiny_data, backend):
    run, _ = int8_run
    image = next(tiny_data.rglob("*.jpg"))
    with TestClient(create_app(ServeSettings(str(run), backend=backend))) as client:
        assert client.get("/info").json()["backend"] == backend
        reply = client.post("/predict", files={"file": (image.name, image.read_bytes(), "image/jpeg")})
    assert reply.status_code == 200, reply.text
    assert reply.json()["top"][0]["class"] == image.parent.name


def test_int8_below_min_agreement_is_refused_with_the_numbers(tiny_run, tmp_path, monkeypatch):
    """An int8 model that disagrees with fp32 (simulated: its probabilities reversed) is not written."""
    import shutil

    from resnetcls.export import int8 as quantize

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    real = quantize.onnx_probabilities
    monkeypatch.setattr(quantize, "onnx_probabilities", lambda session, batch: -real(session, batch))
    before = (run / "best" / "model.json").read_text()
    result = run_cli("export", run, "--to", "onnx", "--int8", "--calibration-images", "8")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "not written" in result.stderr and "top-1 agrees on" in result.stderr and "0.99" in result.stderr
    assert not (run / "best" / "model.int8.onnx").exists()
    assert (run / "best" / "model.json").read_text() == before


def test_int8_is_refused_when_one_runtime_disagrees(tiny_run, tmp_path, monkeypatch):
    """OpenVINO runs the file with its own int8 kernels: its disagreement alone refuses the file."""
    import shutil

    from resnetcls.export import int8 as quantize
    from resnetcls.inference.sessions import OpenVinoSession

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    real = quantize.onnx_probabilities
    monkeypatch.setattr(
        quantize,
        "onnx_probabilities",
        lambda session, batch: (
            -real(session, batch) if isinstance(session, OpenVinoSession) else real(session, batch)
        ),
    )
    with pytest.raises(quantize.UserError, match=r"not written.*OpenVINO 0\.00%"):
        quantize.export_int8(run / "best", images=8, min_agreement=0.5)
    assert not (run / "best" / "model.int8.onnx").exists()


def test_bad_calibration_path_and_int8_misuse_exit_2(tiny_run, tmp_path):
    result = run_cli("export", tiny_run, "--to", "onnx", "--int8", "--calibration", tmp_path / "nope")
    assert result.returncode == 2
    assert "--calibration" in result.stderr and "no such file" in result.stderr
    result = run_cli("export", tiny_run, "--to", "torchscript", "--int8")
    assert result.returncode == 2 and "--to onnx" in result.stderr


def test_int8_backend_without_the_file_says_how_to_make_it(tiny_run, tmp_path):
    result = run_cli("predict", tiny_run, str(tmp_path), "--backend", "onnxruntime-int8")
    assert result.returncode == 2
    assert "model.int8.onnx: not found" in result.stderr and "--int8" in result.stderr


def test_int8_keeps_the_open_set_score_and_checks_its_unknown_decisions(tiny_run, tiny_data, tmp_path):
    import shutil

    import onnx

    from resnetcls.export import int8 as quantize

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    photos = sorted(tiny_data.rglob("*.jpg"))
    add_open_set(run / "best", "knn", photos[::2], photos[1::2], accept=0.8)
    result = quantize.export_int8(run / "best", images=16, min_agreement=0.0)
    assert "unknown/known decisions agree on" in result.summary() and result.open_set_agreement is not None
    meta = json.loads((run / "best" / "model.json").read_text())
    assert meta["int8"]["open_set_agreement"] == round(result.open_set_agreement, 6)
    assert result.open_set_agreement == min(r["open_set_agreement"] for r in result.by_runtime.values())
    proto = onnx.load(str(run / "best" / "model.int8.onnx"))
    assert [o.name for o in proto.graph.output][-1] == "open_set_score"
    assert json.loads({p.key: p.value for p in proto.metadata_props}["open_set"]) == meta["open_set"]
    scorer_nodes = quantize._score_only_nodes(run / "best" / "model.int8.onnx")
    assert scorer_nodes and not any(  # the score's own nodes stay float32
        n.op_type in ("QuantizeLinear", "DequantizeLinear")
        for n in proto.graph.node
        if n.name in scorer_nodes
    )
    eager = Predictor(run, backend="torch", precision="fp32").predict(photos)
    int8 = Predictor(run, backend="onnxruntime-int8").predict(photos)
    assert int8[0].open_set_score is not None
    same = sum(a.unknown == b.unknown for a, b in zip(eager, int8))
    assert same >= 0.8 * len(photos) and load_model_dir(run / "best").open_set["accept"] == 0.8


def test_a_multi_label_model_is_checked_by_its_label_decisions():
    from types import SimpleNamespace

    from resnetcls.export.int8 import Int8Result, agreement

    fp32 = torch.tensor([[0.9, 0.6, 0.1], [0.2, 0.45, 0.8]])
    int8 = torch.tensor([[0.1, 0.55, 0.3], [0.3, 0.55, 0.7]])  # same top-1 once, 4 of 6 decisions
    single = SimpleNamespace(multi_label=None)
    multi = SimpleNamespace(multi_label={"thresholds": [0.5, 0.5, 0.5]})
    assert agreement(single, fp32, int8) == 0.5
    assert agreement(multi, fp32, int8) == pytest.approx(4 / 6)
    result = Int8Result(Path("m.int8.onnx"), 1, 8, "data", 2, 4 / 6, None, None, {}, multi_label=True)
    assert "label decisions (image, class) agree on 66.67%" in result.summary()
    assert result.record()["agreement_of"] == "label decisions (image, class)"
