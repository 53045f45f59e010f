"""The config tree's defaults and the shipped recipes."""

from resnetcls.config import build_config, config_to_dict, dump_yaml


def test_seed_recipe_is_the_write_ups():
    cfg = build_config("seed")
    assert (cfg.optim.name, cfg.loss.name, cfg.data.augment, cfg.model.stride_on_1x1) == (
        "adam",
        "bce",
        "resize",
        True,
    )
    assert cfg.ckpt.keep_last == 10


def test_default_recipe_is_modern():
    cfg = build_config("default")
    assert cfg.loss.label_smoothing > 0 and cfg.data.augment == "crop_flip" and cfg.sched.name == "cosine"
    assert (
        cfg.sched.warmup_epochs > 0
        and cfg.optim.decay_norm_and_bias is False
        and cfg.train.precision == "auto"
    )


def test_augmentation_keys_default_off_and_accept_their_values():
    assert (build_config().data.random_erasing, build_config().data.mixup, build_config().data.cutmix) == (
        0,
        0,
        0,
    )
    d = build_config(
        overrides=[
            "data.augment=trivialaugment",
            "data.random_erasing=0.25",
            "data.mixup=0.2",
            "data.cutmix=1.0",
        ]
    ).data
    assert (d.augment, d.random_erasing, d.mixup, d.cutmix) == ("trivialaugment", 0.25, 0.2, 1.0)


def test_the_recorded_config_masks_passwords_and_the_live_one_keeps_them():
    cfg = build_config(overrides=["log.mlflow_uri=https://me:S3cret@mlflow.example.org"])
    assert cfg.log.mlflow_uri == "https://me:S3cret@mlflow.example.org"  # what the client connects with
    assert config_to_dict(cfg)["log"]["mlflow_uri"] == "https://me:***@mlflow.example.org"
    assert "S3cret" not in dump_yaml(cfg)
    assert (cfg.log.share_paths, cfg.log.on_tracker_error) == (False, "stop")
