"""Range, choice and duration checks: a bad value is one error naming the key, its value and the range."""

import pytest

from resnetcls.config import build_config, parse_duration
from resnetcls.errors import UserError
from tests.conftest import run_cli


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.std=[0,0,0]", "config key data.std=[0, 0, 0]: each must be between 0.001 and 10"),
        ("data.mean=[.nan,0.4,0.4]", "config key data.mean=[nan, 0.4, 0.4] must be finite (no NaN or Inf)"),
        ("data.std=[0.2,0.2]", "config key data.std=[0.2, 0.2] must be three numbers (R, G, B)"),
        ("data.std=[true,0.2,0.2]", "config key data.std=[True, 0.2, 0.2] must be three numbers"),
        ("optim.lr=.inf", "config key 'optim.lr' must be a finite number, got inf"),
        ("optim.lr=0", "config key optim.lr=0.0: must be in (0, 10]"),
        ("train.batch_size=0", "config key train.batch_size=0: must be in [1, 65536]"),
        ("train.epochs=-3", "config key train.epochs=-3: must be in [1, 1000000]"),
        ("train.seed=-1", "config key train.seed=-1: must be in [0, 4294967295]"),
        ("data.num_workers=-5", "config key data.num_workers=-5: must be in [-1, 256]"),
        ("data.image_size=1000000", "config key data.image_size=1000000: must be in [8, 4096]"),
        ("data.resize_size=4", "config key data.resize_size=4: must be 0 (automatic) or in [8, 4096]"),
        ("model.width=4096", "config key model.width=4096: must be in [1, 256]"),
        ("model.width=true", "config key 'model.width' expects int, got True"),
        ("data.interpolation=[bilinear]", "config key 'data.interpolation' expects str, got ['bilinear']"),
        (
            "data.interpolation=lanczos",
            "config key data.interpolation='lanczos': expected one of nearest, bilinear",
        ),
        ("train.nonfinite=ignore", "config key train.nonfinite='ignore': expected one of stop, skip"),
        ("log.on_tracker_error=retry", "config key log.on_tracker_error='retry': expected one of stop, warn"),
        ("log.mlflow_uri=[http://u:pw@h]", "config key 'log.mlflow_uri' expects str, got ['http://u:***@h']"),
        ("loss.label_smoothing=1.0", "config key loss.label_smoothing=1.0: must be in [0, 1)"),
        (
            "data.augment=autoaugment",
            "config key data.augment='autoaugment': expected one of crop_flip, resize, "
            "trivialaugment, randaugment",
        ),
        ("data.random_erasing=1.5", "config key data.random_erasing=1.5: must be in [0, 1]"),
        ("data.mixup=-0.2", "config key data.mixup=-0.2: must be in [0, 100]"),
        ("data.cutmix=.nan", "config key 'data.cutmix' must be a finite number"),
        ("data.progressive=1", "config key data.progressive=1.0: must be in [0, 1)"),
        ("data.progressive=-0.5", "config key data.progressive=-0.5: must be in [0, 1)"),
        ("train.patience=-1", "config key train.patience=-1: must be in [0, 1000000]"),
        (
            "train.time_budget=abc",
            "config key train.time_budget='abc': expected a duration such as 90s, 20m or 1.5h",
        ),
        ("train.time_budget=-5m", "config key train.time_budget='-5m': expected a duration"),
        (
            "eval.open_set=on",
            "config key eval.open_set='on': expected one of auto, msp, energy, mahalanobis, knn, off",
        ),
        ("eval.open_set_accept=0", "config key eval.open_set_accept=0.0: must be in (0, 1]"),
        ("eval.open_set_accept=1.5", "config key eval.open_set_accept=1.5: must be in (0, 1]"),
    ],
)
def test_config_values_are_range_checked_naming_the_key(override, message):
    with pytest.raises(UserError) as e:
        build_config(overrides=[override])
    assert message in str(e.value)


def test_a_bad_range_stops_training_before_anything_is_written(tiny_data, tmp_path):
    result = run_cli("train", tiny_data, "--set", "data.std=[0,0,0]", "--out", tmp_path / "r")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "resnetcls: error: config key data.std=[0, 0, 0]: each must be between 0.001 and 10"
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args, flag, message",
    [
        (["predict", "M", "x.jpg", "--topk", "-1"], "--topk", "must be at least 1, got -1"),
        (
            ["predict", "M", "x.jpg", "--batch-size", "0"],
            "--batch-size",
            "must be between 1 and 65536, got 0",
        ),
        (["eval", "M", "D", "--batch-size", "0"], "--batch-size", "must be between 1 and 65536, got 0"),
        (["train", "D", "--epochs", "0"], "--epochs", "must be at least 1, got 0"),
        (["train", "D", "--lr", "-0.1"], "--lr", "must be between 0 and 10, got -0.1"),
        (["train", "D", "--lr", "nan"], "--lr", "must be between 0 and 10, got nan"),
        (["train", "D", "--image-size", "100000"], "--image-size", "must be between 8 and 4096"),
        (["train", "D", "--batch-size", "two"], "--batch-size", "expected an integer, got 'two'"),
        (["serve", "M", "--port", "70000"], "--port", "must be between 1 and 65535"),
        (["serve", "M", "--workers", "0"], "--workers", "must be between 1 and 256"),
        (["serve", "M", "--max-body-mb", "0"], "--max-body-mb", "must be greater than 0"),
        (["data", "synth", "out", "--classes", "1"], "--classes", "must be between 2 and 10000"),
        (["models", "--image-size", "0"], "--image-size", "must be between 8 and 4096"),
    ],
)
def test_numeric_flags_are_range_checked_with_exit_2_naming_the_flag(args, flag, message, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: argument {flag}: {message}" in result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("90s", 90),
        ("20m", 1200),
        ("1.5h", 5400),
        ("45", 45),
        (" 2M ", 120),
        ("", 0),
        ("0", 0),
        ("0s", 0),
        (".5h", 1800),
    ],
)
def test_time_budgets_read_as_a_user_types_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["abc", "20 minutes", "-1m", "1h30m", "inf", "2d"])
def test_unreadable_time_budgets_are_refused(text):
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


def test_progressive_resizing_is_off_by_default_and_takes_a_fraction():
    assert build_config().data.progressive == 0.0
    assert build_config(overrides=["data.progressive=0.5"]).data.progressive == 0.5


def test_open_set_takes_every_score_auto_and_the_word_off():
    from resnetcls.config.checks import OPEN_SET_CHOICES
    from resnetcls.utils.openset import SCORES

    assert OPEN_SET_CHOICES == ("auto", *SCORES, "off")
    assert build_config(overrides=["eval.open_set=off"]).eval.open_set == "off"  # YAML reads off as false
    assert build_config(overrides=["eval.open_set=mahalanobis"]).eval.open_set == "mahalanobis"
    assert build_config().eval.open_set == "auto" and build_config().eval.open_set_accept == 0.95


def test_serve_open_set_takes_the_words_on_and_off_unquoted(tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text("serve:\n  open_set: off\n")
    assert build_config(config).serve.open_set == "off"
    assert build_config(overrides=["serve.open_set=on"]).serve.open_set == "on"
