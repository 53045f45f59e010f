"""The search space: the default is valid, a YAML file replaces it, each mistake is a line naming the key."""

from __future__ import annotations

import optuna
import pytest

from resnetcls.errors import UserError
from resnetcls.tune.space import DEFAULT_SPACE, load_space, suggest, without_fixed

from ..conftest import run_cli


def test_default_space_covers_the_issue_keys_and_samples_valid_values():
    space = load_space(None)
    assert {
        "optim.lr",
        "optim.weight_decay",
        "loss.label_smoothing",
        "data.min_crop_scale",
        "data.image_size",
        "model.name",
    } <= set(space)
    assert space["optim.lr"]["log"] is True
    params = suggest(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask(), space)
    assert set(params) == set(DEFAULT_SPACE)
    assert 1e-4 <= params["optim.lr"] <= 3e-2 and params["model.name"] in ("resnet18", "resnet34", "resnet50")


def test_a_space_file_replaces_the_default_and_flags_fix_keys(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "optim.lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}\n"
        "train.epochs: {type: int, low: 1, high: 3}\n"
        "data.augment: {type: categorical, choices: [crop_flip, trivialaugment]}\n"
    )
    space = load_space(path)
    assert list(space) == ["optim.lr", "train.epochs", "data.augment"]
    left, fixed = without_fixed(space, {"train.epochs", "model.name"})
    assert list(left) == ["optim.lr", "data.augment"] and fixed == ["train.epochs"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("optim.lrr: {type: float, low: 0.001, high: 0.1}\n", "optim.lrr"),
        ("optim.lr: {type: float, low: 0.001, hihg: 0.1}\n", "optim.lr: unknown field 'hihg'"),
        ("optim.lr: {type: gaussian}\n", "optim.lr: expected a mapping with type float, int or categorical"),
        ("optim.lr: {type: float, low: a, high: 0.1}\n", "optim.lr: low must be a number"),
        ("optim.lr: {type: float, low: 0.0, high: 0.1, log: true}\n", "optim.lr: log: true needs low > 0"),
        ("data.image_size: {type: categorical, choices: [big, 64]}\n", "data.image_size"),
        ("[1, 2]\n", "a search space is a non-empty mapping"),
    ],
)
def test_bad_space_is_one_line_naming_the_key(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=None) as e:
        load_space(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_bad_space_on_the_command_line_exits_2(tmp_path, tiny_data):
    path = tmp_path / "space.yaml"
    path.write_text("optim.lr: {type: float, low: 0.001, hihg: 0.1}\n")
    result = run_cli("tune", tiny_data, "--out", tmp_path / "t", "--trials", "1", "--space", path)
    assert result.returncode == 2
    assert "optim.lr: unknown field 'hihg'" in result.stderr and "Traceback" not in result.stderr


def test_auto_values_are_refused_by_tune(tmp_path, tiny_data):
    result = run_cli("tune", tiny_data, "--out", tmp_path / "t", "--lr", "auto")
    assert result.returncode == 2 and "--lr auto: not in tune" in result.stderr
