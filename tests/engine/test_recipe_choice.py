"""engine/recipe_choice.py: the lines a user reads about the auto recipe's choice say what came from them,
what was chosen and why, and the metrics.jsonl record keeps both."""

from __future__ import annotations

from pathlib import Path

from resnetcls.engine.recipe import RULES, SMALL_DATA
from resnetcls.engine.recipe_choice import (
    BALANCE,
    IMBALANCED,
    DataFacts,
    ImageNetWeights,
    RecipeChoice,
    class_balance,
    class_imbalance,
    fine_tune,
)
from resnetcls.models import weights

FACTS = DataFacts(train_images=40, val_images=5, classes=2, median_short_side=None, headers_read=0)


def small_choice(chosen: dict, given: dict, **fields) -> RecipeChoice:
    run = {
        "model.name": "resnet18",
        "model.width": 64,
        "data.image_size": 128,
        **SMALL_DATA,
        **chosen,
        **given,
    }
    return RecipeChoice(RULES[0], chosen, run, given, FACTS, "cpu", 1800.0, 64, **fields)


def test_the_line_lists_what_came_from_you_and_only_what_was_chosen():
    choice = small_choice(
        {"train.batch_size": 8, "ckpt.keep_last": 1},
        {"model.name": "resnet34", "train.epochs": 3},
        config_file="mine.yaml",
        weights_line="auto recipe: from scratch: no ImageNet weights",
    )
    first, weights = choice.lines()
    assert first == (
        "auto recipe: from you (with --config mine.yaml): model.name=resnet34, train.epochs=3; chosen: "
        "batch 8 (40 train images are under 4 batches of 64: halved to 8, the floor; the incomplete last "
        "batch is dropped, never a batch of 1 for BatchNorm); keeps the last and the best checkpoints only "
        "(ckpt.keep_last=1: small data) (--no-auto-recipe to turn it off)"
    )
    assert weights == "auto recipe: from scratch: no ImageNet weights"


def test_a_capped_choice_adds_the_cap_line_and_the_record_keeps_given_and_chosen():
    choice = small_choice(
        {"train.epochs": 5, "data.augment": "trivialaugment"},
        {},
        uncapped_epochs=50,
        images_per_s=10.0,
        epoch_s=4.0,
    )
    first, cap = choice.lines()
    assert first == (
        "auto recipe: from you: nothing; chosen: small-data recipe (trivialaugment, mixup 0.2, cutmix 1.0, "
        "erasing 0.25, adamw lr 0.002); 5 epochs (time cap) ≈ 20s at 10 img/s measured "
        "(--no-auto-recipe to turn it off)"
    )  # nothing about the model: it was not chosen
    assert cap.startswith("auto recipe: lowered to 5 epochs to stay within 30m00s on this CPU (50 epochs")
    record = choice.record()
    assert record["values"] == {"train.epochs": 5, "data.augment": "trivialaugment"} and record["given"] == {}
    assert record["recipe"] == "small-data" and record["reasons"] == [first, cap]


def test_fine_tuning_is_named_by_the_recipe():
    choice = small_choice({"train.pretrained": "torchvision", "model.name": "resnet18"}, {})
    assert choice.recipe == "finetune"
    assert "resnet18 (40 train images in 2 classes: small data, sizes unread)" in choice.lines()[0]


def test_imagenet_weights_checks_the_network_once_and_downloads_only_when_asked(monkeypatch, tmp_path):
    monkeypatch.delenv("RESNETCLS_OFFLINE")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checks, fetched = [], []
    monkeypatch.setattr(weights, "can_download", lambda *a: checks.append(1) or True)
    monkeypatch.setattr(weights, "download", lambda arch, *a: fetched.append(arch) or (Path(arch), True))
    found = ImageNetWeights()
    assert fine_tune("resnet50", {}, found, fetch=False)[0] and fetched == []  # could: nothing downloaded
    tune, line = fine_tune("resnet34", {}, found)
    assert tune and fetched == ["resnet34"] and checks == [1]
    assert line.startswith("auto recipe: fine-tuning from ImageNet weights (downloaded now) for resnet34")
    assert fine_tune("resnet34", {"optim.name": "adamw"}, found)[0] is False and fetched == ["resnet34"]


def test_named_weights_fine_tune_and_the_line_says_what_of_yours_is_kept():
    tune, line = fine_tune("resnet18", {"train.pretrained": "w.pt", "optim.name": "adamw"}, lambda arch: None)
    assert tune and line == (
        "auto recipe: fine-tuning from your weights (train.pretrained=w.pt; configs/finetune.yaml's values "
        "for the rest; yours kept: optim.name=adamw)"
    )
    assert fine_tune("resnet18", {"train.pretrained": ""}, lambda arch: True) == (False, "")


def test_the_class_imbalance_is_the_largest_class_over_the_smallest_present():
    assert class_imbalance([0] * 30 + [1] * 3 + [2] * 6) == 10.0
    assert class_imbalance([0, 1, 2, 0, 1, 2]) == 1.0
    assert class_imbalance([4, 4, 4]) == 1.0 and class_imbalance([]) == 1.0  # one class, or none
    assert small_choice({}, {}).record()["imbalance"] == 1.0  # the recipe record keeps the facts


def test_over_an_imbalance_of_3_the_class_balance_is_turned_on_unless_the_user_chose_one():
    skewed = DataFacts(40, 5, 2, None, 0, imbalance=10.0)
    assert class_balance(skewed, {}) == {"data.sampler": "balanced"} == BALANCE
    assert (
        class_balance(DataFacts(40, 5, 2, None, 0, imbalance=IMBALANCED), {}) == {}
    )  # at the limit: not over
    for mine in ({"data.sampler": "shuffle"}, {"loss.class_weights": "none"}, {"data.sampler": "balanced"}):
        assert class_balance(skewed, mine) == {}


def test_the_line_says_the_class_balance_chosen_and_not_the_users_own():
    choice = small_choice({"data.sampler": "balanced"}, {})
    choice.facts = DataFacts(40, 5, 2, None, 0, imbalance=10.0)
    assert choice.lines()[0] == (
        "auto recipe: from you: nothing; chosen: the balanced sampler, each class drawn equally often "
        "(data.sampler=balanced: the largest training class has 10.0x the images of the smallest, over "
        "3) (--no-auto-recipe to turn it off)"
    )
    assert choice.record()["values"] == {"data.sampler": "balanced"}
    mine = small_choice({"train.batch_size": 8}, {"data.sampler": "balanced", "train.epochs": 3})
    assert "from you: train.epochs=3; chosen: batch 8" in mine.lines()[0]  # as before: no balance said
    assert "balanced" not in mine.lines()[0]
