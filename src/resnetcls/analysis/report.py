"""`resnetcls report RUN_DIR`: one self-contained report.html (also written at the end of training).

Every figure is embedded as a base64 PNG and the few lines of CSS and JavaScript are inline, so the file
can be mailed, archived or opened offline. It shows the curves per epoch, the LR range test (lr_find.json
of `train --lr auto` or `lr-find --out DIR`; such a folder alone gets a report of just that), the evaluation
in RUN_DIR/eval (figures, with a caption naming the classes the heatmap shows, headline numbers, a per-class
table sortable by any column: every class up to PER_CLASS_ROWS, else the worst and the best by F1, every class
being in eval/per_class.csv), the resolved config and the environment.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from ..config import config_from_dict, load_yaml
from ..data.sampler import ResumableSampler
from ..data.sources import Samples
from ..engine.prepare import DataPipeline
from ..errors import UserError
from ..inference.predictor import Predictor
from ..records.envinfo import provenance
from ..utils.atomic import write_text_atomic
from .evaluate import evaluate_samples

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1300px;
color:#222;padding:0 16px}
h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.sub{color:#666;margin-top:4px}.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:1.4em}.card span{color:#666;font-size:.85em}
img{max-width:100%;border:1px solid #eee}.figs{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:hover{background:#e8eefc}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
pre{background:#f7f7f7;padding:12px;overflow:auto;font-size:.85em}.warn{color:#b00020}
"""

# Sorting by clicking a header (numbers numerically, empty cells last); '#sort=COLUMN[-desc]' in the URL
# sorts on load. On load, body[data-images-loaded] records "loaded/total" images (a rendering check).
SCRIPT = """
function sortTable(th, desc){
  const table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
  if (desc === undefined) desc = th.classList.contains('asc');
  const key = r => { const t = r.cells[col].textContent.trim(), n = parseFloat(t);
                     return t === '' ? null : (isNaN(n) ? t.toLowerCase() : n); };
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === null) return 1; if (y === null) return -1;
    return (x < y ? -1 : x > y ? 1 : 0) * (desc ? -1 : 1); });
  rows.forEach(r => body.appendChild(r));
  table.querySelectorAll('th').forEach(h => h.classList.remove('asc', 'desc'));
  th.classList.add(desc ? 'desc' : 'asc');
}
document.querySelectorAll('table.sortable th')
  .forEach(th => th.addEventListener('click', () => sortTable(th)));
window.addEventListener('load', () => {
  const imgs = Array.from(document.images), ok = imgs.filter(i => i.complete && i.naturalWidth > 0);
  document.body.dataset.imagesLoaded = ok.length + '/' + imgs.length;
  document.body.dataset.imagesOk = ok.map(i => i.id).join(' ');
  if (ok.length < imgs.length) document.getElementById('img-warning').textContent =
      (imgs.length - ok.length) + ' figure(s) failed to load';
  const m = location.hash.match(/^#sort=([\\w-]+?)(-desc)?$/);
  const th = m && document.querySelector('th[data-col="' + m[1] + '"]');
  if (th) sortTable(th, !!m[2]);
});
"""


