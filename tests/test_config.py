"""The config tree: defaults <- YAML <- --set <- flags; unknown keys and wrong types are exit 2 naming the
key."""

import json

import pytest

from resnetcls.config import (
    ExplicitSettings,
    build_config,
    config_to_dict,
    explicit_settings,
    result_affecting_changes,
)
from resnetcls.errors import UserError
from tests.conftest import TINY, run_cli


def test_precedence_defaults_then_file_then_set_then_flags(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 0.5\n  name: sgd\ntrain:\n  epochs: 7\n")
    cfg = build_config(
        recipe, ["optim.lr=0.25", "train.batch_size=12"], {"optim.lr": 0.125, "model.name": None}
    )
    assert (cfg.optim.lr, cfg.optim.name, cfg.train.epochs, cfg.train.batch_size) == (0.125, "sgd", 7, 12)
    assert cfg.model.name == "resnet50"  # a flag left out (None) does not override


def test_set_values_are_typed():
    cfg = build_config(
        overrides=[
            "train.channels_last=false",
            "optim.weight_decay=1e-4",
            "data.mean=[0.5,0.5,0.5]",
            "sched.warmup_epochs=2",
        ]
    )
    assert cfg.train.channels_last is False and cfg.optim.weight_decay == 1e-4
    assert cfg.data.mean == [0.5, 0.5, 0.5] and cfg.sched.warmup_epochs == 2.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=0.1", "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
        ("train.epoch=3", "did you mean 'train.epochs'?"),
        ("train.epochs=many", "config key 'train.epochs' expects int, got 'many'"),
        ("train.channels_last=3", "config key 'train.channels_last' expects bool, got 3"),
    ],
)
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
    assert result.stderr.strip() == (
        "resnetcls: error: --set: unknown config key 'loss.label_smothing'; "
        "did you mean 'loss.label_smoothing'?"
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", ["seed", "default", "finetune"])
def test_recipes_load(name):
    cfg = build_config(name)
    assert cfg.model.name == "resnet50"


def test_cli_unknown_recipe_name_exits_2_listing_the_packaged_ones(tiny_data, tmp_path):
    result = run_cli("train", tiny_data, "--config", "nosuch", "--out", tmp_path / "r")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "resnetcls: error: --config nosuch: no such file, and not a packaged recipe; packaged recipes: "
        "default, finetune, lifelong-coil100, lifelong-coil100-classes, lifelong-synth, "
        "lifelong-synth-classes, seed, serve, small-data"
    )
    assert not (tmp_path / "r").exists()


def test_cli_reads_a_packaged_recipe_by_name(tmp_path):
    result = run_cli("serve", tmp_path / "no-model", "--config", "serve", "--set", "serve.port=-1")
    assert result.returncode == 2 and "serve.port" in result.stderr  # the recipe was read, then --set


def test_small_data_recipe_loads():
    cfg = build_config("small-data")
    assert (cfg.model.name, cfg.model.width, cfg.data.image_size, cfg.data.augment) == (
        "resnet18",
        64,
        128,
        "trivialaugment",
    )


def test_explicit_settings_name_the_config_file_and_every_key_given_by_set_or_a_flag():
    given = explicit_settings(
        "my.yaml",
        ["optim.lr=0.1", " data.mixup = 0.2"],
        {"data.train": "d", "model.name": None, "train.epochs": 3},
    )
    assert given == ExplicitSettings(
        "my.yaml", frozenset({"optim.lr", "data.mixup", "data.train", "train.epochs"})
    )
    assert explicit_settings() == ExplicitSettings()


def test_the_auto_recipe_is_on_by_default_and_switches_off_with_false_or_off():
    assert build_config().train.auto_recipe is True
    assert build_config(overrides=["train.auto_recipe=off"]).train.auto_recipe is False
    with pytest.raises(UserError, match=r"'train.auto_recipe' expects bool, got 'sometimes'"):
        build_config(overrides=["train.auto_recipe=sometimes"])


def test_result_affecting_changes_ignore_logging_workers_and_path_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = config_to_dict(build_config(flags={"data.train": str(tmp_path / "data")}))
    same = build_config(
        overrides=["data.num_workers=0", "log.tensorboard=false", "ckpt.keep_last=9"],
        flags={"data.train": "data"},
    )
    assert result_affecting_changes(saved, same) == []
    changed = build_config(
        overrides=["train.batch_size=8"], flags={"data.train": "data", "model.name": "resnet18"}
    )
    assert result_affecting_changes(saved, changed) == [
        "model.name: 'resnet50' -> 'resnet18'",
        "train.batch_size: 32 -> 8",
    ]


def test_a_yaml_number_is_a_budget_in_seconds(tmp_path):
    (tmp_path / "r.yaml").write_text("train:\n  time_budget: 90\n  patience: 3\n")
    cfg = build_config(str(tmp_path / "r.yaml"))
    assert (cfg.train.time_budget, cfg.train.patience) == ("90", 3)


def test_a_checkpoint_from_before_a_key_existed_resumes_as_that_keys_default():
    saved = config_to_dict(build_config())
    del saved["train"]["patience"], saved["train"]["time_budget"]
    assert result_affecting_changes(saved, build_config()) == []
    assert result_affecting_changes(saved, build_config(overrides=["train.patience=3"])) == [
        "train.patience: 0 -> 3"
    ]


