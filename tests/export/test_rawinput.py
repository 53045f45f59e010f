"""`resnetcls export --input uint8`: ONNX and TorchScript files that take uint8 (N, S, S, 3) RGB frames with
the normalisation inside, giving the Predictor's answers in ONNX Runtime, OpenVINO and PyTorch; the input
contract in their metadata; the check that refuses a file that disagrees; predict refusing to feed such a
file."""

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from resnetcls.data.decode import decode_image
from resnetcls.data.transforms import build_eval_transform
from resnetcls.errors import UserError
from resnetcls.export import rawinput
from resnetcls.export.formats import load_torchscript, read_export_metadata
from resnetcls.inference.predictor import Predictor
from resnetcls.inference.sessions import OpenVinoSession
from resnetcls.records.modelfile import load_model_dir, sha256_file
from tests.conftest import run_cli


def frames_of(paths, preprocess) -> np.ndarray:
    """What a caller feeds: each image resized and centre-cropped to S x S as the model's eval does it (the
    eval transform without its normalisation), as uint8 (N, S, S, 3)."""
    geometry = build_eval_transform(preprocess).transforms[:-1]
    frames = []
    for path in paths:
        image = decode_image(path)
        for step in geometry:
            image = step(image)
        frames.append(np.asarray(image, np.uint8))
    return np.stack(frames)


@pytest.fixture(scope="module")
def uint8_onnx(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("u8") / "model.uint8in.onnx"
    result = run_cli("export", tiny_run, "--to", "onnx", "--input", "uint8", "--out", out)
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def reference(run, tiny_data):
    """The Predictor's (eager fp32) probabilities on a few of the tiny data's images, and the images."""
    paths = sorted(tiny_data.rglob("*.jpg"))[::5]
    predictions = Predictor(run, backend="torch", precision="fp32", open_set="off").predict(paths, topk=3)
    loaded = load_model_dir(run / "best")
    order = {name: i for i, name in enumerate(loaded.classes)}
    probs = np.zeros((len(paths), len(order)), np.float32)
    for row, prediction in enumerate(predictions):
        for name, prob in prediction.top:
            probs[row, order[name]] = prob
    return paths, probs, loaded


def test_uint8_onnx_gives_the_predictors_answers_in_onnxruntime_and_openvino(uint8_onnx, tiny_run, tiny_data):
    path, stdout = uint8_onnx
    assert "uint8 frames: parity vs eager fp32 on" in stdout and "val images of the run" in stdout
    assert "-> PASS" in stdout and f"wrote {path} (onnx" in stdout
    paths, expected, loaded = reference(tiny_run, tiny_data)
    frames = frames_of(paths, loaded.preprocess)
    # the documented three lines: open a session, feed the uint8 frames, read probabilities
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {"input": frames})[0]
    assert (probs.argmax(1) == expected.argmax(1)).all()
    assert np.abs(probs - expected).max() < 1e-4
    openvino = OpenVinoSession(path, precision="fp32").run(["probabilities"], {"input": frames})[0]
    assert (openvino.argmax(1) == expected.argmax(1)).all() and np.abs(openvino - expected).max() < 1e-4
    single = session.run(["probabilities"], {"input": frames[:1]})[0]  # any batch size
    assert np.abs(single - expected[:1]).max() < 1e-4


def test_the_metadata_states_the_input_contract(uint8_onnx, tiny_run):
    meta = read_export_metadata(uint8_onnx[0])
    contract = json.loads(meta["input"])
    size = load_model_dir(tiny_run / "best").preprocess["image_size"]
    assert contract["dtype"] == "uint8" and contract["layout"] == "NHWC" and contract["color"] == "RGB"
    assert contract["size"] == size and contract["shape"] == ["N", size, size, 3]
    assert contract["resize"].startswith("done by the caller") and "centre" in contract["resize"]
    assert contract["outputs"] == ["logits", "probabilities"]
    assert json.loads(meta["classes"]) == ["blue", "green", "red"]
    session = ort.InferenceSession(str(uint8_onnx[0]), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"


def test_uint8_torchscript_in_the_model_folder_is_checked_recorded_and_keeps_the_open_set_score(
    calibrated_run, tiny_data, tmp_path
):
    run = calibrated_run[0]
    model = shutil.copytree(run / "best", tmp_path / "best")
    result = run_cli(
        "export", model, "--to", "torchscript", "--input", "uint8", "--check-data", tiny_data / "red"
    )
    assert result.returncode == 0, result.stderr
    assert "open-set max |dscore|" in result.stdout and "-> PASS" in result.stdout
    path = model / "model.uint8in.torchscript.pt"
    assert json.loads((model / "model.json").read_text())["sha256"][path.name] == sha256_file(path)
    extra = {"model.json": ""}
    scripted = load_torchscript(path, extra)
    contract = json.loads(read_export_metadata(path)["input"])
    assert contract["layout"] == "NHWC" and contract["outputs"][-1] == "open_set_score"
    assert json.loads(extra["model.json"])["input"] == contract
    paths, expected, loaded = reference(run, tiny_data)
    frames = torch.from_numpy(frames_of(paths, loaded.preprocess))
    logits, probs, scores = scripted(frames)
    assert (probs.argmax(1).numpy() == expected.argmax(1)).all()
    assert np.abs(probs.numpy() - expected).max() < 1e-4 and scores.shape == (len(paths),)


def test_predict_refuses_to_feed_a_uint8_file_in_one_line(uint8_onnx, tiny_data):
    with pytest.raises(UserError, match="takes uint8 camera frames"):
        Predictor(uint8_onnx[0])
    result = run_cli("predict", uint8_onnx[0], tiny_data / "red")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--input uint8" in result.stderr


def test_an_export_that_disagrees_is_refused_and_not_written(tiny_run, tmp_path, monkeypatch):
    def uniform(fmt, data, frames):  # a file whose probabilities are all alike: top-1 and values differ
        return lambda batch: (torch.full((len(batch), 3), 1 / 3), None)

    monkeypatch.setattr(rawinput, "frame_torchscript_bytes", lambda loaded: b"")
    monkeypatch.setattr(rawinput, "frame_runner", uniform)
    out = tmp_path / "bad.pt"
    result = run_cli("export", tiny_run, "--to", "torchscript", "--input", "uint8", "--out", out)
    assert result.returncode == 1 and not out.exists()
    assert result.stderr.startswith("resnetcls: export check failed: torchscript uint8 export of")
    assert "(top-1 must agree on 99.5%)" in result.stderr and result.stderr.count("\n") == 1


def test_bad_uint8_usage_is_refused_in_one_line(tiny_run):
    result = run_cli(
        "export",
        tiny_run / "best",
        "--to",
        "onnx",
        "--input",
        "uint8",
        "--out",
        tiny_run / "best" / "model.onnx",
    )
    assert result.returncode == 2 and "for the float32 file predict and serve run" in result.stderr
    result = run_cli("export", tiny_run, "--to", "onnx", "--int8", "--input", "uint8")
    assert result.returncode == 2 and "--input uint8: not with --int8" in result.stderr
