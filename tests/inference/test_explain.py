"""Grad-CAM (explain.py): checked on a data set whose answer is known, plus the pieces around it."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetcls.data.decode import decode_image
from resnetcls.errors import UserError
from resnetcls.inference.explain import Explainer, colorize, overlay_name, writable_dir
from resnetcls.inference.predictor import Predictor
from tests.conftest import run_cli

SIZE, PATCH = 64, 12
COLOURS = {"blue": (40, 60, 255), "green": (40, 255, 60), "red": (255, 50, 40)}


def patch_image(colour, rng: random.Random) -> tuple[Image.Image, tuple[int, int]]:
    """A noisy grey background, one bright square of the class colour at a random place; (image, x0, y0)."""
    noise = np.random.default_rng(rng.randrange(1 << 30)).integers(70, 150, (SIZE, SIZE, 3), dtype=np.uint8)
    x0, y0 = rng.randrange(0, SIZE - PATCH), rng.randrange(0, SIZE - PATCH)
    noise[y0 : y0 + PATCH, x0 : x0 + PATCH] = colour
    return Image.fromarray(noise), (x0, y0)


def write_patch_set(root: Path, per_class: int, seed: int) -> list[tuple[Path, tuple[int, int]]]:
    rng, written = random.Random(seed), []
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image, corner = patch_image(colour, rng)
            image.save(root / name / f"{i}.png")
            written.append((root / name / f"{i}.png", corner))
    return written


@pytest.fixture(scope="module")
def patch_model(tmp_path_factory):
    """A tiny ResNet-18 trained (fp32, CPU, seconds) on the patch colours; eval resize = image size, so the
    model's input crop is the whole 64 px image and patch coordinates need no mapping."""
    root = tmp_path_factory.mktemp("patches")
    write_patch_set(root / "train", 40, seed=1)
    result = run_cli(
        "train",
        root / "train",
        "--model",
        "resnet18",
        "--image-size",
        SIZE,
        "--batch-size",
        16,
        "--epochs",
        6,
        "--out",
        root / "run",
        "--set",
        "model.width=8",
        "--set",
        "model.stem=small",
        "--set",
        "data.num_workers=0",
        "--set",
        "data.augment=resize",
        "--set",
        "train.precision=fp32",
        "--set",
        f"data.resize_size={SIZE}",
        "--set",
        "optim.lr=0.005",
        "--set",
        "data.val_fraction=0.2",
    )
    assert result.returncode == 0, result.stderr
    return root


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_the_heatmap_peak_lies_on_the_patch_that_decides_the_class(patch_model, method):
    """Criterion: the peak of the map is inside the patch dilated by one layer4 cell (16 px with the small
    stem at 64 px) for at least 16 of 20 held-out images the model gets right; random peaks would land
    there about 40% of the time."""
    predictor = Predictor(patch_model / "run", precision="fp32")
    explainer = Explainer(predictor.model, predictor.loaded.preprocess, predictor.device, method=method)
    test = write_patch_set(patch_model / "test", 7, seed=99)[:20]
    cell, hits, right = SIZE // 4, 0, 0
    for path, (x0, y0) in test:
        image = predictor.transform(decode_image(path))
        heat, _, index = explainer.heatmap(image)
        right += predictor.classes[index] == path.parent.name
        y, x = np.unravel_index(np.argmax(heat), heat.shape)
        hits += x0 - cell <= x < x0 + PATCH + cell and y0 - cell <= y < y0 + PATCH + cell
    assert right >= 16, f"the tiny model learnt the colours poorly ({right}/20 right)"
    assert hits >= 16, f"{method}: peak on the patch for only {hits} of 20 images"


def test_explanations_do_not_depend_on_the_predictors_precision(patch_model):
    """The map is computed in fp32 even when the Predictor runs bf16 (autocast is switched off inside)."""
    image = Predictor(patch_model / "run").transform(decode_image(patch_model / "train" / "red" / "0.png"))
    maps = []
    for precision in ("fp32", "bf16"):
        predictor = Predictor(patch_model / "run", precision=precision)
        explainer = Explainer(predictor.model, predictor.loaded.preprocess, predictor.device)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as if called inside the predictor's autocast
            maps.append(explainer.heatmap(image)[0])
    assert np.allclose(maps[0], maps[1], atol=1e-5)


def test_overlay_is_the_models_crop_with_the_heat_over_it(patch_model):
    predictor = Predictor(patch_model / "run", precision="fp32")
    explainer = Explainer(predictor.model, predictor.loaded.preprocess, predictor.device, private_copy=True)
    photo = decode_image(patch_model / "train" / "green" / "3.png")
    explanation = explainer.explain(predictor.transform(photo))
    assert explanation.crop.shape == explanation.overlay().shape == (SIZE, SIZE, 3)
    assert np.abs(explanation.crop.astype(int) - np.asarray(photo)).max() <= 1  # un-normalised back
    assert explanation.side_by_side().shape == (SIZE, 2 * SIZE, 3)
    assert 0 <= explanation.prob <= 1 and explanation.heat.max() in (0.0, 1.0)


def test_colour_ramp_runs_from_blue_to_red():
    cold, hot = colorize(np.array(0.0)), colorize(np.array(1.0))
    assert cold[2] > cold[0] and hot[0] > hot[2]


def test_overlay_names_fit_any_file_system_and_differ_for_same_named_images_in_different_folders():
    assert overlay_name("a/cat.jpg") != overlay_name("b/cat.jpg")  # never one overlay for two inputs
    assert overlay_name("a/cat.jpg") == overlay_name("./a/cat.jpg")  # the same input: the same name every run
    assert overlay_name("a/cat.jpg").startswith("cat-") and overlay_name("a/cat.jpg").endswith(".gradcam.png")
    for stem in ("x" * 300, "é" * 300, "猫" * 300, "a" * 99 + "é"):
        name = overlay_name(f"photos/{stem}.jpg")
        assert len(name.encode("utf-8")) <= 125 and name.startswith(stem[:33])
        name.encode("utf-8")  # cut between characters, never inside one


def test_an_unwritable_folder_is_a_user_error_naming_the_flag(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match=r"^--explain .*file.*cannot write there"):
        writable_dir(blocker / "sub", "--explain")
