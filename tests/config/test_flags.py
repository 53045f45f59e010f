"""The flag table: every row sets a real config key, names map to keys, "auto" is train's alone, and an
unknown name is an error that names it and lists the known ones."""

import pytest

from resnetcls.config import Config, set_value
from resnetcls.config.flags import FLAGS, KINDS, check_names, flag_doc, flag_settings, flags_of
from resnetcls.errors import UserError


def test_every_flag_sets_a_config_key_that_exists():
    for flag in FLAGS:
        assert flag.kind in KINDS and flag.help and flag.commands
        set_value(Config(), flag.key, getattr_key(Config(), flag.key))  # an unknown key would raise
    assert len({flag.name for flag in FLAGS}) == len(FLAGS) and len({flag.key for flag in FLAGS}) == len(
        FLAGS
    )


def getattr_key(cfg, key):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def test_the_training_commands_share_the_recipe_flags():
    names = {command: [flag.name for flag in flags_of(command)] for command in ("train", "tune", "lifelong")}
    assert names["train"] == [
        "val",
        "model",
        "epochs",
        "time",
        "batch_size",
        "image_size",
        "lr",
        "auto_recipe",
        "device",
        "seed",
        "pretrained",
        "precision",
        "unknown",
        "teacher",
    ]
    assert "time" not in names["tune"]  # tune's --time is the study's own
    assert {"model", "epochs", "batch_size", "lr", "precision", "strategy", "buffer_size"} <= set(
        names["lifelong"]
    )
    assert [flag.name for flag in flags_of("lr-find")] == [
        "val",
        "model",
        "batch_size",
        "image_size",
        "device",
        "seed",
        "pretrained",
        "precision",
    ]


def test_names_map_to_their_config_keys_and_auto_is_left_to_the_recipe(tmp_path):
    settings = flag_settings(
        {"val": tmp_path, "epochs": 3, "batch_size": "auto", "lr": 0.1, "precision": "fp32", "seed": None}
    )
    assert settings == {
        "data.val": str(tmp_path),
        "train.epochs": 3,
        "train.batch_size": None,
        "optim.lr": 0.1,
        "train.precision": "fp32",
        "train.seed": None,
    }
    assert flag_settings({"strategy": "ewc", "buffer_size": 0}, "lifelong") == {
        "lifelong.strategy": "ewc",
        "lifelong.buffer_size": 0,
    }
    assert flag_settings({"unknown": tmp_path}) == {"eval.open_set_unknown": str(tmp_path)}
    with pytest.raises(UserError, match=r"^--lr auto: not in tune \(only train picks it; give a value\)$"):
        flag_settings({"lr": "auto"}, "tune")


def test_an_unknown_name_is_named_with_the_known_ones():
    with pytest.raises(UserError) as caught:
        flag_settings({"epoch": 3})
    assert str(caught.value).startswith(
        "train: unknown keyword 'epoch'; the known ones are val, model, epochs"
    )
    with pytest.raises(UserError, match="unknown keyword 'strategy'"):
        flag_settings({"strategy": "ewc"}, "train")  # lifelong's, not train's
    with pytest.raises(UserError, match="the known ones are data, out, val"):
        check_names(["nope"], "train", ("data", "out"))
    check_names(["data", "epochs"], "train", ("data",))


def test_the_docstring_lines_name_every_flag_and_its_key():
    text = flag_doc("train")
    for flag in flags_of("train"):
        assert f"    {flag.name}: " in text and f"[{flag.key}]" in text.replace("\n        ", " ")
    assert "90% of it" in text and all(len(line) <= 110 for line in text.splitlines())
