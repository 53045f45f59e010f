"""Sessions for predict's onnxruntime and openvino backends: the model directory's own model.onnx when
model.json records its sha256 and it matches the weights, otherwise an in-memory export that says how to skip
it next time; a file that differs from its recorded sha256 is refused in one line; same probabilities as
eager; a file OpenVINO cannot compile is a one-line error; neither runtime writes into the home folder. A
model.onnx exported before the model's open-set score was fitted is not taken for current (auto runs torch,
which rejects unknown images), and rejection asked of a file without the score output is refused in one line;
OpenVINO gives the score output as ONNX Runtime does."""

import json
import os

import onnx
import pytest
import torch

from resnetcls.errors import UserError
from resnetcls.inference import sessions as onnx_runtime
from resnetcls.inference.predictor import Predictor
from resnetcls.inference.sessions import (
    INT8_FILE,
    ONNX_FILE,
    int8_session_for,
    onnx_bytes,
    onnx_probabilities,
    onnx_session_for,
)
from resnetcls.records.modelfile import load_model_dir, record_export, write_calibration
from resnetcls.utils import hardware
from tests.export.test_formats import add_open_set, make_tiny_model_dir, open_set_photos


@pytest.fixture(scope="module")
def seed0_onnx(tmp_path_factory) -> bytes:
    """One real export of make_tiny_model_dir's seed-0 weights at temperature 1, for both tests (each export
    costs about 1.5 s): the same seed gives the same weights in every model directory."""
    return onnx_bytes(load_model_dir(make_tiny_model_dir(tmp_path_factory.mktemp("onnx") / "model")))


def test_a_session_uses_a_matching_model_onnx_and_re_exports_a_stale_one(
    tmp_path, capsys, monkeypatch, seed0_onnx
):
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
    (model / ONNX_FILE).write_bytes(
        exported
    )  # copied in (or exported by an older resnetcls): no sha256 recorded
    onnx_session_for(loaded)
    err = capsys.readouterr().err
    assert (
        "not run, its sha256 is not recorded in model.json" in err and "exporting in memory meanwhile" in err
    )
    assert f"re-export it with `resnetcls export {model} --to onnx`" in err and exports == [model, model]
    record_export(model, ONNX_FILE)  # what export does once the file is checked and written
    onnx_session_for(load_model_dir(model))
    assert capsys.readouterr().err == "" and exports == [
        model,
        model,
    ]  # recorded, from these weights: used as is
    other = make_tiny_model_dir(tmp_path / "other", seed=1)
    (other / ONNX_FILE).write_bytes(exported)  # exported from other weights
    onnx_session_for(load_model_dir(record_export(other, ONNX_FILE)))
    assert "exported from other weights; exporting again in memory" in capsys.readouterr().err
    assert exports == [model, model, other]


def test_an_export_that_differs_from_its_recorded_sha256_is_refused_in_one_line_naming_the_fix(
    tmp_path, seed0_onnx
):
    model = make_tiny_model_dir(tmp_path / "model")
    for name in (ONNX_FILE, INT8_FILE):  # (any ONNX file from these weights serves as the int8 one here)
        (model / name).write_bytes(seed0_onnx)
    with pytest.raises(UserError, match="not run, its sha256 is not recorded in model.json"):
        int8_session_for(load_model_dir(model))  # cannot be made in memory: refused until re-exported
    record_export(record_export(model, ONNX_FILE), INT8_FILE)
    loaded = load_model_dir(model)
    assert onnx_runtime.onnx_file_current(loaded) and int8_session_for(loaded) is not None
    for name, fix in ((ONNX_FILE, "--to onnx`"), (INT8_FILE, "--to onnx --int8`")):
        data = bytearray(seed0_onnx)
        data[-8] ^= 1  # one bit flipped in place: same name, same size, same inode
        (model / name).write_bytes(bytes(data))
        calls = (
            [lambda: onnx_session_for(loaded), lambda: onnx_runtime.onnx_file_current(loaded)]
            if name == ONNX_FILE
            else [lambda: int8_session_for(loaded)]
        )
        for call in calls:
            with pytest.raises(UserError) as error:
                call()
            message = str(error.value)
            assert "\n" not in message and message.startswith(
                f"{model / name}: sha256 does not match model.json"
            )
            assert f"re-export it with `resnetcls export {model} {fix}" in message


