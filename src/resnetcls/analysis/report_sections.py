"""The parts of report.html read from a run's files: the Evaluation section (eval/metrics.json: the numbers,
the calibration, the open-set numbers, the figures, the most confused pairs and the per-class table) and the
Lifelong section (metrics.json and R.json of `resnetcls lifelong`), with the HTML pieces report.py shares
(embedded_png, html_value, cards_html).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from ..errors import UserError


def embedded_png(path: Path, element_id: str, alt: str) -> str:
    """An <img> with the PNG at path inside it (base64): report.html and tune's page stay one file."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img id="{element_id}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def html_value(value) -> str:
    """A number with 4 decimals, anything else as escaped text, None as nothing."""
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def cards_html(items: list[tuple[str, object]]) -> str:
    """The headline numbers as cards: (label, value) each."""
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><b>{html_value(v)}</b><span>{html.escape(k)}</span></div>' for k, v in items
        )
        + "</div>"
    )


# Above this many classes the per-class table shows the worst and best classes by F1 (half each);
# per_class.csv in the eval folder holds every class.
PER_CLASS_ROWS = 50


def _class_rows(m: dict, names: list[str]) -> str:
    cols = ("precision", "recall", "f1", "support")
    return "".join(
        "<tr>"
        + f"<td>{html.escape(name)}</td>"
        + "".join(f"<td>{html_value(m['per_class'][name][c])}</td>" for c in cols)
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
        + cards_html(
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


# The open-set numbers of eval (metrics.json "open_set"): (key, label, what it means).
OPEN_SET_ROWS = (
    ("threshold", "threshold", 'images scoring below it are answered "unknown"'),
    ("known_accepted", "known accepted", "share of DATA's images scoring at or above the threshold"),
    ("known_rejected", "known rejected", 'share of DATA\'s images wrongly answered "unknown"'),
    (
        "accuracy_with_rejection",
        "accuracy with rejection",
        "share of DATA's images accepted and right (top-1)",
    ),
    ("accepted_top1", "accepted top-1", "top-1 of the accepted images"),
    ("unknown_rejected", "unknown rejected", 'share of the unknown images answered "unknown"'),
    ("auroc", "AUROC", "chance that a known image scores above an unknown one (1: perfect, 0.5: chance)"),
    ("fpr_at_95_tpr", "FPR at 95% TPR", "share of unknown images accepted where 95% of known ones are"),
)


def open_set_part(block: dict | None, eval_dir: Path) -> str:
    """eval's open-set numbers as a table, with the histogram of known and unknown scores."""
    if not block:
        return ""
    unknown = (
        f"{block['unknown_images']} unknown images of {html.escape(str(block.get('unknown')))}"
        + (f" ({block['unknown_skipped']} unreadable, skipped)" if block.get("unknown_skipped") else "")
        if "unknown_images" in block
        else "no unknown images (eval --unknown FOLDER adds them)"
    )
    score = html.escape(str(block["score"])) + (
        " (the largest softmax probability: the model has no open-set score)" if block.get("fallback") else ""
    )
    rows = "".join(
        f"<tr><td>{label}</td><td>{html_value(block[key])}</td><td>{html.escape(meaning)}</td></tr>"
        for key, label, meaning in OPEN_SET_ROWS
        if key in block
    )
    figure = eval_dir / str(block.get("figure", ""))
    return (
        f"<h3 id='open-set'>Unknown objects</h3><p class='sub'>Open-set score {score}; "
        f"{block['known_images']} known images, {unknown}.</p><div class='figs'>"
        + (
            embedded_png(figure, "fig-open-set", "open-set scores of known and unknown images")
            if block.get("figure") and figure.is_file()
            else ""
        )
        + "<table id='open-set-table'><tr><th>number</th><th>value</th><th>meaning</th></tr>"
        + rows
        + "</table></div>"
    )


def headline_cards(m: dict) -> str:
    """The evaluation's headline numbers as cards (the worst class where metrics.json names it)."""
    return cards_html(
        [
            ("top-1", m["top1"]),
            (f"top-{m.get('top5_k', 5)}", m["top5"]),
            ("balanced accuracy", m["balanced_accuracy"]),
            *(
                [(f"worst-class recall ({m['worst_class']})", m["worst_class_recall"])]
                if m.get("worst_class")
                else []
            ),
            ("macro precision", m["macro_precision"]),
            ("macro recall", m["macro_recall"]),
            ("macro F1", m["macro_f1"]),
            ("ECE", m["ece"]),
            ("NLL", m["nll"]),
        ]
    )


def eval_section(eval_dir: Path) -> str:
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
        headline_cards(m),
        _calibration_part(m.get("calibration")),
        open_set_part(m.get("open_set"), eval_dir),
    ]
    figs = [
        ("confusion", "confusion_matrix.png", "confusion matrix"),
        ("reliability", "reliability.png", "reliability diagram"),
        ("wrong", "most_confident_wrong.png", "most confidently wrong images, each beside its Grad-CAM"),
    ]
    shown = [
        embedded_png(eval_dir / name, f"fig-{key}", alt)
        for key, name, alt in figs
        if (eval_dir / name).is_file()
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


def lifelong_section(run_dir: Path) -> str:
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
    rows = "".join(f"<tr><th>{k}</th><td>{html_value(m[k])}</td></tr>" for k in keys if k in m)
    tasks = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{html_value(s)}</td><td>{html_value(f)}</td></tr>"
        for n, s, f in zip(
            m["task_names"], m["train_seconds_per_task"], m.get("forgetting", []) + [None] * 99
        )
    )
    fig = (
        embedded_png(run_dir / "R.png", "lifelong-R", "accuracy matrix R")
        if (run_dir / "R.png").is_file()
        else ""
    )
    return (
        f"<h2>Lifelong: {html.escape(str(m['strategy']))} over {len(m['task_names'])} tasks</h2>"
        f"<div class='figs'>{fig}<table id='lifelong-metrics'>{rows}</table>"
        f"<table><tr><th>task</th><th>train s</th><th>forgetting</th></tr>{tasks}</table></div>"
        + _matrix_table(m)
    )


def _matrix_table(m: dict) -> str:
    """R as numbers (row: after training that task, column: accuracy on that task), b the first row."""
    names = m["task_names"]
    after = ["before"] + (names if m.get("strategy") != "joint" else ["joint"])
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = "".join(
        f"<tr><th>{html.escape(a)}</th>" + "".join(f"<td>{html_value(float(v))}</td>" for v in row) + "</tr>"
        for a, row in zip(after, [m["b"], *m["R"]])
    )
    return f"<table id='lifelong-R-matrix'><tr><th>after \\ on</th>{head}</tr>{body}</table>"


def race_record(run_dir: Path) -> dict | None:
    """The last {"kind": "race"} record of RUN_DIR/metrics.jsonl (the raced auto recipe), or None."""
    path = run_dir / "metrics.jsonl"
    found = None
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        if '"race"' in line:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # read_records names a malformed line
            found = record if isinstance(record, dict) and record.get("kind") == "race" else found
    return found


def race_section(run_dir: Path) -> str:
    """The raced auto recipe's table: each candidate's validation top-1 at each rung (step target), its
    schedule and measured step time, the winner marked; "" when the run had no race."""
    race = race_record(run_dir)
    if not race or not race.get("entries"):
        return ""
    rungs, scores, winner = race.get("rungs", []), race.get("scores", []), race.get("winner", "")
    head = "".join(f"<th>top-1 at step {html.escape(str(steps))}</th>" for steps in rungs)
    rows = []
    for entry in race["entries"]:
        name = str(entry.get("name", ""))
        cells = "".join(
            f"<td>{rung[name]:.1%}</td>" if name in rung else "<td>-</td>"
            for rung in scores + [{}] * (len(rungs) - len(scores))
        )
        mark = " (winner)" if name == winner else ""
        rows.append(
            f"<tr><th>{html.escape(name)}{mark}</th>{cells}<td>{entry.get('epochs', '')}</td>"
            f"<td>{float(entry.get('step_s', 0.0)):.3g}</td></tr>"
        )
    share = float(race.get("share_s", 0.0))
    return (
        f"<h2>Recipe race</h2><p class='sub'>successive halving on {share:.3g} s of the "
        f"{float(race.get('budget_s', 0.0)):.3g} s budget; the better half of each rung goes on, the winner "
        f"continues its own schedule</p><table id='race'><tr><th>candidate</th>{head}<th>epochs</th>"
        f"<th>s/step</th></tr>{''.join(rows)}</table>"
    )
