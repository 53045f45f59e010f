"""The PNG figures of eval and report: confusion heatmap, reliability diagram, contact sheet, open-set score
histogram, training curves, multi-label precision-recall curves.

matplotlib with the Agg backend (no display needed); each function writes one PNG and returns its path.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from ..data.cache import resolve_cache_dir

# matplotlib keeps its font list in ~/.cache/matplotlib and makes ~/.config/matplotlib; unless the user chose
# a folder (MPLCONFIGDIR), both go into resnetcls's cache folder, the one place outside runs and models we
# write to.
os.environ.setdefault("MPLCONFIGDIR", str(resolve_cache_dir() / "matplotlib"))
import matplotlib  # noqa: E402
import matplotlib.ticker  # noqa: E402

matplotlib.use("Agg")  # files only; never open a window (headless servers, CI)
# Class names and paths are text, never TeX: a name such as "a$\\frac{b$" would otherwise be parsed as
# mathtext and fail the whole figure.
matplotlib.rcParams["text.parse_math"] = False
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..data.decode import DecodeError, decode_image  # noqa: E402
from ..utils.atomic import write_atomic  # noqa: E402


def _save(fig, path: Path, dpi: int = 110) -> Path:
    buffer = io.BytesIO()
    with (
        warnings.catch_warnings()
    ):  # a name in a script the font lacks is drawn as boxes; say nothing per glyph
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return write_atomic(path, buffer.getvalue())


def confusion_heatmap(
    confusion: np.ndarray,
    classes: list[str],
    path: Path,
    title: str = "",
    row_totals: np.ndarray | None = None,
) -> Path:
    """Row-normalised confusion matrix (colour = share of the true class) with every class name.

    row_totals: each row's images in the full matrix when confusion is a block of it (eval draws at most
    50 classes), so a colour is the share of all the true class's images; default: the rows' own sums.
    The figure grows with the class count (about 0.2 in per class) so that 50-100 names stay legible;
    counts are written into the cells only while they fit (<= 25 classes).
    """
    n = len(classes)
    rows = (confusion.sum(axis=1) if row_totals is None else np.asarray(row_totals)).reshape(-1, 1)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape, dtype=float), where=rows > 0)
    side = max(5.0, 0.2 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    font = 9 if n <= 25 else 7 if n <= 60 else 6
    ax.set_xticks(range(n), classes, rotation=90, fontsize=font)
    ax.set_yticks(range(n), classes, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "Confusion matrix (colour: share of the true class)")
    if n <= 25:
        for i, j in zip(*np.nonzero(confusion)):
            ax.text(
                j,
                i,
                str(confusion[i, j]),
                ha="center",
                va="center",
                fontsize=font,
                color="white" if share[i, j] > 0.5 else "black",
            )
    # A faint grid so a row or column can be followed across a large matrix.
    # (two line collections: minor ticks would cost a Tick object per class and dominate the drawing time)
    edges = np.arange(-0.5, n, 1)
    ax.hlines(edges, -0.5, n - 0.5, color="#dddddd", linewidth=0.3)
    ax.vlines(edges, -0.5, n - 0.5, color="#dddddd", linewidth=0.3)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    return _save(fig, path)


def reliability_diagram(bins: list[dict], ece: float, path: Path, calibration: dict | None = None) -> Path:
    """Accuracy against confidence per bin, with the diagonal of perfect calibration and the ECE.

    calibration (eval's metrics["calibration"]): with a temperature other than 1, the bars are the calibrated
    probabilities and the raw softmax's bins (ece_bins_before) are drawn over them as a line, both ECEs in the
    title."""
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=[3, 1], sharex=True)
    before = calibration if calibration and calibration.get("temperature", 1.0) != 1.0 else None
    lo = np.array([b["lo"] for b in bins])
    width = np.array([b["hi"] - b["lo"] for b in bins])
    acc = np.array([b["accuracy"] if b["count"] else 0.0 for b in bins])
    conf = np.array([b["confidence"] if b["count"] else 0.0 for b in bins])
    counts = np.array([b["count"] for b in bins])
    ax.bar(
        lo,
        acc,
        width=width,
        align="edge",
        color="#4c72b0",
        edgecolor="white",
        label="accuracy" + (" (calibrated)" if before is not None else ""),
    )
    ax.bar(
        lo,
        conf - acc,
        bottom=acc,
        width=width,
        align="edge",
        color="#dd8452",
        alpha=0.45,
        edgecolor="white",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    title = f"Reliability diagram (ECE {ece:.3f})"
    if before is not None:
        title = _draw_before_calibration(ax, hist, before, ece)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    hist.bar(lo, counts, width=width, align="edge", color="#8c8c8c", edgecolor="white")
    hist.set_xlabel("confidence (top-1 probability)")
    hist.set_ylabel("images")
    hist.set_xlim(0, 1)
    return _save(fig, path)


def _draw_before_calibration(ax, hist, before: dict, ece: float) -> str:
    """The raw softmax's bins over a reliability diagram of calibrated probabilities: accuracy against
    confidence as a line, the counts as a step; the title naming both ECEs."""
    raw = [b for b in before["ece_bins_before"] if b["count"]]
    ax.plot(
        [b["confidence"] for b in raw],
        [b["accuracy"] for b in raw],
        "o-",
        color="#c44e52",
        markersize=4,
        label=f"before calibration (ECE {before['ece_before']:.3f})",
    )
    hist.step(
        [b["lo"] for b in before["ece_bins_before"]],
        [b["count"] for b in before["ece_bins_before"]],
        where="post",
        color="#c44e52",
        linewidth=1,
    )
    return (
        f"Reliability: ECE {before['ece_before']:.3f} raw -> {ece:.3f} calibrated "
        f"(T = {before['temperature']:.3g})"
    )


def contact_sheet(items: list[dict], path: Path, thumb: int = 112, views: list | None = None) -> Path:
    """Thumbnails of images with 'true' and 'pred (prob)' captions; items: {path, true, pred, prob}.

    views: per item an (H, W, 3) uint8 picture drawn instead of the thumbnail (eval: the model's input crop
    beside its Grad-CAM overlay for the predicted class), or None for the plain thumbnail."""
    wide = any(v is not None for v in views or [])
    cols = min(4 if wide else 6, max(1, len(items)))
    rows = max(1, -(-len(items) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=((3.6 if wide else 1.9) * cols, 2.25 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item, view in zip(axes.flat, items, views or [None] * len(items)):
        try:
            if view is None:
                image = decode_image(item["path"])
                image.thumbnail((thumb, thumb))
                view = np.asarray(image)
            ax.imshow(view)
        except DecodeError:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
        ax.set_title(
            f"true: {item['true']}\npred: {item['pred']} ({item['prob']:.2f})", fontsize=7, color="#b00020"
        )
    if not items:
        axes[0, 0].text(0.5, 0.5, "no wrong predictions", ha="center", va="center")
    title = "Most confidently wrong" + (
        " (left: the model's input; right: Grad-CAM of the predicted class, red = evidence)" if wide else ""
    )
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi=100)


def image_grid(images: np.ndarray, captions: list[str], path: Path, title: str, thumb: float = 1.6) -> Path:
    """A grid of (N, H, W, 3) uint8 images, each with its caption (fastai's show_batch)."""
    cols = min(8, max(1, len(images)))
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(thumb * cols, (thumb + 0.35) * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(caption, fontsize=6)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path, dpi=100)


def training_curves(epochs: list[dict], path: Path) -> Path:
    """Loss, top-1 and learning rate per epoch; each panel plots every 'split/metric' key it finds."""
    panels = [("loss", "loss"), ("top1", "top-1 accuracy"), ("lr", "learning rate")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (metric, label) in zip(axes, panels):
        keys = sorted({k for r in epochs for k in r if k.split("/")[-1] == metric and "/" in k})
        for key in keys:
            points = [(r["epoch"], r[key]) for r in epochs if isinstance(r.get(key), (int, float))]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", markersize=3, label=key.split("/")[0])
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return _save(fig, path, dpi=100)


def lr_finder_curve(
    lrs: list[float],
    losses: list[float],
    smoothed: list[float],
    suggestion: float | None,
    rule: str,
    path: Path,
) -> Path:
    """The LR range test: raw and smoothed loss against the learning rate (log x), the suggestion marked."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(lrs, losses, color="0.75", linewidth=1, label="loss")
    ax.plot(lrs, smoothed, color="C0", linewidth=2, label="smoothed loss")
    if suggestion is not None:
        y = float(np.interp(np.log10(suggestion), np.log10(lrs), smoothed))
        ax.axvline(suggestion, color="C3", linestyle="--", linewidth=1)
        ax.plot([suggestion], [y], "o", color="C3", label=f"suggested lr {suggestion:.3g}")
    ax.set_xscale("log")
    # Plain tick labels: with text.parse_math off, matplotlib's default log labels would print as raw TeX.
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    # A diverged raw tail would flatten the curve: the axis stops at twice the highest smoothed loss.
    ax.set_ylim(min(min(losses), min(smoothed)) * 0.9, min(max(losses), 2 * max(smoothed)) * 1.05)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test" + (f"\n{rule}" if rule else ""), fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path, dpi=100)


def accuracy_matrix_heatmap(
    R: list[list[float]], b: list[float], tasks: list[str], rows: list[str], path: Path, title: str = ""
) -> Path:
    """The lifelong accuracy matrix: row 'before' (b) then one row per training stage, one column per task's
    test split, each cell annotated with its accuracy."""
    grid = np.array([b] + [list(r) for r in R], dtype=float)
    labels = ["before"] + rows
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(tasks) + 2), max(3.0, 0.55 * len(labels) + 1.5)))
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), [f"after {r}" if r != "before" else r for r in labels], fontsize=8)
    ax.set_xlabel("evaluated on task (test split)")
    ax.set_title(title or "Accuracy after each task")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            ax.text(
                j,
                i,
                f"{grid[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="black" if grid[i, j] > 0.6 else "white",
            )
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    return _save(fig, path)


def optimisation_history(
    numbers: list[int], values: list[float], direction: str, metric: str, path: Path
) -> Path:
    """tune: each completed trial's value and the best so far, against the trial number."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if numbers:
        pick = min if direction == "minimize" else max
        best = [pick(values[: i + 1]) for i in range(len(values))]
        ax.plot(numbers, values, "o", markersize=4, label="trial")
        ax.step(numbers, best, where="post", label="best so far")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no completed trial yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title("optimisation history")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, dpi=100)


def param_importances(importances: dict[str, float], path: Path) -> Path:
    """tune: Optuna's parameter importances (shares of the value's variance), largest on top."""
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7, max(2.0, 0.8 + 0.4 * len(names))))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance")
    ax.set_title("parameter importances")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return _save(fig, path, dpi=100)


