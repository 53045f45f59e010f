"""The end of training fits the open-set score of the shipped models: the model says "unknown" below a
threshold that accepts eval.open_set_accept of the val images (or, with --unknown FOLDER, best separates the
val images from those), stored in open_set.safetensors and model.json's "open_set" record."""

import json
import shutil

import pytest
import torch
from PIL import Image

import resnetcls
from resnetcls.config import DataConfig, EvalConfig
from resnetcls.data.sources import load_splits
from resnetcls.engine import openset
from resnetcls.engine.loop import StepContext
from resnetcls.engine.openset import OpenSetImages, fit_open_set, open_set_images
from resnetcls.engine.prepare import DataPipeline
from resnetcls.records.modelfile import OPEN_SET_FILE, load_model_dir
from resnetcls.utils.openset import UNKNOWN, threshold_for
from tests.conftest import TINY, make_class_folders, run_cli

FLAT = {"grey": (128, 128, 128), "white": (250, 250, 250), "black": (10, 10, 10), "yellow": (200, 200, 30)}


@pytest.fixture(scope="module")
def open_set_run(calibrated_run):
    return calibrated_run


@pytest.fixture(scope="module")
def flat_images(tmp_path_factory):
    """Flat colours unlike the tiny data's blue, green and red: images of none of its classes."""
    folder = tmp_path_factory.mktemp("flat")
    for name, colour in FLAT.items():
        Image.new("RGB", (40, 40), colour).save(folder / f"{name}.png")
    return folder


class Lines:
    """A RunLogger's info/log, kept."""

    def __init__(self):
        self.lines, self.records = [], []

    def info(self, text):
        self.lines.append(text)

    def log(self, record, step):
        self.records.append(record)


def refit(run, tmp_path, eval_cfg: EvalConfig):
    """best/ of the run copied into tmp_path/run and fitted again with eval_cfg on the run's own split."""
    copy = tmp_path / "run"
    shutil.copytree(run / "best", copy / "best")
    splits = load_splits(str(run / "split.csv"))
    pipeline = DataPipeline(DataConfig(image_size=32, num_workers=0), 16, uint8_batches=False)
    images = open_set_images(pipeline, splits, pipeline.eval_loader(splits.val), eval_cfg, seed=0)
    logger = Lines()
    fitted = fit_open_set(copy, eval_cfg, images, StepContext(torch.device("cpu")), logger, 0)
    return copy / "best", fitted, logger


def test_train_ships_a_threshold_accepting_the_share_of_val_images_and_says_so(open_set_run):
    out, stderr = open_set_run
    record = json.loads((out / "best" / "model.json").read_text())["open_set"]
    assert record["score"] == "knn" and record["fitted_on"] == "val" and record["accept"] == 0.95
    assert record["images"] == 12 and record["train_images"] == 24  # the 24 train images, under the cap
    assert record["threshold"] == pytest.approx(threshold_for(record["quantiles"], 0.95))
    share = sum(q >= record["threshold"] for q in record["quantiles"]) / len(record["quantiles"])
    assert 0.94 <= share <= 0.99
    for name in ("best", "final"):
        assert (out / name / OPEN_SET_FILE).is_file()
    line = next(text for text in stderr.splitlines() if text.startswith("open set:"))
    fitted = (
        f"knn score fitted on 24 training images (at most 100 a class); threshold {record['threshold']:.4g}"
    )
    assert fitted in line
    assert "of 12 val images" in line and f"predict answers '{UNKNOWN}' below it" in line
    logged = [json.loads(text) for text in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["threshold"] for r in logged if r["kind"] == "open_set"] == [record["threshold"]]
    summary = next(r for r in logged if r["kind"] == "summary")
    assert summary["open_set"]["threshold"] == record["threshold"]


def test_the_stored_score_reproduces_the_val_quantiles_and_rejects_a_flat_colour(open_set_run, flat_images):
    out, _ = open_set_run
    loaded = load_model_dir(out / "best")
    assert loaded.scorer is not None and loaded.open_set["threshold"] == pytest.approx(
        json.loads((out / "best" / "model.json").read_text())["open_set"]["threshold"]
    )
    splits = load_splits(str(out / "split.csv"))
    loader = DataPipeline(DataConfig(image_size=32, num_workers=0), 16, False).eval_loader(splits.val)
    batches = openset.features_and_logits(loaded.model, loader, StepContext(torch.device("cpu")))
    features, logits, _ = openset.gathered(batches)
    from resnetcls.utils.openset import score_quantiles

    again = score_quantiles(loaded.scorer(features, logits))
    assert again == pytest.approx(loaded.open_set["quantiles"], abs=1e-5)
    grey = resnetcls.load(out).predict([str(flat_images / "grey.png")])[0]
    assert grey.unknown and grey.label == UNKNOWN


