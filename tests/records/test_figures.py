"""Figures are real PNGs a person can open; an unreadable image in the contact sheet does not stop it."""

import numpy as np
from PIL import Image

from resnetcls.records import figures


def _is_png(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_each_figure_is_a_png(tmp_path):
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "a.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    wrong = [
        {"path": str(tmp_path / "a.jpg"), "true": "red", "pred": "blue", "prob": 0.9},
        {"path": str(tmp_path / "broken.jpg"), "true": "red", "pred": "blue", "prob": 0.8},
    ]
    bins = [
        {"lo": 0.0, "hi": 0.5, "count": 2, "confidence": 0.4, "accuracy": 0.5},
        {"lo": 0.5, "hi": 1.0, "count": 0, "confidence": None, "accuracy": None},
    ]
    epochs = [
        {"epoch": e, "train/loss": 1.0 / e, "val/loss": 1.2 / e, "val/top1": 0.3 * e, "train/lr": 0.1}
        for e in (1, 2)
    ]
    made = [
        figures.confusion_heatmap(np.array([[3, 1], [0, 4]]), ["red", "blue"], tmp_path / "c.png"),
        figures.reliability_diagram(bins, 0.1, tmp_path / "r.png"),
        figures.reliability_diagram(
            bins,
            0.05,
            tmp_path / "r2.png",  # raw and calibrated in one figure
            {"temperature": 1.5, "ece_before": 0.2, "ece_bins_before": bins},
        ),
        figures.contact_sheet(wrong, tmp_path / "w.png"),
        figures.training_curves(epochs, tmp_path / "t.png"),
        figures.accuracy_matrix_heatmap(
            [[0.9, 0.1], [0.7, 0.8]], [0.1, 0.1], ["t1", "t2"], ["t1", "t2"], tmp_path / "R.png"
        ),
        figures.image_grid(np.zeros((5, 16, 16, 3), np.uint8), ["a"] * 5, tmp_path / "g.png", "grid"),
    ]
    assert [p.name for p in made] == ["c.png", "r.png", "r2.png", "w.png", "t.png", "R.png", "g.png"]
    assert all(min(_is_png(p)) > 100 for p in made)


def test_lr_finder_curve_is_a_png_even_with_an_exploded_tail(tmp_path):
    lrs = [1e-5 * 10 ** (i / 4) for i in range(16)]
    losses = [1.0] * 12 + [0.5, 2.0, 50.0, float("1e6")]
    path = figures.lr_finder_curve(lrs, losses, losses, 1e-3, "steepest descent", tmp_path / "lr.png")
    assert _is_png(path)[0] > 200


def test_contact_sheet_draws_the_given_views_instead_of_thumbnails(tmp_path):
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "a.jpg")
    item = {"path": str(tmp_path / "a.jpg"), "true": "red", "pred": "blue", "prob": 0.9}
    pair = np.zeros((32, 64, 3), np.uint8)
    pair[:, 32:] = (0, 255, 0)  # a green "overlay" half the plain thumbnail does not have
    plain = figures.contact_sheet([item], tmp_path / "plain.png")
    paired = figures.contact_sheet([item], tmp_path / "paired.png", views=[pair])
    assert _is_png(paired)[0] > _is_png(plain)[0]
    with Image.open(paired) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert ((pixels[:, 1] > 200) & (pixels[:, 0] < 60)).any()


def test_open_set_histogram_shares_bins_and_draws_one_kind_or_two(tmp_path):
    known, unknown = np.array([0.9, 0.95, 0.97, 0.99]), np.array([0.2, 0.5])
    edges = figures.score_histogram_bins(known, unknown, bins=10)
    assert edges[0] == 0.2 and edges[-1] == 0.99 and len(edges) == 11
    assert figures.score_histogram_bins(np.array([0.5, 0.5]), None)[-1] > 0.5  # one value: a bin still
    both = figures.open_set_histogram(known, unknown, 0.93, tmp_path / "o.png", "knn")
    alone = figures.open_set_histogram(known, None, 0.93, tmp_path / "k.png", "msp")
    assert min(_is_png(both)) > 200 and min(_is_png(alone)) > 200