def score_histogram_bins(known: np.ndarray, unknown: np.ndarray | None, bins: int = 30) -> np.ndarray:
    """Bin edges shared by the known and unknown scores (a width of 1e-6 when every score is the same)."""
    both = known if unknown is None else np.concatenate([known, unknown])
    low, high = float(both.min()), float(both.max())
    return np.linspace(low, high if high > low else low + 1e-6, bins + 1)


def open_set_histogram(
    known: np.ndarray, unknown: np.ndarray | None, threshold: float, path: Path, score: str
) -> Path:
    """eval --unknown: the open-set scores of the known images (DATA) and of the unknown ones, on shared
    bins, with the threshold as a vertical line (images left of it are answered "unknown")."""
    edges = score_histogram_bins(known, unknown)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(known, bins=edges, color="#4c72b0", alpha=0.6, label=f"known ({len(known)})")
    if unknown is not None:
        ax.hist(unknown, bins=edges, color="#dd8452", alpha=0.6, label=f"unknown ({len(unknown)})")
    ax.axvline(threshold, color="#c44e52", linestyle="--", linewidth=1.5, label=f"threshold {threshold:.4g}")
    ax.set_xlabel(f"open-set score ({score}; higher = more like a known class)")
    ax.set_ylabel("images")
    ax.set_title("Open-set scores: known vs unknown images" if unknown is not None else "Open-set scores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def pr_curves(curves: list[dict], path: Path, title: str = "") -> Path:
    """Precision against recall, one curve a class on one axes (a multi-label evaluation), each named with
    its average precision, and a dot where the class's decision threshold puts it.

    curves: [{"name", "precision": [...], "recall": [...], "ap", "at_threshold": (precision, recall) or
    None}], recall rising (utils/multilabel.pr_curve)."""
    fig, ax = plt.subplots(figsize=(6, 5))
    colours = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    for k, curve in enumerate(curves):
        colour = colours(k % colours.N)
        ap = curve["ap"]
        label = f"{curve['name']} (AP {ap:.3f})" if ap == ap else f"{curve['name']} (no positive)"
        ax.step(curve["recall"], curve["precision"], where="post", color=colour, linewidth=1.2, label=label)
        point = curve.get("at_threshold")
        if point is not None and all(v == v for v in point):
            ax.plot(point[1], point[0], "o", color=colour, markersize=5)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title or "Precision-recall per class (dots: at the class's threshold)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7, ncol=2 if len(curves) > 10 else 1)
    return _save(fig, path)
