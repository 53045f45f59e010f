"""The checks of model.json: every field by type, then range, each refusal one line naming the file and the
field; a valid record passes unchanged."""

import shutil
from pathlib import Path

import pytest
import torch

from resnetcls.data.transforms import make_preprocess
from resnetcls.errors import UserError
from resnetcls.models import create_model
from resnetcls.records.metacheck import FORMAT, WEIGHTS, check_meta
from resnetcls.records.modelfile import save_model_dir
from tests.records.test_modelfile import ARGS, CLASSES, PRE, cli_refuses, edit_meta


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("resnet18", len(CLASSES), **ARGS)
    return save_model_dir(
        tmp_path_factory.mktemp("m") / "model", model, "resnet18", ARGS, CLASSES, PRE, {"val_top1": 0.5}
    )


@pytest.fixture
def model_copy(saved_model, tmp_path) -> Path:
    return Path(shutil.copytree(saved_model, tmp_path / "model"))


def valid_meta() -> dict:
    return {
        "format": FORMAT,
        "arch": "resnet18",
        "arch_args": dict(ARGS),
        "classes": list(CLASSES),
        "preprocess": make_preprocess(32),
        "sha256": {WEIGHTS: "0" * 64},
    }


def test_a_valid_record_passes_unchanged(tmp_path):
    meta = valid_meta()
    assert check_meta(meta, tmp_path / "model.json") is meta


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"format": "resnetcls.model/9"},
            "format 'resnetcls.model/9' is not 'resnetcls.model/1' (written by",
        ),
        ({"format": "other"}, "format 'other' is not 'resnetcls.model/1'"),
        ({"arch": "resnet7"}, "unknown arch 'resnet7'; this resnetcls knows resnet18"),
        ({"arch_args": {**ARGS, "depth": 3}}, "unknown arch_args depth; expected some of stem"),
        ({"classes": ["ant", "ant"]}, "class names listed twice: ant"),
        ({"classes": []}, "classes must be a non-empty list of names"),
        ({"metrics": [1]}, "metrics must be an object"),
        ({"sha256": {}}, f"sha256.{WEIGHTS} must be a 64-digit hex digest"),
    ],
)
def test_a_broken_field_is_one_error_naming_the_file_and_the_field(tmp_path, changes, message):
    with pytest.raises(UserError) as raised:
        check_meta({**valid_meta(), **changes}, tmp_path / "model.json")
    assert str(raised.value).startswith(f"{tmp_path / 'model.json'}: ")
    assert message in str(raised.value)


def test_a_missing_key_is_named(tmp_path):
    meta = valid_meta()
    del meta["preprocess"]
    with pytest.raises(UserError, match="missing key 'preprocess'"):
        check_meta(meta, tmp_path / "model.json")


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"preprocess": {**PRE, "mean": [float("nan"), 0.4, 0.4]}},
            "preprocess.mean=[nan, 0.4, 0.4] must be finite",
        ),
        (
            {"preprocess": {**PRE, "std": [float("inf"), 0.2, 0.2]}},
            "preprocess.std=[inf, 0.2, 0.2] must be finite",
        ),
        (
            {"preprocess": {**PRE, "std": [0, 0, 0]}},
            "preprocess.std=[0, 0, 0]: each must be between 0.001 and 10",
        ),
        (
            {"preprocess": {**PRE, "std": [True, 0.2, 0.2]}},
            "preprocess.std=[True, 0.2, 0.2] must be three numbers",
        ),
        (
            {"preprocess": {**PRE, "image_size": 10**6}},
            "preprocess.image_size=1000000 must be between 8 and 4096",
        ),
        ({"preprocess": {**PRE, "image_size": True}}, "preprocess.image_size=True must be an integer"),
        ({"preprocess": {**PRE, "resize": 36.0}}, "preprocess.resize=36.0 must be an integer"),
        (
            {"preprocess": {**PRE, "interpolation": ["bilinear"]}},
            "preprocess.interpolation=['bilinear']; expected",
        ),
        ({"arch": ["resnet18"]}, "arch must be a name such as 'resnet50', got ['resnet18']"),
        ({"arch_args": {**ARGS, "width": 4096}}, "arch_args.width=4096 is not valid (1 to 256)"),
        ({"arch_args": {**ARGS, "width": True}}, "arch_args.width=True must be an integer"),
        ({"arch_args": {**ARGS, "stem": ["small"]}}, "arch_args.stem=['small'] must be str"),
        ({"classes": ["ant", "bee", "caf\udce9"]}, "class name 'caf\\udce9' is not valid Unicode text"),
        ({"classes": [f"c{i}" for i in range(100_001)]}, "100001 classes: at most 100,000 are supported"),
        (
            {"sha256": {"model.safetensors": "0" * 64, "model.json": "xyz"}},
            "sha256.model.json must be a 64-digit",
        ),
        (
            {"sha256": {"model.safetensors": "0" * 64, "model.onnx": 7}},
            "sha256.model.onnx must be a 64-digit",
        ),
        (
            {"sha256": {"model.safetensors": "0" * 64, "../model.onnx": "0" * 64}},
            "sha256.../model.onnx must be a 64-digit hex digest of a file in the model directory",
        ),
    ],
)
def test_every_field_is_checked_by_type_then_range(model_copy, capsys, changes, message):
    edit_meta(model_copy, **changes)
    cli_refuses(model_copy, capsys, str(model_copy / "model.json"), message)
