"""The auto recipe: the rules as a pure function, and `resnetcls train DATA` with and without recipe flags."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from resnetcls.config import Config, ExplicitSettings, build_config, explicit_settings
from resnetcls.config.schema import flatten
from resnetcls.engine import recipe
from resnetcls.engine.plan import Plan, TrainRequest, make_plan
from resnetcls.engine.recipe import (
    RULES,
    SMALL_DATA,
    DataFacts,
    choose_recipe,
    image_size_for,
    median_short_side,
    small_batch,
)
from resnetcls.engine.recipe_choice import recipe_blocker
from resnetcls.errors import UserError
from resnetcls.models import create_model, weights
from tests.conftest import ROOT, make_class_folders, run_cli


def FAST(speed):
    """A machine that trains `speed` images/s whatever the model."""
    return lambda name, width, size: speed


def facts(train: int, median: int | None = 224, val: int | None = None, classes: int = 12) -> DataFacts:
    return DataFacts(train, val if val is not None else train // 9, classes, median, 256)


SCRATCH = (
    "auto recipe: from scratch: no ImageNet weights for resnet18 in the cache "
    "(`resnetcls weights download resnet18` to fine-tune)"
)


def test_small_data_gets_the_small_data_recipe_and_about_50k_images_seen():
    choice = choose_recipe(facts(720), "cpu", FAST(1000.0))
    values = choice.config_values()
    assert (values["model.name"], values["model.width"], values["data.image_size"]) == ("resnet18", 64, 128)
    assert values["train.epochs"] == 69 and values["data.augment"] == "trivialaugment"
    assert (
        values["data.mixup"] == 0.2 and values["data.cutmix"] == 1.0 and values["data.random_erasing"] == 0.25
    )
    assert values["train.batch_size"] == 64 and values["ckpt.keep_last"] == 1
    line, weights = choice.lines()
    assert line.startswith(
        "auto recipe: from you: nothing; chosen: resnet18 width 64 at 128 px (720 train images in 12 "
        "classes: small data, median image 224 px); small-data recipe (trivialaugment, mixup 0.2, cutmix "
        "1.0, erasing 0.25, adamw lr 0.002); batch 64; 69 epochs ≈ "
    )
    assert line.endswith(
        "keeps the last and the best checkpoints only (ckpt.keep_last=1: small data) "
        "(--no-auto-recipe to turn it off)"
    )
    assert weights == SCRATCH


@pytest.mark.parametrize("train_images, epochs", [(100, 200), (720, 69), (4999, 10)])
def test_small_data_epochs_are_clamped(train_images, epochs):
    assert choose_recipe(facts(train_images), "cpu", FAST(1e6)).run["train.epochs"] == epochs


@pytest.mark.parametrize("median, size", [(500, 128), (128, 128), (100, 96), (70, 64), (40, 64), (None, 128)])
def test_small_images_lower_the_size_to_a_multiple_of_32_not_below_64(median, size):
    assert image_size_for(128, median) == size
    assert choose_recipe(facts(720, median), "cpu", FAST(1000.0)).run["data.image_size"] == size


def test_the_cap_lowers_the_epochs_says_so_and_never_goes_below_the_floor():
    # 800 + 100/3 images per epoch at 10 img/s: 83 s an epoch, 21 fit in 30 minutes (69 wanted).
    choice = choose_recipe(facts(800, val=100), "cpu", FAST(10.0))
    assert choice.run["train.epochs"] == 21 and choice.uncapped_epochs == 62
    first, _, second = choice.lines()
    assert "21 epochs (time cap) ≈ 29m" in first
    assert second.startswith("auto recipe: lowered to 21 epochs to stay within 30m00s on this CPU (62 epochs")
    assert "--epochs N" in second and "--time" in second
    slow = choose_recipe(facts(800, val=100), "cpu", FAST(0.1))
    assert slow.run["train.epochs"] == recipe.MIN_EPOCHS
    assert "lowered to 5 epochs, the floor, still over the 30m00s cap on this CPU" in slow.lines()[-1]


def test_larger_data_gets_resnet50_and_crop_flip_with_the_gpu_cap_on_a_gpu():
    gpu = choose_recipe(facts(50_000), "cuda", FAST(2000.0))
    assert (gpu.run["model.name"], gpu.run["data.image_size"], gpu.run["train.epochs"]) == (
        "resnet50",
        224,
        30,
    )
    assert gpu.cap_s == 4 * 3600 and "ckpt.keep_last" not in gpu.chosen
    assert gpu.run["data.augment"] == "crop_flip" and gpu.run["data.mixup"] == 0.0
    cpu = choose_recipe(facts(50_000), "cpu", FAST(2000.0))
    assert (cpu.run["model.name"], cpu.run["data.image_size"], cpu.cap_s) == ("resnet50", 160, 30 * 60)


def test_a_slow_cpu_gets_resnet34_for_larger_data_and_the_reason():
    speeds = {"resnet50": 10.0, "resnet34": 30.0}
    choice = choose_recipe(facts(50_000), "cpu", lambda name, width, size: speeds[name])
    assert choice.run["model.name"] == "resnet34" and choice.images_per_s == 30.0
    assert "; resnet50: 10 img/s, under 25 on this CPU)" in choice.lines()[0]


def test_with_a_time_budget_the_budget_chooses_the_epochs():
    choice = choose_recipe(facts(720), "cpu", FAST(1.0), budget_s=600)
    assert "train.epochs" not in choice.config_values()
    assert len(choice.lines()) == 2 and "epochs fitted to the --time 10m00s budget" in choice.lines()[0]


def test_a_given_key_is_kept_and_the_recipe_chooses_the_rest():
    choice = choose_recipe(facts(720), "cpu", FAST(1000.0), given={"data.image_size": 64})
    assert "data.image_size" not in choice.chosen and choice.run["data.image_size"] == 64
    assert choice.chosen["model.name"] == "resnet18" and choice.chosen["data.augment"] == "trivialaugment"
    assert choice.lines()[0].startswith(
        "auto recipe: from you: data.image_size=64; chosen: resnet18 width 64 (720 train images"
    )
    given_model = choose_recipe(facts(720), "cpu", FAST(1000.0), given={"model.name": "resnet34"})
    assert given_model.run["model.name"] == "resnet34" and given_model.chosen["train.epochs"] == 69
    assert given_model.chosen["data.mixup"] == 0.2 and "model.name" not in given_model.chosen


def test_nothing_is_measured_when_nothing_left_open_depends_on_the_speed():
    def no_measuring(*args):
        raise AssertionError("measured although the epochs were given")

    choice = choose_recipe(facts(720), "cpu", no_measuring, given={"train.epochs": 3})
    assert choice.images_per_s == 0 and "train.epochs" not in choice.chosen


@pytest.mark.parametrize(
    "train_images, batch", [(20, 8), (33, 8), (100, 16), (200, 32), (256, 64), (4000, 64)]
)
def test_small_data_halves_the_batch_to_at_least_4_steps_never_below_8(train_images, batch):
    assert small_batch(train_images, 64) == batch
    choice = choose_recipe(facts(train_images), "cpu", FAST(1e6))
    assert choice.run["train.batch_size"] == batch
    halved = f"{train_images} train images are under 4 batches of 64: halved to {batch}"
    assert (halved in choice.lines()[0]) == (batch != 64)


def test_cached_imagenet_weights_switch_the_recipe_to_fine_tuning():
    choice = choose_recipe(facts(720), "cpu", FAST(1000.0), has_weights=lambda arch: arch == "resnet18")
    values = choice.config_values()
    assert values["train.pretrained"] == "torchvision" and values["model.width"] == 64
    assert (values["optim.name"], values["optim.lr"], values["data.augment"]) == ("sgd", 0.01, "crop_flip")
    assert (
        values["data.image_size"] == 160 and values["train.epochs"] == 30 and values["train.batch_size"] == 32
    )
    assert choice.lines()[1].startswith("auto recipe: fine-tuning from ImageNet weights (cache) for resnet18")
    narrow = choose_recipe(
        facts(720), "cpu", FAST(1000.0), given={"model.width": 8}, has_weights=lambda arch: True
    )
    assert "train.pretrained" not in narrow.chosen
    assert (
        narrow.lines()[1] == "auto recipe: from scratch: ImageNet weights need width 64 (model.width=8 given)"
    )
    own_optimizer = choose_recipe(
        facts(720), "cpu", FAST(1000.0), given={"optim.name": "adamw"}, has_weights=lambda arch: True
    )
    assert "train.pretrained" not in own_optimizer.chosen
    assert own_optimizer.lines()[1] == (
        "auto recipe: from scratch: you chose optim.name (with ImageNet weights for resnet18 in the cache, "
        "--pretrained torchvision fine-tunes with them)"
    )


def test_only_the_off_switch_or_a_python_built_config_stops_the_auto_recipe():
    assert recipe_blocker(ExplicitSettings(), True) == ""
    assert recipe_blocker(ExplicitSettings("", frozenset({"model.name"})), True) == ""
    assert recipe_blocker(ExplicitSettings("my.yaml"), True) == ""
    assert recipe_blocker(ExplicitSettings(), False) == "train.auto_recipe=false"
    assert recipe_blocker(None, True)  # a Python caller with its own config


def test_the_packaged_small_data_yaml_holds_the_small_data_rule():
    preset = flatten(yaml.safe_load((ROOT / "src" / "resnetcls" / "configs" / "small-data.yaml").read_text()))
    small = RULES[0]
    assert {k: preset[k] for k in SMALL_DATA} == SMALL_DATA
    assert (preset["model.name"], preset["model.width"], preset["data.image_size"]) == (
        small.model,
        small.width,
        small.image_size,
    )


def test_median_short_side_reads_headers_and_skips_unreadable_files(tmp_path):
    paths = []
    for i, (w, h) in enumerate([(300, 200), (100, 400), (640, 480)]):
        Image.new("RGB", (w, h)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert median_short_side(paths + [str(tmp_path / "bad.jpg")]) == (200, 3)
    assert median_short_side([str(tmp_path / "bad.jpg")]) == (None, 0)


def test_wide_frames_are_squashed_whole_unless_the_user_chose_a_resize(tmp_path):
    paths = []
    for i, (w, h) in enumerate([(300, 100), (200, 100), (100, 400), (50, 50)]):
        Image.new("RGB", (w, h)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    wide = facts(720).with_aspect(paths)
    assert wide.median_aspect == 2.5  # the median of 3, 2, 4 and 1
    choice = choose_recipe(wide, "cpu", FAST(1000.0))
    assert choice.run["data.resize"] == "squash"
    assert "squash (median aspect ratio 2.50:1, over 1.5: the whole frame kept" in choice.lines()[0]
    mine = choose_recipe(wide, "cpu", FAST(1000.0), given={"data.resize": "letterbox"})
    assert mine.run["data.resize"] == "letterbox" and "data.resize" not in mine.config_values()
    square = choose_recipe(facts(720).with_aspect(paths[1:2] + paths[3:]), "cpu", FAST(1000.0))
    assert "data.resize" not in square.run and "squash" not in square.lines()[0]  # 1.5: crop stays


@pytest.fixture
def tiny_rules(monkeypatch):
    """The real rules at a test model's scale (width 8, 32 px), so a CLI run takes seconds on 2 cores."""
    monkeypatch.setattr(
        recipe,
        "RULES",
        tuple(dataclasses.replace(rule, width=8, image_size=32, cpu_image_size=32) for rule in RULES),
    )
    monkeypatch.setattr(recipe, "MIN_SIZE", 32)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_without_recipe_flags_picks_prints_records_and_a_resume_keeps_it(
    tiny_data, tmp_path, monkeypatch, tiny_rules
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # A 1-epoch cap keeps the test short; the measurement and everything else are real.
    monkeypatch.setattr(recipe, "CPU_CAP_S", 1e-3)
    monkeypatch.setattr(recipe, "MIN_EPOCHS", 1)
    run = tmp_path / "run"
    args = ["--device", "cpu", "--set", "data.num_workers=0", "--set", "log.tensorboard=false", "--out", run]
    result = run_cli("train", tiny_data, *args)
    assert result.returncode == 0, result.stderr
    assert (
        "auto recipe: from you: nothing; chosen: resnet18 width 8 at 32 px (33 train images in 3 classes: "
        "small data, median image 40 px); small-data recipe (trivialaugment" in result.stderr
    )
    assert (
        "auto recipe: lowered to 1 epochs, the floor, still over the 0.001s cap on this CPU" in result.stderr
    )
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["name"] == "resnet18" and saved["model"]["width"] == 8
    assert saved["data"]["image_size"] == 32 and saved["data"]["augment"] == "trivialaugment"
    assert saved["train"]["epochs"] == 1 and saved["data"]["mixup"] == 0.2
    [rec] = [r for r in records(run) if r["kind"] == "recipe"]
    assert rec["rule"] == "small data" and rec["values"]["model.name"] == "resnet18" and rec["classes"] == 3
    assert (
        rec["median_short_side"] == 40
        and rec["images_per_s"] > 0
        and rec["reasons"][0].startswith("auto recipe")
    )

    def no_measuring(*args, **kwargs):
        raise AssertionError("a resumed run measured the machine again")

    monkeypatch.setattr(recipe, "measure_images_per_s", no_measuring)
    again = run_cli("train", tiny_data, *args, "--resume", "auto")
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr and "auto recipe" not in again.stderr
    assert yaml.safe_load((run / "config.yaml").read_text())["model"] == saved["model"]


def test_one_flag_keeps_the_recipe_on_the_command_line(tiny_data, tmp_path, monkeypatch, tiny_rules):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    run = tmp_path / "run"
    tiny = ["--set", "data.num_workers=0", "--set", "log.tensorboard=false", "--device", "cpu"]
    result = run_cli("train", tiny_data, "--epochs", "1", *tiny, "--out", run)
    assert result.returncode == 0, result.stderr
    assert (
        "auto recipe: from you: train.epochs=1; chosen: resnet18 width 8 at 32 px (33 train" in result.stderr
    )
    assert SCRATCH in result.stderr
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 1 and saved["data"]["augment"] == "trivialaugment"
    assert saved["train"]["batch_size"] == 8 and saved["ckpt"]["keep_last"] == 1


def no_measuring(*args, **kwargs):
    raise AssertionError("measured although nothing left open depends on the speed")


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache: no ImageNet weights unless a test puts a file there."""
    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def speed_100(monkeypatch):
    """Every model trains 100 images/s here, so the lines are exact."""
    monkeypatch.setattr(recipe, "measure_images_per_s", lambda *args: 100.0)


def plan_for(data: Path, out: Path, *settings: str, config: str | None = None, **flags) -> Plan:
    """The plan of `resnetcls train DATA [--config FILE] --set ... --FLAG ...` on the CPU (flags as their
    config keys)."""
    keys = {"data.train": str(data), "train.device": "cpu", **flags}
    settings = ("data.num_workers=0", "log.tensorboard=false", *settings)
    cfg = build_config(config, settings, keys)
    return make_plan(TrainRequest(cfg, out, explicit=explicit_settings(config, settings, keys)))


def test_image_size_64_keeps_the_recipe_and_its_line_lists_what_came_from_you(
    tiny_data, tmp_path, torch_home, speed_100
):
    plan = plan_for(tiny_data, tmp_path / "run", **{"data.image_size": 64})
    cfg = plan.cfg
    assert (cfg.model.name, cfg.model.width, cfg.data.image_size) == ("resnet18", 64, 64)
    assert (cfg.data.augment, cfg.data.mixup, cfg.optim.name) == ("trivialaugment", 0.2, "adamw")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.ckpt.keep_last) == (200, 8, 1)
    assert not cfg.train.pretrained
    assert plan.decision("recipe").lines == [
        "auto recipe: from you: data.image_size=64; chosen: resnet18 width 64 (33 train images in 3 classes: "
        "small data, median image 40 px); small-data recipe (trivialaugment, mixup 0.2, cutmix 1.0, erasing "
        "0.25, adamw lr 0.002); batch 8 (33 train images are under 4 batches of 64: halved to 8, the floor; "
        "the incomplete last batch is dropped, never a batch of 1 for BatchNorm); 200 epochs ≈ 1m08s at 100 "
        "img/s measured; keeps the last and the best checkpoints only (ckpt.keep_last=1: small data) "
        "(--no-auto-recipe to turn it off)",
        SCRATCH,
    ]
    assert plan.decision("dropped") is None  # 1 of 33 images
    assert not (tmp_path / "run").exists()


def test_a_config_files_keys_are_kept_and_the_recipe_fills_the_rest(
    tiny_data, tmp_path, torch_home, monkeypatch
):
    monkeypatch.setattr(recipe, "measure_images_per_s", no_measuring)  # the epochs are the file's
    preset = tmp_path / "mine.yaml"
    preset.write_text("data: {augment: crop_flip}\ntrain: {epochs: 3}\n")
    plan = plan_for(tiny_data, tmp_path / "run", config=str(preset))
    assert (plan.cfg.data.augment, plan.cfg.train.epochs) == ("crop_flip", 3)
    assert (plan.cfg.data.mixup, plan.cfg.model.name, plan.cfg.data.image_size) == (0.2, "resnet18", 64)
    first = plan.decision("recipe").lines[0]
    assert first.startswith(
        f"auto recipe: from you (with --config {preset}): data.augment=crop_flip, train.epochs=3; "
        "chosen: resnet18 width 64 at 64 px (33 train images in 3 classes: small data, median image 40 px); "
        "small-data recipe (crop_flip, mixup 0.2, cutmix 1.0, erasing 0.25, adamw lr 0.002); batch 8 ("
    )


def test_auto_recipe_false_gives_the_plain_config_and_says_so(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(recipe, "measure_images_per_s", no_measuring)
    plan = plan_for(tiny_data, tmp_path / "run", "train.auto_recipe=false", **{"data.image_size": 64})
    plain = Config()
    assert (plan.cfg.model, plan.cfg.optim, plan.cfg.ckpt) == (plain.model, plain.optim, plain.ckpt)
    assert (plan.cfg.train.epochs, plan.cfg.train.batch_size, plan.cfg.data.augment) == (
        plain.train.epochs,
        plain.train.batch_size,
        plain.data.augment,
    )
    assert plan.decision("recipe").lines == [
        "auto recipe: off (--no-auto-recipe, train.auto_recipe=false): the config as given, nothing chosen "
        "from the data"
    ]


COLOURS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}


def test_twenty_images_get_a_batch_of_8_and_no_batch_of_1_with_the_lines(tmp_path, torch_home, speed_100):
    data = make_class_folders(tmp_path / "train", dict(list(COLOURS.items())[:2]), per_class=10)
    val = make_class_folders(tmp_path / "val", dict(list(COLOURS.items())[:2]), per_class=2)
    plan = plan_for(data, tmp_path / "run", **{"data.val": str(val)})
    assert len(plan.splits.train) == 20 and plan.cfg.train.batch_size == 8 and plan.cfg.ckpt.keep_last == 1
    assert (
        "batch 8 (20 train images are under 4 batches of 64: halved to 8, the floor; the incomplete last "
        "batch is dropped, never a batch of 1 for BatchNorm)" in plan.decision("recipe").lines[0]
    )
    assert plan.decision("dropped").lines == [
        "note: each epoch leaves out 4 of 20 train images (20%): the incomplete last batch of --batch-size 8 "
        "is dropped (other images each epoch when the order is shuffled); a --batch-size that divides the "
        "images drops fewer"
    ]


def test_a_dropped_last_batch_over_a_tenth_is_said_with_the_recipe_off_too(tmp_path, monkeypatch):
    data = make_class_folders(tmp_path / "train", COLOURS, per_class=18)
    val = make_class_folders(tmp_path / "val", COLOURS, per_class=2)
    plan = plan_for(data, tmp_path / "run", "train.auto_recipe=false", **{"data.val": str(val)})
    assert len(plan.splits.train) == 54 and plan.cfg.train.batch_size == 32
    assert (
        plan.decision("dropped")
        .lines[0]
        .startswith("note: each epoch leaves out 22 of 54 train images (41%)")
    )


def test_imagenet_weights_in_the_cache_switch_the_recipe_to_fine_tuning(
    tiny_data, tmp_path, torch_home, speed_100
):
    cached = weights.cached_path("resnet18")
    assert str(cached).startswith(str(torch_home))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"stands for the weights: the plan loads nothing")
    plan = plan_for(tiny_data, tmp_path / "run")
    cfg = plan.cfg
    assert (cfg.train.pretrained, cfg.model.name, cfg.model.width) == ("torchvision", "resnet18", 64)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.nesterov, cfg.data.augment) == (
        "sgd",
        0.01,
        True,
        "crop_flip",
    )
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.data.image_size) == (30, 8, 64)
    assert plan.decision("recipe").lines[1] == (
        "auto recipe: fine-tuning from ImageNet weights (cache) for resnet18 (train.pretrained=torchvision, "
        "configs/finetune.yaml's values)"
    )


def test_time_budget_alone_lets_the_recipe_pick_the_model_and_the_budget_the_epochs(
    tiny_data, tmp_path, tiny_rules
):
    run = tmp_path / "run"
    result = run_cli(
        "train",
        tiny_data,
        "--time",
        "2s",
        "--set",
        "train.race_share=0",  # no race (tests/engine/test_race.py): the budget's epochs for the choice
        "--device",
        "cpu",
        "--set",
        "data.num_workers=0",
        "--set",
        "log.tensorboard=false",
        "--out",
        run,
    )
    assert result.returncode == 0, result.stderr
    assert "auto recipe: from you: nothing; chosen: resnet18 width 8 at 32 px" in result.stderr
    assert "epochs fitted to the --time 2s budget" in result.stderr and "time budget 2s:" in result.stderr
    saved = yaml.safe_load((run / "config.yaml").read_text())
    budget = [r for r in records(run) if r["kind"] == "time_budget"][0]
    assert saved["model"]["width"] == 8 and saved["train"]["epochs"] == budget["epochs"]


def test_weights_named_by_pretrained_get_the_fine_tuning_values_and_keep_their_model(
    tiny_data, tmp_path, monkeypatch, speed_100
):
    monkeypatch.delenv("RESNETCLS_OFFLINE")
    monkeypatch.setattr(weights, "can_download", lambda *a: pytest.fail("checked the network"))
    own = tmp_path / "mine.pt"
    torch.save(create_model("resnet50", 5, width=8).state_dict(), own)
    plan = plan_for(tiny_data, tmp_path / "run", **{"train.pretrained": str(own), "model.width": 8})
    cfg = plan.cfg
    assert (cfg.train.pretrained, cfg.model.name, cfg.model.width) == (str(own), "resnet50", 8)
    assert (cfg.optim.name, cfg.optim.lr, cfg.data.augment, cfg.train.epochs) == (
        "sgd",
        0.01,
        "crop_flip",
        30,
    )
    lines = plan.decision("recipe").lines
    assert f"from you: model.name=resnet50, model.width=8, train.pretrained={own};" in lines[0]
    assert lines[1] == (
        f"auto recipe: fine-tuning from your weights (train.pretrained={own}; configs/finetune.yaml's values "
        "for the rest; yours kept: model.width=8)"
    )


@pytest.fixture
def online(monkeypatch, torch_home, speed_100) -> list[str]:
    """download.pytorch.org answers; download(arch) records arch and returns a file standing for the
    weights (the plan loads nothing)."""
    monkeypatch.delenv("RESNETCLS_OFFLINE")
    monkeypatch.setattr(weights, "can_download", lambda *a: True)
    fetched: list[str] = []

    def download(arch, *args):
        fetched.append(arch)
        return torch_home / f"{arch}.pth", True

    monkeypatch.setattr(weights, "download", download)
    return fetched


def test_online_without_cached_weights_downloads_the_picked_depth_once_and_fine_tunes(
    tiny_data, tmp_path, online
):
    plan = plan_for(tiny_data, tmp_path / "run")
    assert online == ["resnet18"]
    assert (plan.cfg.train.pretrained, plan.cfg.model.name, plan.cfg.optim.name) == (
        "torchvision",
        "resnet18",
        "sgd",
    )
    assert plan.decision("recipe").lines[1] == (
        "auto recipe: fine-tuning from ImageNet weights (downloaded now) for resnet18 "
        "(train.pretrained=torchvision, configs/finetune.yaml's values)"
    )


def test_a_failed_download_trains_from_scratch_and_says_why(tiny_data, tmp_path, online, monkeypatch):
    def fails(arch, *args):
        raise UserError(f"ImageNet weights for {arch}: download of URL failed (timed out); on a machine ...")

    monkeypatch.setattr(weights, "download", fails)
    plan = plan_for(tiny_data, tmp_path / "run")
    assert (plan.cfg.train.pretrained, plan.cfg.optim.name) == ("", "adamw")
    assert plan.decision("recipe").lines[1] == (
        "auto recipe: from scratch: no ImageNet weights for resnet18 in the cache, download of URL failed "
        "(timed out) (`resnetcls weights download resnet18` to fine-tune)"
    )


def test_offline_trains_from_scratch_and_says_offline(tiny_data, tmp_path, online, monkeypatch):
    monkeypatch.setattr(weights, "can_download", lambda *a: False)
    plan = plan_for(tiny_data, tmp_path / "run")
    assert online == [] and plan.cfg.train.pretrained == "" and plan.cfg.optim.name == "adamw"
    assert plan.decision("recipe").lines[1] == (
        "auto recipe: from scratch: no ImageNet weights for resnet18 in the cache, offline: "
        "download.pytorch.org did not answer; set RESNETCLS_OFFLINE=1 to skip this check "
        "(`resnetcls weights download resnet18` to fine-tune)"
    )


@pytest.mark.parametrize("setting", ["RESNETCLS_OFFLINE=1", "train.auto_recipe=false"])
def test_resnetcls_offline_or_the_recipe_off_never_checks_the_network(
    tiny_data, tmp_path, online, monkeypatch, setting
):
    monkeypatch.setattr(weights, "can_download", lambda *a: pytest.fail("checked the network"))
    if setting == "RESNETCLS_OFFLINE=1":
        monkeypatch.setenv("RESNETCLS_OFFLINE", "1")
    plan = plan_for(tiny_data, tmp_path / "run", *([setting] if "=false" in setting else []))
    assert online == [] and plan.cfg.train.pretrained == ""
    if setting == "RESNETCLS_OFFLINE=1":
        assert plan.decision("recipe").lines[1] == SCRATCH


def test_a_planted_10_to_1_set_gets_the_balanced_sampler_said_and_the_users_own_choice_is_kept(
    tmp_path, torch_home, speed_100
):
    data = make_class_folders(tmp_path / "train", {"blue": COLOURS["blue"]}, per_class=20)
    make_class_folders(data, {"green": COLOURS["green"]}, per_class=2)
    val = make_class_folders(tmp_path / "val", dict(list(COLOURS.items())[:2]), per_class=2)
    plan = plan_for(data, tmp_path / "run", **{"data.val": str(val)})
    made = plan.decision("recipe")
    assert plan.cfg.data.sampler == "balanced" and plan.cfg.loss.class_weights == "none"
    assert made.chosen["data.sampler"] == "balanced" and made.record["imbalance"] == 10.0
    assert (
        "; the balanced sampler, each class drawn equally often (data.sampler=balanced: the largest training "
        "class has 10.0x the images of the smallest, over 3) (--no-auto-recipe" in made.lines[0]
    )
    for setting, sampler, class_weights in (
        ("data.sampler=shuffle", "shuffle", "none"),
        ("loss.class_weights=balanced", "shuffle", "balanced"),
    ):
        mine = plan_for(data, tmp_path / "run", setting, **{"data.val": str(val)})
        assert (mine.cfg.data.sampler, mine.cfg.loss.class_weights) == (sampler, class_weights)
        assert not mine.decision("recipe").chosen.keys() & {"data.sampler", "loss.class_weights"}
        assert "balanced" not in mine.decision("recipe").lines[0]  # nothing said beyond the usual line
    off = plan_for(data, tmp_path / "run", "train.auto_recipe=false", **{"data.val": str(val)})
    assert off.cfg.data.sampler == "shuffle"  # the recipe off: the config as given