def _img(path: Path, element_id: str, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img id="{element_id}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


embedded_png = _img  # public name: tune's page (tune/page.py) embeds its figures the same way


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def read_records(run_dir: Path) -> tuple[list[dict], dict]:
    """Epoch records and the last summary record of RUN_DIR/metrics.jsonl (malformed lines are errors)."""
    epochs, summary = [], {}
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return epochs, summary
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{line_no}: not JSON: {e}") from None
        if record.get("kind") == "epoch":
            epochs.append(record)
        elif record.get("kind") == "summary":
            summary = record
    return epochs, summary


def _cards(items: list[tuple[str, object]]) -> str:
    return (
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{_fmt(v)}</b><span>{html.escape(k)}</span></div>' for k, v in items)
        + "</div>"
    )


def _curves_section(run_dir: Path, epochs: list[dict]) -> str:
    if not epochs:
        return "<h2>Training curves</h2><p>No epochs logged in metrics.jsonl.</p>"
    from ..records.figures import training_curves

    path = training_curves(epochs, run_dir / "curves.png")
    return "<h2>Training curves</h2>" + _img(path, "curves", "loss, top-1 and learning rate per epoch")


AUGMENTED_PNG = "augmented_batch.png"


def augmented_batch(run_dir: Path, train_samples: Samples, count: int = 16) -> tuple[np.ndarray, list[str]]:
    """The first training batch (of `count`) of the run's config as the model sees it: its crops, policy,
    erasing, jitter and Mixup/CutMix, un-normalised back to (N, H, W, 3) uint8, with each image's target
    ("class", or "class 0.70 +" and "other 0.30" on two lines for a soft one)."""
    cfg = config_from_dict(load_yaml(run_dir / "config.yaml"))
    pipeline = DataPipeline(
        dataclasses.replace(cfg.data, num_workers=0), min(count, len(train_samples)), True
    )
    sampler = ResumableSampler(train_samples.labels, cfg.data.sampler, cfg.train.seed)
    loader = pipeline.train_loader(train_samples, sampler, cfg.train.seed)
    batch = next(b for b in loader if b["images"] is not None)
    images, labels = loader.device_finish(batch["images"]), batch["labels"]
    targets = torch.nn.functional.one_hot(labels, len(train_samples.classes)).float()
    if loader.batch_mix is not None:
        images, targets = loader.batch_mix(images, labels, batch["seed"])
    mean = torch.tensor(pipeline.preprocess["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pipeline.preprocess["std"]).view(1, 3, 1, 1)
    pixels = ((images * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    captions = []
    for row in targets:
        shares = sorted(((float(w), c) for c, w in enumerate(row) if w > 0.005), reverse=True)
        names = [train_samples.classes[c] for _, c in shares]
        shown = [f"{n} {w:.2f}" for (w, _), n in zip(shares, names)]
        captions.append(names[0] if len(shares) == 1 else " +\n".join(shown))
    return pixels, captions


def write_augmented_batch(run_dir: str | os.PathLike, train_samples: Samples, count: int = 16) -> Path:
    """RUN_DIR/augmented_batch.png: augmented_batch() as a grid, which the report shows."""
    from ..records.figures import image_grid

    run_dir = Path(run_dir)
    pixels, captions = augmented_batch(run_dir, train_samples, count)
    d = config_from_dict(load_yaml(run_dir / "config.yaml")).data
    title = (
        f"Training images as the model sees them (data.augment={d.augment}, "
        f"random_erasing={d.random_erasing:g}, mixup={d.mixup:g}, cutmix={d.cutmix:g}, "
        f"color_jitter={d.color_jitter:g})"
    )
    return image_grid(pixels, captions, run_dir / AUGMENTED_PNG, title)


def _augmented_section(run_dir: Path) -> str:
    path = run_dir / AUGMENTED_PNG
    if not path.is_file():
        return ""
    return "<h2>Training images as the model sees them</h2>" + _img(
        path, "augmented", "an augmented training batch"
    )


def _lr_find_section(run_dir: Path) -> str:
    """The LR range test in RUN_DIR (`train --lr auto`, `lr-find --out`): the plot, the suggestion, its
    rule."""
    path, png = run_dir / "lr_find.json", run_dir / "lr_find.png"
    if not path.is_file():
        return ""
    try:
        c = json.loads(path.read_text(encoding="utf-8"))
        lr, rule, points = float(c["suggested_lr"]), str(c["rule"]), c["points"]
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"{path}: unreadable LR range test ({type(e).__name__}: {e})") from None
    settings = c.get("settings") if isinstance(c.get("settings"), dict) else {}
    swept = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in settings.items())
    fig = _img(png, "lr-find", "LR range test: training loss against learning rate") if png.is_file() else ""
    return (
        f"<h2>Learning-rate range test</h2><p id='lr-suggestion'>suggested lr <b>{lr:.3g}</b> "
        f"(rule: {html.escape(rule)}); {len(points)} steps, {html.escape(str(c.get('stopped', '')))}</p>"
        f"<p class='sub'>{html.escape(swept)}</p>{fig}"
    )


# Above this many classes the per-class table shows the worst and best classes by F1 (half each);
# per_class.csv in the eval folder holds every class.
PER_CLASS_ROWS = 50


def _class_rows(m: dict, names: list[str]) -> str:
    cols = ("precision", "recall", "f1", "support")
    return "".join(
        "<tr>"
        + f"<td>{html.escape(name)}</td>"
        + "".join(f"<td>{_fmt(m['per_class'][name][c])}</td>" for c in cols)
        + "</tr>"
        for name in names
    )


def _class_table(table_id: str, rows: str) -> str:
    cols = [
        ("class", "class"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("f1", "F1"),
        ("support", "support"),
    ]
    head = "".join(f'<th data-col="{c}">{label}</th>' for c, label in cols)
    return (
        f'<table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
    )


def _per_class_table(m: dict) -> str:
    """Every class while they fit PER_CLASS_ROWS; above it the classes in the data while they fit, else the
    lowest and the highest F1, each a sortable table, with every class in per_class.csv."""
    names = list(m["per_class"])
    if len(names) <= PER_CLASS_ROWS:
        return '<h3>Per class</h3><p class="sub">Click a column to sort.</p>' + _class_table(
            "per-class", _class_rows(m, names)
        )
    scored = sorted((row["f1"], name) for name, row in m["per_class"].items() if row["f1"] is not None)
    note = (
        f'<h3>Per class</h3><p class="sub" id="per-class-note">{len(names)} classes '
        f"({len(scored)} in the data): "
    )
    if len(scored) <= PER_CLASS_ROWS:
        return (
            note + "those in the data, lowest F1 first; every class in eval/per_class.csv. Click a column to "
            "sort.</p>" + _class_table("per-class", _class_rows(m, [n for _, n in scored]))
        )
    half = PER_CLASS_ROWS // 2
    worst, best = [n for _, n in scored[:half]], [n for _, n in scored[::-1][:half]]
    return (
        note + f"the {len(worst)} with the lowest F1 and the {len(best)} with the highest; every class in "
        f"eval/per_class.csv. Click a column to sort.</p><div class='figs'><div><h4>Lowest F1</h4>"
        + _class_table("per-class-worst", _class_rows(m, worst))
        + "</div><div><h4>Highest F1</h4>"
        + _class_table("per-class-best", _class_rows(m, best))
        + "</div></div>"
    )


def _calibration_part(c: dict | None) -> str:
    """Temperature scaling's effect on the evaluated data (the reliability figure draws both curves)."""
    if not c or not c.get("calibrated"):
        return (
            (
                "<h3 id='calibration'>Calibration</h3><p>Not calibrated: probabilities are the raw softmax "
                "(temperature 1).</p>"
            )
            if c
            else ""
        )
    return (
        "<h3 id='calibration'>Calibration</h3><p class='sub'>Probabilities are softmax(logits / T), T fitted "
        f"on {html.escape(str(c.get('fitted_images')))} "
        f"{html.escape(str(c.get('fitted_on')))} images by NLL; "
        "on this data:</p>"
        + _cards(
            [
                ("temperature", c["temperature"]),
                ("ECE before", c["ece_before"]),
                ("ECE after", c["ece_after"]),
                ("NLL before", c["nll_before"]),
                ("NLL after", c["nll_after"]),
            ]
        )
    )


def _confusion_caption(shown: dict | None) -> str:
    """Which classes the heatmap shows (eval's metrics.json "confusion_figure"): all, or the most confused."""
    if not shown:
        return ""
    names = ", ".join(shown["classes"]) if shown.get("capped") else ""
    return (
        f"<p class='sub' id='confusion-caption'>Confusion matrix: {html.escape(shown['caption'])}"
        + (f". Shown: {html.escape(names)}" if names else "")
        + ".</p>"
    )


def _eval_section(eval_dir: Path) -> str:
    path = eval_dir / "metrics.json"
    if not path.is_file():
        return (
            "<h2>Evaluation</h2><p>No evaluation yet: run <code>resnetcls eval RUN_DIR DATA</code> "
            "(it writes RUN_DIR/eval/), then <code>resnetcls report RUN_DIR</code>.</p>"
        )
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable evaluation: {e}") from None
    parts = [
        f"<h2>Evaluation</h2><p class='sub'>{m['images']} images of {html.escape(str(m.get('data')))} "
        f"(split: {html.escape(str(m.get('split')))}), model {html.escape(str(m.get('model')))}</p>",
        _cards(
            [
                ("top-1", m["top1"]),
                (f"top-{m.get('top5_k', 5)}", m["top5"]),
                ("balanced accuracy", m["balanced_accuracy"]),
                ("macro precision", m["macro_precision"]),
                ("macro recall", m["macro_recall"]),
                ("macro F1", m["macro_f1"]),
                ("ECE", m["ece"]),
                ("NLL", m["nll"]),
            ]
        ),
        _calibration_part(m.get("calibration")),
    ]
    figs = [
        ("confusion", "confusion_matrix.png", "confusion matrix"),
        ("reliability", "reliability.png", "reliability diagram"),
        ("wrong", "most_confident_wrong.png", "most confidently wrong images, each beside its Grad-CAM"),
    ]
    shown = [
        _img(eval_dir / name, f"fig-{key}", alt) for key, name, alt in figs if (eval_dir / name).is_file()
    ]
    parts.append(
        '<div class="figs">' + "".join(shown) + "</div>" + _confusion_caption(m.get("confusion_figure"))
    )
    if m.get("most_confused"):
        parts.append(
            "<h3>Most confused pairs</h3><table><tr><th>true</th><th>predicted as</th><th>images</th></tr>"
            + "".join(
                f"<tr><td>{html.escape(p['true'])}</td><td>{html.escape(p['pred'])}</td>"
                f"<td>{p['count']}</td></tr>"
                for p in m["most_confused"][:10]
            )
            + "</table>"
        )
    parts.append(_per_class_table(m))
    if m.get("bad_images"):
        parts.append(
            f"<p class='warn'>{len(m['bad_images'])} unreadable images skipped: "
            + html.escape(", ".join(b["path"] for b in m["bad_images"][:20]))
            + "</p>"
        )
    return "".join(parts)


def _lifelong_section(run_dir: Path) -> str:
    """A lifelong run (resnetcls lifelong): the accuracy matrix heatmap and the continual-learning metrics."""
    path = run_dir / "metrics.json"
    if not (run_dir / "R.json").is_file() or not path.is_file():
        return ""
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable lifelong metrics: {e}") from None
    keys = [
        "ACC",
        "BWT",
        "FWT",
        "overall",
        "overall_vs_joint",
        "A",
        "REM",
        "BWT_plus",
        "FWT_dr",
        "gap_to_joint",
        "buffer_images",
        "buffer_mb",
        "model_params",
        "model_mb",
        "train_seconds",
        "inference_ms_per_image",
    ]
    rows = "".join(f"<tr><th>{k}</th><td>{_fmt(m[k])}</td></tr>" for k in keys if k in m)
    tasks = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{_fmt(s)}</td><td>{_fmt(f)}</td></tr>"
        for n, s, f in zip(
            m["task_names"], m["train_seconds_per_task"], m.get("forgetting", []) + [None] * 99
        )
    )
    fig = _img(run_dir / "R.png", "lifelong-R", "accuracy matrix R") if (run_dir / "R.png").is_file() else ""
    return (
        f"<h2>Lifelong: {html.escape(str(m['strategy']))} over {len(m['task_names'])} tasks</h2>"
        f"<div class='figs'>{fig}<table id='lifelong-metrics'>{rows}</table>"
        f"<table><tr><th>task</th><th>train s</th><th>forgetting</th></tr>{tasks}</table></div>"
        + _matrix_table(m)
    )


def _matrix_table(m: dict) -> str:
    """R as numbers (row: after training that task, column: accuracy on that task), with b as the first
    row."""
    names = m["task_names"]
    after = ["before"] + (names if m.get("strategy") != "joint" else ["joint"])
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = "".join(
        f"<tr><th>{html.escape(a)}</th>" + "".join(f"<td>{_fmt(float(v))}</td>" for v in row) + "</tr>"
        for a, row in zip(after, [m["b"], *m["R"]])
    )
    return f"<table id='lifelong-R-matrix'><tr><th>after \\ on</th>{head}</tr>{body}</table>"


def _env_section(run_dir: Path, summary: dict) -> str:
    def table(d: dict) -> str:
        return (
            "<table>"
            + "".join(
                f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>"
                for k, v in d.items()
                if k not in ("kind", "time")
            )
            + "</table>"
        )

    config = run_dir / "config.yaml"
    text = config.read_text(encoding="utf-8") if config.is_file() else "(config.yaml missing)"
    try:
        trained_on = json.loads((run_dir / "environment.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        trained_on = {}
    trained = (
        table(trained_on) if isinstance(trained_on, dict) and trained_on else "<p>no environment.json</p>"
    )
    return (
        f"<h2>Config</h2><pre id='config'>{html.escape(text)}</pre><h2>Environment</h2><div class='figs'>"
        f"<div><h3>Training run</h3>{table(summary) if summary else '<p>no summary logged</p>'}</div>"
        f"<div><h3>Trained on</h3>{trained}</div>"
        f"<div><h3>Report generated with</h3>{table(provenance())}</div></div>"
    )


def write_report(
    run_dir: str | os.PathLike, eval_samples: Samples | None = None, num_workers: int = -1
) -> Path:
    """Write RUN_DIR/report.html; with eval_samples, first evaluate the best model on them into
    RUN_DIR/eval."""
    run_dir = Path(run_dir)
    is_run = (run_dir / "metrics.jsonl").is_file() or (run_dir / "config.yaml").is_file()
    if not is_run and not (run_dir / "lr_find.json").is_file():
        raise UserError(
            f"{run_dir}: not a run directory (no metrics.jsonl or config.yaml) nor an lr-find "
            f"folder (no lr_find.json)"
        )
    if eval_samples is not None and len(eval_samples):
        evaluate_samples(
            Predictor(run_dir),
            eval_samples,
            run_dir / "eval",
            {"data": "the run's validation split", "split": "val"},
            num_workers=num_workers,
        )
    epochs, summary = read_records(run_dir)
    headline = [("epochs", len(epochs))] + [
        (k.replace("_", " "), summary[k]) for k in ("best_val_top1", "best_epoch", "seconds") if k in summary
    ]
    body = (
        f"<h1>resnetcls run: {html.escape(run_dir.resolve().name)}</h1>"
        f"<p class='sub'>{html.escape(str(run_dir.resolve()))}</p><p id='img-warning' class='warn'></p>"
        + (_cards(headline) + _lifelong_section(run_dir) + _curves_section(run_dir, epochs) if is_run else "")
        + _lr_find_section(run_dir)
        + (
            _augmented_section(run_dir) + _eval_section(run_dir / "eval") + _env_section(run_dir, summary)
            if is_run
            else ""
        )
    )
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>resnetcls report: "
        f"{html.escape(run_dir.resolve().name)}</title><style>{STYLE}</style></head><body>{body}"
        f"<script>{SCRIPT}</script></body></html>\n"
    )
    return write_text_atomic(run_dir / "report.html", page)


def write_training_report(
    run_dir: str | os.PathLike,
    val_samples: Samples,
    num_workers: int = -1,
    train_samples: Samples | None = None,
) -> Path:
    """The report at the end of `train`: evaluate best/ on the run's validation samples into RUN_DIR/eval,
    draw a batch of train_samples as the model saw them (RUN_DIR/augmented_batch.png), then write
    report.html and say where both are (stderr).

    Called by the layer that ran the engine (cli, demo) with what train() returned, never by the engine."""
    run_dir = Path(run_dir)
    if train_samples is not None and len(train_samples):
        write_augmented_batch(run_dir, train_samples)
    report = write_report(run_dir, val_samples, num_workers)
    print(f"report: {report} (eval of best/ in {run_dir / 'eval'})", file=sys.stderr, flush=True)
    return report
