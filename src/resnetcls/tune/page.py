"""The end of `tune`: DIR/best.yaml (the best trial's resolved config, a recipe for `train --config`) and
DIR/report.html (trials table, optimisation history, parameter importances), self-contained like
report.py's."""

from __future__ import annotations

import html
import sys
from pathlib import Path

from ..analysis.report import STYLE
from ..analysis.report_sections import embedded_png
from ..utils.atomic import write_text_atomic
from ..utils.redact import mask_secrets

try:  # an optional extra; study.py says so in one line when it is missing
    import optuna
    from optuna.trial import TrialState
except ImportError:
    optuna = None


def write_best_yaml(best, out: Path, metric: str) -> Path | None:
    """best.yaml: the best trial's config.yaml as it trained, with a header saying where it came from."""
    config = Path(best.user_attrs.get("run_dir", "")) / "config.yaml"
    if not config.is_file():  # trained on another machine: its run directory is there, not here
        return None
    head = (
        f"# resnetcls tune: best trial {best.number} ({metric} {best.value:.4f}), run {config.parent}\n"
        f"# train with it: resnetcls train DATA --config best.yaml\n"
    )
    return write_text_atomic(out / "best.yaml", head + config.read_text(encoding="utf-8"))


def importances(study) -> tuple[dict, str]:
    """Optuna's parameter importances (fANOVA), or {} and why (it needs two completed trials that differ)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, f"parameter importances need at least 2 completed trials ({len(complete)} so far)"
    try:
        return dict(optuna.importance.get_param_importances(study)), ""
    except (RuntimeError, ValueError) as e:  # e.g. every completed trial sampled the same point
        return {}, f"parameter importances not available: {e}"


def _trials_table(trials: list, keys: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["trial", "state", "value", *keys, "run"])
    rows = []
    for t in trials:
        cells = [str(t.number), t.state.name.lower(), "" if t.value is None else f"{t.value:.4f}"]
        cells += [
            f"{t.params[k]:.4g}" if isinstance(t.params.get(k), float) else str(t.params.get(k, ""))
            for k in keys
        ]
        cells.append(t.user_attrs.get("run_dir", ""))
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    body = "".join(rows)
    return f"<table class='sortable' id='trials'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_page(study, out: Path, metric: str, direction: str, url: str) -> Path:
    """DIR/report.html of the study as it stands; url (the storage) shown with its password masked."""
    from ..records.figures import optimisation_history, param_importances  # matplotlib: only here

    trials = study.get_trials(deepcopy=False)
    keys = sorted({k for t in trials for k in t.params})
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    history = optimisation_history(
        [t.number for t in done], [t.value for t in done], direction, metric, out / "history.png"
    )
    values, why = importances(study)
    imp = (
        embedded_png(
            param_importances(values, out / "importances.png"), "importances", "parameter importances"
        )
        if values
        else f"<p id='importances'>{html.escape(why)}</p>"
    )
    best = (
        f"trial {study.best_trial.number}: {metric} {study.best_value:.4f}"
        if done
        else "no completed trial yet"
    )
    states = ", ".join(
        f"{sum(t.state == s for t in trials)} {s.name.lower()}"
        for s in TrialState
        if any(t.state == s for t in trials)
    )
    body = (
        f"<h1>resnetcls tune: {html.escape(study.study_name)}</h1>"
        f"<p class='sub'>{html.escape(mask_secrets(url))}</p>"
        f"<p id='img-warning' class='warn'></p><p>{len(trials)} trials ({html.escape(states)}); best "
        f"{html.escape(best)} ({direction})</p><h2>Trials</h2>{_trials_table(trials, keys)}"
        f"<h2>Optimisation history</h2>{embedded_png(history, 'history', 'optimisation history')}"
        f"<h2>Parameter importances</h2>{imp}"
    )
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>resnetcls tune: "
        f"{html.escape(study.study_name)}</title><style>{STYLE}</style></head><body>{body}</body></html>\n"
    )
    return write_text_atomic(out / "report.html", page)


def write_outputs(study, out: Path, metric: str, direction: str, url: str) -> dict:
    """best.yaml (when a trial completed) and report.html; one line each on stderr; what was written."""
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    best = write_best_yaml(study.best_trial, out, metric) if done else None
    report = write_page(study, out, metric, direction, url)
    if best is not None:
        print(
            f"tune: best trial {study.best_trial.number} ({metric} {study.best_value:.4f}); recipe {best}",
            file=sys.stderr,
        )
    else:
        print("tune: no completed trial here, so no best.yaml", file=sys.stderr)
    print(f"tune: report {report}", file=sys.stderr)
    return {
        "trials": len(trials),
        "complete": len(done),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "best_yaml": str(best) if best else None,
        "report": str(report),
        "best_trial": study.best_trial.number if done else None,
    }
