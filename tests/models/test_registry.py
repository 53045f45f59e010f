"""The model registry: names, parameter counts and MACs (`resnetcls models`), and unknown names."""

import pytest

from resnetcls.models import create_model, model_info
from tests.conftest import run_cli
from tests.models.test_resnet import DEPTHS


def test_resnet50_has_the_published_parameter_count():
    assert sum(p.numel() for p in create_model("resnet50", 1000).parameters()) == 25_557_032


def test_resnet50_macs_at_224_match_the_paper():
    assert model_info("resnet50", 224).macs / 1e9 == pytest.approx(4.1, abs=0.05)


def test_models_command_lists_every_depth_with_params_and_gmacs():
    result = run_cli("models", "--image-size", "224")
    assert result.returncode == 0, result.stderr
    line = next(row for row in result.stdout.splitlines() if row.startswith("resnet50 "))
    assert "25,557,032" in line and "4.09" in line
    for name in DEPTHS:
        assert name in result.stdout


def test_unknown_model_name_is_a_one_line_error(tiny_data, tmp_path):
    result = run_cli("train", tiny_data, "--model", "resnet51", "--out", tmp_path / "r")
    assert result.returncode == 2
    assert "unknown model 'resnet51'" in result.stderr and "Traceback" not in result.stderr