def test_train_amp_in_a_yaml_or_a_set_is_read_as_train_precision_with_a_note(tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text("train:\n  amp: fp32\n")
    assert build_config(str(old)).train.precision == "fp32"
    assert capsys.readouterr().err == (
        f"train.amp is now train.precision; {old}: read as train.precision (write train.precision there)\n"
    )
    assert build_config(overrides=["train.amp=bf16"]).train.precision == "bf16"
    assert capsys.readouterr().err.startswith("train.amp is now train.precision; --set: read as")
    assert explicit_settings(None, ["train.amp=fp16"]).keys == {"train.precision"}
    with pytest.raises(UserError, match=r"train.precision='fp64': expected one of auto, bf16, fp16, fp32"):
        build_config(overrides=["train.precision=fp64"])


def test_a_saved_config_with_train_amp_compares_as_train_precision():
    saved = config_to_dict(build_config(overrides=["train.precision=fp32"]))
    saved["train"]["amp"] = saved["train"].pop("precision")
    assert result_affecting_changes(saved, build_config(overrides=["train.precision=fp32"])) == []
    assert result_affecting_changes(saved, build_config()) == ["train.precision: 'fp32' -> 'auto'"]


def test_a_run_written_with_train_amp_resumes(tiny_data, tmp_path):
    out = tmp_path / "run"
    first = run_cli("train", tiny_data, *TINY, "--epochs", "1", "--set", "train.amp=fp32", "--out", out)
    assert first.returncode == 0, first.stderr
    assert "train.amp is now train.precision; --set: read as train.precision" in first.stderr
    saved = (out / "config.yaml").read_text()
    assert "  precision: fp32" in saved and "amp:" not in saved
    # The run as an older resnetcls wrote it: train.amp in config.yaml and in the checkpoint's description.
    (out / "config.yaml").write_text(saved.replace("  precision: fp32", "  amp: fp32"))
    for path in (out / "checkpoints").glob("step-*.json"):
        meta = json.loads(path.read_text())
        meta["config"]["train"]["amp"] = meta["config"]["train"].pop("precision")
        path.write_text(json.dumps(meta))
    refused = run_cli("train", "--resume", out, "--epochs", "2", "--out", out)
    assert "settings that change the result (train.epochs: 1 -> 2);" in refused.stderr  # precision unchanged
    resumed = run_cli("train", "--resume", out, "--epochs", "2", "--out", out, "--force")
    assert resumed.returncode == 0, resumed.stderr
    assert "precision" not in resumed.stderr and "train.amp" not in resumed.stderr
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs if e.get("kind") == "epoch"] == [1, 2]


def test_resnetcls_set_is_applied_after_set_and_flags_with_a_note(capsys):
    cfg = build_config(
        None,
        ["train.epochs=5", "optim.lr=0.25"],
        {"train.epochs": 3, "model.name": "resnet34"},
        environment=["train.epochs=1", "model.width=8"],
    )
    assert (cfg.train.epochs, cfg.model.width, cfg.optim.lr, cfg.model.name) == (1, 8, 0.25, "resnet34")
    assert capsys.readouterr().err == (
        "note: RESNETCLS_SET: train.epochs=1 model.width=8 (from the environment, over the command line)\n"
    )
    build_config(None, ["train.epochs=5"])
    assert capsys.readouterr().err == ""  # no note without it


@pytest.mark.parametrize(
    "pair, message",
    [
        ("train.epoch=1", "RESNETCLS_SET: unknown config key 'train.epoch'; did you mean 'train.epochs'?"),
        ("train.epochs=many", "RESNETCLS_SET: config key 'train.epochs' expects int, got 'many'"),
    ],
)
def test_a_bad_resnetcls_set_key_or_value_is_checked_as_set_is_and_names_the_variable(pair, message):
    with pytest.raises(UserError) as caught:
        build_config(environment=[pair])
    assert str(caught.value) == message


def test_resnetcls_set_keys_are_explicit_settings_the_auto_recipe_keeps():
    explicit = explicit_settings(
        None, ["optim.lr=0.1"], {"model.name": None}, ["train.epochs=1", "train.amp=fp32"]
    )
    assert explicit.keys == {"optim.lr", "train.epochs", "train.precision"}


def test_cli_train_applies_resnetcls_set_over_its_flags_and_says_so(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETCLS_SET", "train.epochs=1 optim.lr=0.02")
    result = run_cli("train", tiny_data, *TINY, "--epochs", "3", "--lr", "0.5", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    note = "note: RESNETCLS_SET: train.epochs=1 optim.lr=0.02 (from the environment, over the command line)"
    assert result.stderr.splitlines().count(note) == 1
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "epochs: 1\n" in saved and "lr: 0.02\n" in saved


def test_cli_bad_resnetcls_set_key_exits_2_with_one_line(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETCLS_SET", "train.epochs=1 model.widht=8")
    for command in (["train", tiny_data, *TINY], ["lr-find", tiny_data], ["tune", tiny_data]):
        result = run_cli(*command, "--out", tmp_path / "out")
        assert result.returncode == 2
        assert result.stderr == (
            "resnetcls: error: RESNETCLS_SET: unknown config key 'model.widht'; did you mean 'model.width'?\n"
        ), command
        assert not (tmp_path / "out").exists()
