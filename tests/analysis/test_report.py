"""report.html: written after training and by `resnetcls report`, self-contained, renders in Chromium."""

import json
import re
import shutil
import subprocess

import pytest
from PIL import Image, ImageStat

from resnetcls.cli import main

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def test_training_writes_a_self_contained_report(tiny_run):
    page = (tiny_run / "report.html").read_text()
    images = re.findall(r'<img id="([\w-]+)"[^>]* src="data:image/png;base64,', page)
    assert images == ["curves", "augmented", "fig-confusion", "fig-reliability", "fig-wrong"]
    assert (tiny_run / "augmented_batch.png").is_file()  # the grid of augmented training images
    assert 'alt="most confidently wrong images, each beside its Grad-CAM"' in page
    # nothing to fetch: no external scripts, styles or images
    assert not re.search(r'(src|href)=["\']?(https?:|//)', page)
    assert '<table class="sortable" id="per-class">' in page and "<td>green</td>" in page
    assert "model:\n  name: resnet18" in page  # the resolved config
    assert "torchvision" in page and "best_val_top1" in page  # environment and the run's summary
    assert "<h3>Trained on</h3>" in page and "cpu_native_bf16" in page  # the run's environment.json


def test_report_command_picks_up_a_later_eval(tiny_run, tiny_data, tmp_path, capsys):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    before = (run / "report.html").read_text()
    assert "36 images" not in before  # the end-of-training report evaluated the validation split
    assert main(["eval", str(run), str(tiny_data)]) == 0  # default --out: RUN_DIR/eval
    assert main(["report", str(run)]) == 0
    after = (run / "report.html").read_text()
    held_out = json.loads((run / "eval" / "metrics.json").read_text())["images"]  # the untrained-on ones
    assert f"{held_out} images of {tiny_data}" in after and "(split: all)" in after
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def find_chromium() -> str:
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    pytest.skip("Chromium is not installed (Debian: apt-get install chromium; `make test` does this as root)")


def chromium(binary: str, profile, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium(tiny_run, tmp_path):
    binary = find_chromium()
    url = (tiny_run / "report.html").resolve().as_uri()
    shot = tmp_path / "shot.png"
    result = chromium(binary, tmp_path / "profile", "--window-size=1200,1800", f"--screenshot={shot}", url)
    assert shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as img:
        grey = img.convert("L")
        assert ImageStat.Stat(grey).stddev[0] > 20, "screenshot is blank"
        assert len(img.convert("RGB").getcolors(1 << 24)) > 200, "screenshot has no figures"
    # The page's own check: on load it records how many <img> decoded; '#sort=' exercises the table's sorting.
    result = chromium(binary, tmp_path / "profile", "--dump-dom", url + "#sort=class-desc")
    body = re.search(r"<body[^>]*>", result.stdout)
    assert body, result.stderr[-2000:]
    assert 'data-images-loaded="5/5"' in body.group(0)
    loaded = re.search(r'data-images-ok="([^"]*)"', body.group(0)).group(1).split()
    assert {"curves", "augmented", "fig-confusion"} <= set(loaded)
    table = result.stdout.split('id="per-class"')[1].split("</table>")[0]
    assert re.findall(r"<tr><td>(\w+)</td>", table) == ["red", "green", "blue"]


def _run_dir_with_config(tmp_path, *overrides):
    from resnetcls.config import build_config, dump_yaml

    run = tmp_path / "run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_yaml(build_config(overrides=["data.image_size=32", *overrides])))
    return run


def test_the_augmented_batch_is_what_the_model_sees_with_soft_targets_named(tiny_data, tmp_path):
    import numpy as np

    from resnetcls.analysis.report import augmented_batch, write_augmented_batch
    from resnetcls.data.sources import load_splits

    train = load_splits(str(tiny_data)).train
    plain, captions = augmented_batch(_run_dir_with_config(tmp_path / "a", "data.cache=false"), train, 8)
    assert plain.shape == (8, 32, 32, 3) and plain.dtype == np.uint8
    assert set(captions) <= set(train.classes)  # hard labels: one class name each
    # solid-colour classes: without augmentation beyond crop + flip every image is one flat colour
    assert all(int(np.ptp(im.reshape(-1, 3), axis=0).max()) <= 2 for im in plain)
    run = _run_dir_with_config(
        tmp_path / "b", "data.cache=false", "data.cutmix=1.0", "data.random_erasing=1.0"
    )
    mixed, captions = augmented_batch(run, train, 8)
    assert sum(len(c.splitlines()) == 2 for c in captions) >= 2  # soft targets: two classes, with weights
    assert (
        sum(int(np.ptp(im.reshape(-1, 3), axis=0).max()) > 10 for im in mixed) >= 6
    )  # boxes, erased patches
    path = write_augmented_batch(run, train, 8)
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100


def test_a_malformed_lr_find_json_is_one_line_naming_the_file(tmp_path, capsys):
    folder = tmp_path / "lrf"
    folder.mkdir()
    (folder / "lr_find.json").write_text('{"rule": "steepest"}')  # no suggested_lr, no points
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "lr_find.json: unreadable LR range test" in err and "suggested_lr" in err
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no lr_find.json" in capsys.readouterr().err


def test_the_report_shows_calibration_before_and_after(tiny_run, tiny_data, tmp_path):
    from resnetcls.records.modelfile import write_calibration

    assert "Not calibrated: probabilities are the raw softmax" in (tiny_run / "report.html").read_text()
    run = shutil.copytree(tiny_run, tmp_path / "run")
    write_calibration(
        run / "best", {"calibrated": True, "temperature": 1.6, "fitted_on": "val", "images": 30}
    )
    assert main(["eval", str(run), str(tiny_data)]) == 0
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "<h3 id='calibration'>Calibration</h3>" in page and "fitted on 30 val images" in page
    for card in ("temperature", "ECE before", "ECE after", "NLL before", "NLL after"):
        assert f"<span>{card}</span>" in page
    assert 'id="fig-reliability"' in page