def test_a_model_onnx_exported_before_calibration_is_not_used_once_a_temperature_is_stored(
    tmp_path, capsys, seed0_onnx
):
    model = make_tiny_model_dir(tmp_path / "model")
    (model / ONNX_FILE).write_bytes(seed0_onnx)  # exported from these weights at T = 1
    record_export(model, ONNX_FILE)
    write_calibration(model, {"calibrated": True, "temperature": 0.5, "fitted_on": "val", "images": 20})
    loaded = load_model_dir(model)
    session = onnx_session_for(loaded)
    assert (
        "exported with temperature 1.0, model.json has 0.5; exporting again in memory"
        in capsys.readouterr().err
    )
    batch = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = (loaded.model(batch) / 0.5).softmax(1)
    assert float((onnx_probabilities(session, batch) - expected).abs().max()) <= 1e-4


def test_openvino_runs_the_export_at_the_precision_asked_and_a_failed_compile_is_one_line(
    seed0_onnx, monkeypatch
):
    import openvino

    from resnetcls.errors import UserError

    fp32 = onnx_runtime.onnx_session(seed0_onnx, runtime="openvino", precision="fp32")
    reference = onnx_runtime.onnx_session(seed0_onnx)
    batch = torch.randn(2, 3, 32, 32)
    assert fp32.precision == "fp32"
    assert float((onnx_probabilities(fp32, batch) - onnx_probabilities(reference, batch)).abs().max()) <= 1e-4
    expected = "bf16" if onnx_runtime.cpu_has_fast_bf16() else "fp32"  # auto: as training and torch decide
    assert onnx_runtime.onnx_session(seed0_onnx, runtime="openvino").precision == expected

    def fail(*args, **kwargs):  # what OpenVINO raised under ONEDNN_MAX_CPU_ISA=AVX2 asked for bf16
        raise RuntimeError(
            "Exception from src/inference/src/cpp/core.cpp:117:\nCheck failed at node.cpp:345:\n"
            "Supported primitive descriptors list is empty for node: node_max_pool2d type: Pooling\n"
        )

    monkeypatch.setattr(openvino.Core, "compile_model", fail)
    with pytest.raises(UserError) as error:
        onnx_runtime.onnx_session(seed0_onnx, runtime="openvino", precision="bf16")
    message = str(error.value)
    assert "\n" not in message and "OpenVINO cannot compile it for this CPU in bf16" in message
    assert "node_max_pool2d" in message and "--backend onnxruntime" in message


def test_metadata_read_once_per_file_version_sees_a_rewritten_file(tmp_path, seed0_onnx):
    import onnx

    path = tmp_path / ONNX_FILE
    path.write_bytes(seed0_onnx)
    assert onnx_runtime.read_onnx_metadata(path)["temperature"] == "1.0"
    proto = onnx.load_from_string(seed0_onnx)
    next(p for p in proto.metadata_props if p.key == "temperature").value = "0.5"
    (tmp_path / "new.onnx").write_bytes(proto.SerializeToString())
    os.replace(tmp_path / "new.onnx", path)  # as export writes it (atomic.write_atomic): same path and size
    assert onnx_runtime.read_onnx_metadata(path)["temperature"] == "0.5"


# Run in a child interpreter: OpenVINO's TBB threads then never share a process with the suite's other tests
# (a full-suite run once died of a segfault a dozen tests after the first version of this test ran
# in-process).
CONCURRENT_CALLS = """
import sys, torch
from concurrent.futures import ThreadPoolExecutor
from resnetcls.inference.sessions import onnx_probabilities, onnx_session
session = onnx_session(sys.argv[1], runtime="openvino", precision="fp32")
batches = [torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n)) for n in range(1, 33)] * 4
alone = [onnx_probabilities(session, b) for b in batches]
with ThreadPoolExecutor(4) as pool:
    together = list(pool.map(lambda b: onnx_probabilities(session, b), batches))
print(all(torch.equal(a, b) for a, b in zip(alone, together)))
"""


