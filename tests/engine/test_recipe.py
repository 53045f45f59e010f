"""The auto recipe: the rules as a pure function, and `resnetcls train DATA` with and without recipe flags."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from resnetcls.config import ExplicitSettings
from resnetcls.config.schema import flatten
from resnetcls.engine import recipe
from resnetcls.engine.recipe import (
    RULES,
    SMALL_DATA,
    DataFacts,
    choose_recipe,
    image_size_for,
    median_short_side,
    recipe_blocker,
)
from tests.conftest import ROOT, run_cli


def FAST(speed):
    """A machine that trains `speed` images/s whatever the model."""
    return lambda name, width, size: speed


def facts(train: int, median: int | None = 224, val: int | None = None, classes: int = 12) -> DataFacts:
    return DataFacts(train, val if val is not None else train // 9, classes, median, 256)


def test_small_data_gets_the_small_data_recipe_and_about_50k_images_seen():
    choice = choose_recipe(facts(720), "cpu", FAST(1000.0))
    values = choice.config_values()
    assert (values["model.name"], values["model.width"], values["data.image_size"]) == ("resnet18", 64, 128)
    assert values["train.epochs"] == 69 and values["data.augment"] == "trivialaugment"
    assert (
        values["data.mixup"] == 0.2 and values["data.cutmix"] == 1.0 and values["data.random_erasing"] == 0.25
    )
    [line] = choice.lines()
    assert line.startswith(
        "auto recipe: resnet18 width 64 at 128 px, small-data augmentation (trivialaugment, "
        "mixup 0.2, cutmix 1.0, erasing 0.25), 69 epochs ≈ "
    )
    assert "720 train images in 12 classes (small data), median image 224 px" in line
    assert "--model/--image-size/--epochs or --config" in line and "train.auto_recipe=false" in line


@pytest.mark.parametrize("train_images, epochs", [(100, 200), (720, 69), (4999, 10)])
def test_small_data_epochs_are_clamped(train_images, epochs):
    assert choose_recipe(facts(train_images), "cpu", FAST(1e6)).epochs == epochs


@pytest.mark.parametrize("median, size", [(500, 128), (128, 128), (100, 96), (70, 64), (40, 64), (None, 128)])
def test_small_images_lower_the_size_to_a_multiple_of_32_not_below_64(median, size):
    assert image_size_for(128, median) == size
    assert choose_recipe(facts(720, median), "cpu", FAST(1000.0)).image_size == size


def test_the_cap_lowers_the_epochs_says_so_and_never_goes_below_the_floor():
    # 800 + 100/3 images per epoch at 10 img/s: 83 s an epoch, 21 fit in 30 minutes (69 wanted).
    choice = choose_recipe(facts(800, val=100), "cpu", FAST(10.0))
    assert choice.epochs == 21 and choice.uncapped_epochs == 62
    first, second = choice.lines()
    assert "21 epochs ≈ 29m" in first
    assert second.startswith("auto recipe: lowered to 21 epochs to stay within 30m00s on this CPU (62 epochs")
    assert "--epochs N" in second and "--time" in second
    slow = choose_recipe(facts(800, val=100), "cpu", FAST(0.1))
    assert slow.epochs == recipe.MIN_EPOCHS
    assert "lowered to 5 epochs, the floor, still over the 30m00s cap on this CPU" in slow.lines()[1]


def test_larger_data_gets_resnet50_and_crop_flip_with_the_gpu_cap_on_a_gpu():
    gpu = choose_recipe(facts(50_000), "cuda", FAST(2000.0))
    assert (gpu.model, gpu.image_size, gpu.epochs, gpu.cap_s) == ("resnet50", 224, 30, 4 * 3600)
    assert gpu.values["data.augment"] == "crop_flip" and gpu.values["data.mixup"] == 0.0
    cpu = choose_recipe(facts(50_000), "cpu", FAST(2000.0))
    assert (cpu.model, cpu.image_size, cpu.cap_s) == ("resnet50", 160, 30 * 60)


def test_a_slow_cpu_gets_resnet34_for_larger_data_and_the_reason():
    speeds = {"resnet50": 10.0, "resnet34": 30.0}
    choice = choose_recipe(facts(50_000), "cpu", lambda name, width, size: speeds[name])
    assert choice.model == "resnet34" and choice.images_per_s == 30.0
    assert "(resnet50: 10 img/s, under 25 on this CPU)" in choice.lines()[0]


def test_with_a_time_budget_the_budget_chooses_the_epochs():
    choice = choose_recipe(facts(720), "cpu", FAST(1.0), budget_s=600)
    assert "train.epochs" not in choice.config_values()
    assert len(choice.lines()) == 1 and "epochs fitted to the --time 10m00s budget" in choice.lines()[0]


def test_any_recipe_choice_config_file_or_off_switch_stops_the_auto_recipe():
    assert recipe_blocker(ExplicitSettings(), True) == ""
    assert (
        recipe_blocker(
            ExplicitSettings("", frozenset({"data.train", "train.seed", "train.time_budget"})), True
        )
        == ""
    )
    assert recipe_blocker(ExplicitSettings("", frozenset({"model.name"})), True) == "model.name given"
    assert recipe_blocker(ExplicitSettings("", frozenset({"data.mixup"})), True) == "data.mixup given"
    assert recipe_blocker(ExplicitSettings("my.yaml"), True) == "--config my.yaml"
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
    # A 1-epoch cap keeps the test short; the measurement and everything else are real.
    monkeypatch.setattr(recipe, "CPU_CAP_S", 1e-3)
    monkeypatch.setattr(recipe, "MIN_EPOCHS", 1)
    run = tmp_path / "run"
    args = ["--device", "cpu", "--set", "data.num_workers=0", "--set", "log.tensorboard=false", "--out", run]
    result = run_cli("train", tiny_data, *args)
    assert result.returncode == 0, result.stderr
    assert "auto recipe: resnet18 width 8 at 32 px, small-data augmentation (trivialaugment" in result.stderr
    assert "33 train images in 3 classes (small data), median image 40 px" in result.stderr
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


def test_any_recipe_flag_or_config_turns_the_auto_recipe_off(tiny_data, tmp_path, monkeypatch):
    def no_measuring(*args, **kwargs):
        raise AssertionError("measured although the user chose the recipe")

    monkeypatch.setattr(recipe, "measure_images_per_s", no_measuring)
    tiny = ["--set", "data.num_workers=0", "--set", "log.tensorboard=false"]
    flagged = run_cli(
        "train",
        tiny_data,
        "--model",
        "resnet18",
        "--set",
        "model.width=8",
        "--image-size",
        "32",
        "--epochs",
        "1",
        *tiny,
        "--out",
        tmp_path / "a",
    )
    assert flagged.returncode == 0, flagged.stderr
    assert "auto recipe" not in flagged.stderr
    preset = tmp_path / "tiny.yaml"
    preset.write_text("model: {name: resnet18, width: 8}\ndata: {image_size: 32}\ntrain: {epochs: 1}\n")
    configured = run_cli("train", tiny_data, "--config", preset, *tiny, "--out", tmp_path / "b")
    assert configured.returncode == 0, configured.stderr
    assert "auto recipe" not in configured.stderr
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["model"]["width"] == 8


def test_time_budget_alone_lets_the_recipe_pick_the_model_and_the_budget_the_epochs(
    tiny_data, tmp_path, tiny_rules
):
    run = tmp_path / "run"
    result = run_cli(
        "train",
        tiny_data,
        "--time",
        "2s",
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
    assert "auto recipe: resnet18 width 8 at 32 px" in result.stderr
    assert "epochs fitted to the --time 2s budget" in result.stderr and "time budget 2s:" in result.stderr
    saved = yaml.safe_load((run / "config.yaml").read_text())
    budget = [r for r in records(run) if r["kind"] == "time_budget"][0]
    assert saved["model"]["width"] == 8 and saved["train"]["epochs"] == budget["epochs"]
