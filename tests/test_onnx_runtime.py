"""ONNX Runtime for predict's onnxruntime backend: the model directory's own model.onnx when it matches the
weights, otherwise an in-memory export that says how to skip it next time; same probabilities as eager."""
import pytest
import torch

from resnetcls import onnx_runtime
from resnetcls.modelfile import load_model_dir, write_calibration
from resnetcls.onnx_runtime import ONNX_FILE, onnx_bytes, onnx_probabilities, onnx_session_for
from tests.test_export import make_tiny_model_dir


@pytest.fixture(scope="module")
def seed0_onnx(tmp_path_factory) -> bytes:
    """One real export of make_tiny_model_dir's seed-0 weights at temperature 1, for both tests (each export
    costs about 1.5 s): the same seed gives the same weights in every model directory."""
    return onnx_bytes(load_model_dir(make_tiny_model_dir(tmp_path_factory.mktemp("onnx") / "model")))


def test_a_session_uses_a_matching_model_onnx_and_re_exports_a_stale_one(tmp_path, capsys, monkeypatch, seed0_onnx):
    model = make_tiny_model_dir(tmp_path / "model")
    loaded = load_model_dir(model)
    exported, exports = seed0_onnx, []  # one real export; the in-memory re-exports below reuse it
    monkeypatch.setattr(onnx_runtime, "onnx_bytes", lambda m: exports.append(m.path) or exported)
    batch = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        eager = loaded.model(batch).softmax(1)
    session = onnx_session_for(loaded)
    assert "no model.onnx; exporting in memory" in capsys.readouterr().err and exports == [model]
    assert not (model / ONNX_FILE).exists()  # nothing written
    assert float((onnx_probabilities(session, batch) - eager).abs().max()) <= 1e-4
    (model / ONNX_FILE).write_bytes(exported)
    onnx_session_for(loaded)
    assert capsys.readouterr().err == "" and exports == [model]  # the file matches these weights: used as is
    other = load_model_dir(make_tiny_model_dir(tmp_path / "other", seed=1))
    (other.path / ONNX_FILE).write_bytes(exported)  # exported from other weights
    onnx_session_for(other)
    assert "exported from other weights; exporting again in memory" in capsys.readouterr().err
    assert exports == [model, other.path]


def test_a_model_onnx_exported_before_calibration_is_not_used_once_a_temperature_is_stored(tmp_path, capsys,
                                                                                           seed0_onnx):
    model = make_tiny_model_dir(tmp_path / "model")
    (model / ONNX_FILE).write_bytes(seed0_onnx)  # exported from these weights at T = 1
    write_calibration(model, {"calibrated": True, "temperature": 0.5, "fitted_on": "val", "images": 20})
    loaded = load_model_dir(model)
    session = onnx_session_for(loaded)
    assert "exported with temperature 1.0, model.json has 0.5; exporting again in memory" in capsys.readouterr().err
    batch = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = (loaded.model(batch) / 0.5).softmax(1)
    assert float((onnx_probabilities(session, batch) - expected).abs().max()) <= 1e-4
