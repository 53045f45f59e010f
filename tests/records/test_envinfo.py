"""`resnetcls env`: the facts a user pastes into a bug report, for people and for programs."""

import json
import os
import subprocess
import sys

import torch

from resnetcls import __version__
from resnetcls.records.envinfo import machine_line, provenance
from resnetcls.utils.hardware import cpu_has_fast_bf16, precision_name, resolve_amp
from tests.conftest import run_cli


def test_env_text_names_versions_cpu_precision_cache_and_packages():
    result = run_cli("env")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert (
        f"resnetcls {__version__}" in text and f"torch {torch.__version__}" in text and "torchvision" in text
    )
    assert "CPU: " in text and "cores: " in text and "avx512_bf16" in text and "amx_bf16" in text
    assert f"native bf16: {'yes' if cpu_has_fast_bf16() else 'no'}" in text
    expected = precision_name(resolve_amp("auto", torch.device("cpu")))
    assert f"precision: train {expected} + channels_last, predict {expected} + channels_last" in text
    assert "with an exported model.onnx: " in text
    assert f"cache: {os.environ['RESNETCLS_CACHE']}" in text and "GB free" in text
    assert "limit 50 GB unless a run sets data.cache_max_gb" in text  # the default size limit, and its key
    assert "CUDA devices:" in text and "onnxruntime" in text


def test_env_json_is_for_programs():
    result = run_cli("env", "--format", "json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["torch"] == str(torch.__version__) and info["cpu"]["native_bf16"] == cpu_has_fast_bf16()
    assert info["cpu"]["usable_cores"] >= 1 and set(info["cpu"]["flags"]) >= {
        "avx2",
        "avx512_bf16",
        "amx_bf16",
    }
    assert info["precision"]["cpu"]["train"].split(" + ")[0] in ("bf16", "fp32")
    assert info["cuda_devices"] == [] or all(
        "memory_gb" in d and "precision" in d for d in info["cuda_devices"]
    )
    assert info["cache"]["dir"] == os.environ["RESNETCLS_CACHE"] and info["packages"]["onnxruntime"]
    assert info["cache"]["max_gb"] == 50


def test_python_m_env_on_a_cpu_capped_below_bf16_picks_fp32():
    # ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN emulate bf16, as on an AVX2-only CPU: auto must then be fp32.
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    result = subprocess.run(
        [sys.executable, "-m", "resnetcls", "env", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["cpu"]["native_bf16"] is False and info["cpu"]["onednn_max_cpu_isa"] == "AVX2"
    assert info["precision"]["cpu"] == {
        "train": "fp32 + channels_last",
        "predict": "fp32 + channels_last",
        "predict_exported": "onnxruntime fp32",
    }


def test_machine_line_names_what_a_benchmark_figure_depends_on():
    line = machine_line()
    assert (
        "cores" in line
        and "native bf16: " in line
        and f"torch {torch.__version__}" in line
        and "GPU: " in line
    )


def test_the_recorded_command_line_has_its_passwords_masked(monkeypatch):
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "/opt/venv/bin/resnetcls",
            "tune",
            "photos",
            "--storage",
            "postgresql+psycopg://tuner:S3cretPW@db:5432/tune",
            "--set",
            "log.mlflow_uri=https://me:pw@mlflow.example.org",
        ],
    )
    command = provenance()["command"]
    assert command == (
        "resnetcls tune photos --storage 'postgresql+psycopg://tuner:***@db:5432/tune' "
        "--set 'log.mlflow_uri=https://me:***@mlflow.example.org'"
    )
