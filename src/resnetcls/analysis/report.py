"""`resnetcls report RUN_DIR`: one self-contained report.html (also written at the end of training).

Every figure is embedded as a base64 PNG and the few lines of CSS and JavaScript are inline, so the file
can be mailed, archived or opened offline. It shows the curves per epoch, the LR range test (lr_find.json
of `train --lr auto` or `lr-find --out DIR`; such a folder alone gets a report of just that), the evaluation
in RUN_DIR/eval (figures, with a caption naming the classes the heatmap shows, headline numbers, a per-class
table sortable by any column: every class up to PER_CLASS_ROWS, else the worst and the best by F1, every class
being in eval/per_class.csv), the resolved config and the environment.
"""

from __future__ import annotations

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
from .multieval import evaluation_section
from .report_sections import (
    cards_html,
    embedded_png,
    html_value,
    lifelong_section,
    race_section,
)

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


def _curves_section(run_dir: Path, epochs: list[dict]) -> str:
    if not epochs:
        return "<h2>Training curves</h2><p>No epochs logged in metrics.jsonl.</p>"
    from ..records.figures import training_curves

    path = training_curves(epochs, run_dir / "curves.png")
    return "<h2>Training curves</h2>" + embedded_png(
        path, "curves", "loss, top-1 and learning rate per epoch"
    )


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
    if labels.ndim == 2:  # multi-label: multi-hot rows
        targets = labels.float()
    else:
        targets = torch.nn.functional.one_hot(labels, len(train_samples.classes)).float()
    if loader.batch_mix is not None:
        images, targets = loader.batch_mix(images, labels, batch["seed"])
    mean = torch.tensor(pipeline.preprocess["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pipeline.preprocess["std"]).view(1, 3, 1, 1)
    pixels = ((images * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    captions = []
    for row in targets:
        shares = sorted(((float(w), c) for c, w in enumerate(row) if w > 0.005), reverse=True)
        if not shares:  # a multi-label image without any of the classes
            captions.append("(no label)")
            continue
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
    return "<h2>Training images as the model sees them</h2>" + embedded_png(
        path, "augmented", "an augmented training batch"
    )


def _lr_find_section(run_dir: Path) -> str:
    """The LR range test in RUN_DIR (`train --lr auto`, `lr-find --out`): plot, suggestion, its rule."""
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
    fig = (
        embedded_png(png, "lr-find", "LR range test: training loss against learning rate")
        if png.is_file()
        else ""
    )
    return (
        f"<h2>Learning-rate range test</h2><p id='lr-suggestion'>suggested lr <b>{lr:.3g}</b> "
        f"(rule: {html.escape(rule)}); {len(points)} steps, {html.escape(str(c.get('stopped', '')))}</p>"
        f"<p class='sub'>{html.escape(swept)}</p>{fig}"
    )


def _env_section(run_dir: Path, summary: dict) -> str:
    def table(d: dict) -> str:
        return (
            "<table>"
            + "".join(
                f"<tr><th>{html.escape(str(k))}</th><td>{html_value(v)}</td></tr>"
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
    """Write RUN_DIR/report.html; with eval_samples, first evaluate the best model on them (RUN_DIR/eval)."""
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
        (k.replace("_", " "), summary[k])
        for k in ("best_val_map", "best_val_top1", "best_epoch", "seconds")
        if k in summary
    ]
    body = (
        f"<h1>resnetcls run: {html.escape(run_dir.resolve().name)}</h1>"
        f"<p class='sub'>{html.escape(str(run_dir.resolve()))}</p><p id='img-warning' class='warn'></p>"
        + (
            cards_html(headline)
            + lifelong_section(run_dir)
            + race_section(run_dir)
            + _curves_section(run_dir, epochs)
            if is_run
            else ""
        )
        + _lr_find_section(run_dir)
        + (
            _augmented_section(run_dir)
            + evaluation_section(run_dir / "eval")  # a multi-label model's, or eval_section
            + _env_section(run_dir, summary)
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