def test_unknown_images_set_the_threshold_by_balanced_accuracy(open_set_run, flat_images, tmp_path):
    out, _ = open_set_run
    model_dir, fitted, logger = refit(out, tmp_path, EvalConfig(open_set_unknown=str(flat_images)))
    record = json.loads((model_dir / "model.json").read_text())["open_set"]
    assert record["fitted_on"] == "val+unknown" and record["unknown_images"] == len(FLAT)
    assert record["accept"] == fitted["accept"] and 0 < record["accept"] <= 1
    assert record["unknown_rejected"] == 1.0  # flat colours are far from every class
    assert "the best balanced accuracy between 12 val and 4 unknown images" in logger.lines[0]


def test_open_set_off_fits_nothing_and_says_so(open_set_run, tmp_path):
    out, _ = open_set_run
    copy = tmp_path / "run"
    shutil.copytree(out / "best", copy / "best")
    before = {p.name: p.read_bytes() for p in (copy / "best").iterdir()}
    logger = Lines()
    images = OpenSetImages(None, None, None, val_images=12)  # never read
    fitted = fit_open_set(copy, EvalConfig(open_set="off"), images, None, logger, 0)
    assert fitted == {"fitted": False, "note": "eval.open_set=off"}
    assert {p.name: p.read_bytes() for p in (copy / "best").iterdir()} == before  # nothing written
    assert logger.lines == ["open set: not fitted (eval.open_set=off); " + openset.NEVER_UNKNOWN]
    splits = load_splits(str(out / "split.csv"))
    assert open_set_images(None, splits, None, EvalConfig(open_set="off"), seed=0).train is None  # no loader


def test_too_few_val_images_fit_nothing_and_say_why(tmp_path):
    logger = Lines()
    fitted = fit_open_set(tmp_path, EvalConfig(), OpenSetImages(None, None, None, 5), None, logger, 0)
    assert fitted["fitted"] is False
    assert "5 validation images; at least 10 are needed" in logger.lines[0]
    assert logger.records[0]["kind"] == "open_set"


def test_a_class_named_unknown_is_refused_with_both_ways_out(tmp_path):
    data = make_class_folders(tmp_path / "data", {"cat": (200, 30, 30), UNKNOWN: (30, 30, 200)}, per_class=4)
    result = run_cli("train", data, *TINY, "--out", tmp_path / "run")
    assert result.returncode == 2 and not (tmp_path / "run").exists()
    line = result.stderr.strip().splitlines()[-1]
    assert f"class '{UNKNOWN}' in DATA" in line and "rename" in line and "eval.open_set=off" in line
    openset.check_open_set(EvalConfig(open_set="off"), ["cat", UNKNOWN])  # off: no refusal


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_an_unknown_folder_without_images_is_refused_naming_it(tiny_data, tmp_path, kind):
    folder = tmp_path / "things"
    if kind == "empty":
        folder.mkdir()
        (folder / "notes.txt").write_text("no images")
    result = run_cli("train", tiny_data, *TINY, "--unknown", folder, "--out", tmp_path / "run")
    assert result.returncode == 2 and not (tmp_path / "run").exists()
    assert f"--unknown {folder}" in result.stderr
    assert ("not a folder" if kind == "missing" else "no image files") in result.stderr


def test_the_training_images_are_capped_per_class_and_in_all(monkeypatch):
    labels = [0] * 150 + [1] * 30 + [2] * 500
    chosen = openset.capped_indices(labels, 3, seed=0)
    assert [sum(labels[i] == c for i in chosen) for c in range(3)] == [100, 30, 100]
    assert chosen == openset.capped_indices(labels, 3, seed=0) == sorted(chosen)  # a fixed draw
    monkeypatch.setattr(openset, "TRAIN_MAX", 120)
    assert len(openset.capped_indices(labels, 3, seed=0)) == 40 + 30 + 40


def test_the_balanced_threshold_separates_where_it_can():
    known, unknown = torch.tensor([0.8, 0.9, 0.95, 0.5]), torch.tensor([0.1, 0.3, 0.6])
    threshold = openset.balanced_threshold(known, unknown)
    assert threshold == pytest.approx((0.8 + 0.6) / 2)  # 3 of 4 known accepted, every unknown rejected
    assert openset.balanced_threshold(torch.tensor([0.9, 1.0]), torch.tensor([0.1])) == pytest.approx(0.5)
