"""The config tree: defaults <- YAML <- --set <- flags; unknown keys and wrong types are exit 2 naming the key."""

import pytest

from resnetcls.config import build_config, config_to_dict, parse_duration, result_affecting_changes
from resnetcls.errors import UserError
from tests.conftest import ROOT, run_cli


def test_precedence_defaults_then_file_then_set_then_flags(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 0.5\n  name: sgd\ntrain:\n  epochs: 7\n")
    cfg = build_config(recipe, ["optim.lr=0.25", "train.batch_size=12"], {"optim.lr": 0.125, "model.name": None})
    assert (cfg.optim.lr, cfg.optim.name, cfg.train.epochs, cfg.train.batch_size) == (0.125, "sgd", 7, 12)
    assert cfg.model.name == "resnet50"  # a flag left out (None) does not override


def test_set_values_are_typed():
    cfg = build_config(overrides=["train.channels_last=false", "optim.weight_decay=1e-4", "data.mean=[0.5,0.5,0.5]",
                                  "sched.warmup_epochs=2"])
    assert cfg.train.channels_last is False and cfg.optim.weight_decay == 1e-4
    assert cfg.data.mean == [0.5, 0.5, 0.5] and cfg.sched.warmup_epochs == 2.0


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=0.1", "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
    ("train.epoch=3", "did you mean 'train.epochs'?"),
    ("train.epochs=many", "config key 'train.epochs' expects int, got 'many'"),
    ("train.channels_last=3", "config key 'train.channels_last' expects bool, got 3"),
])
def test_bad_set_is_a_user_error_naming_the_key(override, message):
    with pytest.raises(UserError, match=message.replace("?", r"\?").replace("[", r"\[")):
        build_config(overrides=[override])


def test_unknown_key_in_yaml_names_the_file_and_the_closest_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(UserError, match=rf"{recipe}: unknown config key 'optim.learning_rate'"):
        build_config(recipe)


def test_cli_bad_key_exits_2_with_one_line(tiny_data, tmp_path):
    result = run_cli("train", tiny_data, "--set", "loss.label_smothing=0.2", "--out", tmp_path / "r")
    assert result.returncode == 2
    assert result.stderr.strip() == ("resnetcls: error: --set: unknown config key 'loss.label_smothing'; "
                                     "did you mean 'loss.label_smoothing'?")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", ["seed", "default", "finetune"])
def test_recipes_load(name):
    cfg = build_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.model.name == "resnet50"


def test_seed_recipe_is_the_write_ups():
    cfg = build_config(ROOT / "configs" / "seed.yaml")
    assert (cfg.optim.name, cfg.loss.name, cfg.data.augment, cfg.model.stride_on_1x1) == ("adam", "bce", "resize", True)
    assert cfg.ckpt.keep_last == 10


def test_default_recipe_is_modern():
    cfg = build_config(ROOT / "configs" / "default.yaml")
    assert cfg.loss.label_smoothing > 0 and cfg.data.augment == "crop_flip" and cfg.sched.name == "cosine"
    assert cfg.sched.warmup_epochs > 0 and cfg.optim.decay_norm_and_bias is False and cfg.train.amp == "auto"


def test_result_affecting_changes_ignore_logging_workers_and_path_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = config_to_dict(build_config(flags={"data.train": str(tmp_path / "data")}))
    same = build_config(overrides=["data.num_workers=0", "log.tensorboard=false", "ckpt.keep_last=9"],
                        flags={"data.train": "data"})
    assert result_affecting_changes(saved, same) == []
    changed = build_config(overrides=["train.batch_size=8"], flags={"data.train": "data", "model.name": "resnet18"})
    assert result_affecting_changes(saved, changed) == ["model.name: 'resnet50' -> 'resnet18'",
                                                        "train.batch_size: 32 -> 8"]


@pytest.mark.parametrize("override, message", [
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
    ("data.interpolation=lanczos", "config key data.interpolation='lanczos': expected one of nearest, bilinear"),
    ("train.nonfinite=ignore", "config key train.nonfinite='ignore': expected one of stop, skip"),
    ("loss.label_smoothing=1.0", "config key loss.label_smoothing=1.0: must be in [0, 1)"),
    ("data.augment=autoaugment", "config key data.augment='autoaugment': expected one of crop_flip, resize, "
                                 "trivialaugment, randaugment"),
    ("data.random_erasing=1.5", "config key data.random_erasing=1.5: must be in [0, 1]"),
    ("data.mixup=-0.2", "config key data.mixup=-0.2: must be in [0, 100]"),
    ("data.cutmix=.nan", "config key 'data.cutmix' must be a finite number"),
    ("train.patience=-1", "config key train.patience=-1: must be in [0, 1000000]"),
    ("train.time_budget=abc", "config key train.time_budget='abc': expected a duration such as 90s, 20m or 1.5h"),
    ("train.time_budget=-5m", "config key train.time_budget='-5m': expected a duration"),
])
def test_config_values_are_range_checked_naming_the_key(override, message):
    with pytest.raises(UserError) as e:
        build_config(overrides=[override])
    assert message in str(e.value)


def test_a_bad_range_stops_training_before_anything_is_written(tiny_data, tmp_path):
    result = run_cli("train", tiny_data, "--set", "data.std=[0,0,0]", "--out", tmp_path / "r")
    assert result.returncode == 2
    assert result.stderr.strip() == ("resnetcls: error: config key data.std=[0, 0, 0]: each must be between "
                                     "0.001 and 10")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, flag, message", [
    (["predict", "M", "x.jpg", "--topk", "-1"], "--topk", "must be at least 1, got -1"),
    (["predict", "M", "x.jpg", "--batch-size", "0"], "--batch-size", "must be between 1 and 65536, got 0"),
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
])
def test_numeric_flags_are_range_checked_with_exit_2_naming_the_flag(args, flag, message, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: argument {flag}: {message}" in result.stderr
    assert not list(tmp_path.iterdir())


def test_augmentation_keys_default_off_and_accept_their_values():
    assert (build_config().data.random_erasing, build_config().data.mixup, build_config().data.cutmix) == (0, 0, 0)
    d = build_config(overrides=["data.augment=trivialaugment", "data.random_erasing=0.25", "data.mixup=0.2",
                                "data.cutmix=1.0"]).data
    assert (d.augment, d.random_erasing, d.mixup, d.cutmix) == ("trivialaugment", 0.25, 0.2, 1.0)
@pytest.mark.parametrize("text, seconds", [("90s", 90), ("20m", 1200), ("1.5h", 5400), ("45", 45), (" 2M ", 120),
                                           ("", 0), ("0", 0), ("0s", 0), (".5h", 1800)])
def test_time_budgets_read_as_a_user_types_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["abc", "20 minutes", "-1m", "1h30m", "inf", "2d"])
def test_unreadable_time_budgets_are_refused(text):
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


def test_a_yaml_number_is_a_budget_in_seconds(tmp_path):
    (tmp_path / "r.yaml").write_text("train:\n  time_budget: 90\n  patience: 3\n")
    cfg = build_config(str(tmp_path / "r.yaml"))
    assert (cfg.train.time_budget, cfg.train.patience) == ("90", 3)


def test_a_checkpoint_from_before_a_key_existed_resumes_as_that_keys_default():
    saved = config_to_dict(build_config())
    del saved["train"]["patience"], saved["train"]["time_budget"]
    assert result_affecting_changes(saved, build_config()) == []
    assert result_affecting_changes(saved, build_config(overrides=["train.patience=3"])) == [
        "train.patience: 0 -> 3"]