def test_an_openvino_session_answers_threads_calling_at_once_as_one_at_a_time(seed0_onnx, tmp_path):
    import subprocess
    import sys

    (tmp_path / ONNX_FILE).write_bytes(seed0_onnx)
    result = subprocess.run(
        [sys.executable, "-c", CONCURRENT_CALLS, str(tmp_path / ONNX_FILE)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]  # without the lock: "Infer Request is busy"
    assert result.stdout.strip() == "True"


def test_onnx_runtime_telemetry_is_off_unless_the_user_turns_it_on(monkeypatch):
    monkeypatch.delenv("ORT_DISABLE_TELEMETRY", raising=False)
    monkeypatch.setenv(onnx_runtime.TELEMETRY_ENV, "1")  # the user's choice: runtimes as shipped
    onnx_runtime.runtime_telemetry_off()
    assert "ORT_DISABLE_TELEMETRY" not in os.environ
    monkeypatch.delenv(onnx_runtime.TELEMETRY_ENV)
    onnx_runtime.runtime_telemetry_off()
    assert os.environ["ORT_DISABLE_TELEMETRY"] == "1"
    monkeypatch.setenv("ORT_DISABLE_TELEMETRY", "0")  # ONNX Runtime's own switch, set by the user: kept
    onnx_runtime.runtime_telemetry_off()
    assert os.environ["ORT_DISABLE_TELEMETRY"] == "0"


@pytest.fixture(scope="module")
def open_set_model(tmp_path_factory):
    """make_tiny_model_dir's seed-0 weights with a kNN open-set score, its in-memory export, and the photos;
    the same weights and photos give the same score in every model directory."""
    fit, check = open_set_photos()
    model = add_open_set(make_tiny_model_dir(tmp_path_factory.mktemp("os") / "model"), "knn", fit, check)
    return fit, check, onnx_bytes(load_model_dir(model))


def test_a_model_onnx_exported_before_the_open_set_score_does_not_drop_rejection(
    tmp_path, capsys, monkeypatch, seed0_onnx, open_set_model
):
    fit, check, exported = open_set_model
    model = make_tiny_model_dir(tmp_path / "model")
    for name in (ONNX_FILE, INT8_FILE):  # both exported from these weights, before the score existed
        (model / name).write_bytes(seed0_onnx)
        record_export(model, name)
    assert onnx_runtime.onnx_file_current(load_model_dir(model))
    add_open_set(model, "knn", fit, check)
    loaded = load_model_dir(model)
    assert not onnx_runtime.onnx_file_current(loaded)
    assert (
        f"model.onnx: exported without the model's open-set score; --backend auto runs torch meanwhile "
        f"(re-export it with `resnetcls export {model} --to onnx`)"
    ) in capsys.readouterr().err
    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: False)  # where auto would run model.onnx
    auto = Predictor(model)
    assert auto.backend == "torch" and auto.threshold is not None
    with pytest.raises(UserError) as error:
        Predictor(model, backend="onnxruntime-int8")
    assert str(error.value) == (
        f"{model / INT8_FILE}: quantized without the model's open-set score; run "
        f"`resnetcls export {model} --to onnx --int8` again"
    )
    monkeypatch.setattr(onnx_runtime, "onnx_bytes", lambda m: exported)  # the same export, made once
    explicit = Predictor(model, backend="onnxruntime")  # exported again in memory, with the score
    assert "exported without the model's open-set score; exporting again in memory" in capsys.readouterr().err
    answers, expected = explicit.predict(check), auto.predict(check)
    assert [p.unknown for p in answers] == [p.unknown for p in expected] and any(p.unknown for p in answers)


def test_rejection_asked_of_a_file_without_the_score_output_is_refused_in_one_line(tmp_path, seed0_onnx):
    record = {
        "score": "knn",
        "threshold": 0.5,
        "accept": 0.95,
        "quantiles": [i / 100 for i in range(101)],
        "file": "open_set.safetensors",
        "k": 5,
    }
    proto = onnx.load_from_string(seed0_onnx)  # a graph without open_set_score, metadata that has a record
    proto.metadata_props.add(key="open_set", value=json.dumps(record))
    bare = tmp_path / ONNX_FILE
    onnx.save(proto, str(bare))
    for backend in ("onnxruntime", "openvino"):
        with pytest.raises(UserError) as error:
            Predictor(bare, backend=backend)
        assert str(error.value) == (
            f"{bare}: the exported file has no open_set_score output; re-export with "
            "`resnetcls export MODEL_DIR --to onnx`"
        )
    assert Predictor(bare, backend="onnxruntime", open_set="off").threshold is None  # runs without it


def test_openvino_gives_the_open_set_score_as_onnx_runtime_does(open_set_model, seed0_onnx):
    _, _, exported = open_set_model
    batch = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reference = onnx_runtime.onnx_session(exported)
    openvino = onnx_runtime.onnx_session(exported, runtime="openvino", precision="fp32")
    assert onnx_runtime.has_open_set_output(openvino) and onnx_runtime.has_open_set_output(reference)
    probs, scores = onnx_runtime.onnx_scored_probabilities(openvino, batch)
    expected_probs, expected_scores = onnx_runtime.onnx_scored_probabilities(reference, batch)
    assert scores.shape == (4,) and float((scores - expected_scores).abs().max()) <= 1e-4
    assert float((probs - expected_probs).abs().max()) <= 1e-4
    plain = onnx_runtime.onnx_session(seed0_onnx, runtime="openvino", precision="fp32")  # no score
    assert not onnx_runtime.has_open_set_output(plain)
    assert onnx_runtime.onnx_scored_probabilities(plain, batch)[1] is None
