"""The benchmark's backends: a verified export in the model folder is reused, a tampered one is refused with
its reason, a backend this CPU cannot run is named with why, and --backends is checked."""

import json
import shutil

import pytest

from resnetcls.errors import UserError
from resnetcls.export import bench_backends
from resnetcls.export.bench_backends import BackendFiles, Unavailable, build_runner, parse_backends
from resnetcls.records.modelfile import load_model_dir
from tests.conftest import run_cli


def test_a_verified_export_is_reused_and_a_tampered_one_refused(tiny_run, tiny_data, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_run / "best", model)
    assert run_cli("export", model, "--to", "torchscript", "--check-data", tiny_data).returncode == 0
    files = BackendFiles(load_model_dir(model, "cpu"), tmp_path)
    assert files.file("torchscript") == (model / "model.torchscript.pt", "model folder")

    out = tmp_path / "bench.json"
    args = ("--backends", "torchscript", "--runs", "1", "--images", "4", "--json", out)
    with open(model / "model.torchscript.pt", "ab") as f:
        f.write(b"tampered")
    result = run_cli("benchmark", model, tiny_data, *args)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["status"] == "refused" and row["p50_ms"] is None
    assert "model.torchscript.pt: sha256 does not match model.json" in row["reason"]
    assert "refused: " in result.stdout and "sha256 does not match" in result.stdout


def test_bf16_backends_are_not_available_without_native_bf16(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_backends, "cpu_has_fast_bf16", lambda: False)
    files = BackendFiles(load_model_dir(tiny_run, "cpu"), tmp_path, device="cpu")
    for backend in ("torch-bf16", "openvino-bf16"):
        with pytest.raises(Unavailable, match="no native bf16"):
            build_runner(files, backend)
    assert list(tmp_path.iterdir()) == []  # nothing exported for a backend that cannot run


def test_parse_backends():
    assert parse_backends(None) == list(bench_backends.BACKENDS)
    assert parse_backends("torchscript, torch-fp32,torchscript") == ["torchscript", "torch-fp32"]
    with pytest.raises(UserError, match="expected names among"):
        parse_backends("onnx")
