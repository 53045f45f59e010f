"""`resnetcls tune`: an Optuna study whose trials are ordinary training runs (DIR/trials/NNNN).

TPE samples each trial's point of the search space (space.py); the engine reports every epoch's validation
metric to the trial (train's on_epoch hook) and the pruner (median, by default) ends poor trials early: a
pruned trial is a complete run directory with trial.json saying "pruned". The study lives in Optuna storage:
SQLite in DIR by default, or any RDB URL (PostgreSQL) that workers on many machines share; the same command
continues a study (load_if_exists). At the end: DIR/best.yaml (the best trial's config, a recipe for
`train --config`) and DIR/report.html (page.py). The URL is handed to the driver as given and shown or
recorded only masked (redact.py); a password may also come from the driver's own sources (PGPASSWORD,
~/.pgpass).
"""

from __future__ import annotations

import copy
import json
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, parse_duration, set_value, validate_config
from ..engine.train import train
from ..errors import UserError
from ..utils.atomic import write_text_atomic
from ..utils.redact import error_line, mask_secrets
from .page import write_outputs
from .space import load_space, suggest, without_fixed

try:  # an optional extra: `pip install 'resnetcls[tune]'`
    import optuna
    from optuna.trial import TrialState
except ImportError:  # said in one line by run_tune
    optuna = None


@dataclass
class TuneSettings:
    """What `tune` was asked (the CLI's flags): trials to finish, time, storage URL, space file, pruner."""

    out: str
    trials: int
    time: str = ""
    storage: str = ""
    space: str | None = None
    study_name: str = "resnetcls"
    pruner: str = "median"
    prune_after: int = 5


def storage_url(settings: TuneSettings) -> str:
    """The Optuna storage URL: --storage, else SQLite in DIR (sqlite:////abs/DIR/study.db)."""
    return settings.storage or f"sqlite:///{(Path(settings.out) / 'study.db').resolve()}"


def connect(url: str, attempts: int = 3):
    """Optuna's RDB storage at url, with heartbeats (other workers fail a dead worker's trial). Workers that
    start together race to create the tables: a failed attempt is retried after a moment."""
    for attempt in range(attempts):
        try:
            with (
                warnings.catch_warnings()
            ):  # heartbeats are "experimental" in Optuna 4-5; they work as documented
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
        except Exception as e:  # a wrong URL, an unreachable server, a missing driver: name the URL
            racing = type(e).__name__ in (
                "IntegrityError",
                "ProgrammingError",
            )  # sqlalchemy's, table creation
            if attempt + 1 == attempts or not racing:
                raise UserError(
                    f"--storage {mask_secrets(url)}: cannot open the study storage: {error_line(e)}"
                ) from None
            time.sleep(1.0 + attempt)


def open_study(settings: TuneSettings, direction: str):
    """Create or continue (load_if_exists) the study in its storage."""
    storage = connect(storage_url(settings))
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=settings.prune_after)
        if settings.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        storage=storage,
        study_name=settings.study_name,
        direction=direction,
        sampler=optuna.samplers.TPESampler(),
        pruner=pruner,
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise UserError(
            f"study {settings.study_name!r} in {mask_secrets(storage_url(settings))}: its value is set "
            f"to {study.direction.name.lower()}, this ckpt.metric would {direction} it (give the study's "
            "ckpt.metric, or another --study-name)"
        )
    return study, storage


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(study, storage) -> list[int]:
    """Trials left RUNNING by a worker of this machine that no longer runs (killed): marked FAIL at once, so
    the same command continues the study. Other machines' dead workers are caught by Optuna's heartbeat."""
    dead = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("host") == socket.gethostname() and not _alive(int(t.user_attrs.get("pid") or 0)):
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(study.study_name), t.number
            )
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
            dead.append(t.number)
    return dead


def trial_config(base: Config, params: dict) -> Config:
    """The base config (defaults, --config, --set, flags) with the trial's sampled values."""
    cfg = copy.deepcopy(base)
    for key, value in params.items():
        set_value(cfg, key, value, source="search space")
    validate_config(cfg)
    return cfg


def make_objective(base: Config, space: dict, out: Path, metric: str):
    """The Optuna objective: one training run in DIR/trials/NNNN, pruned through train's on_epoch hook."""

    def objective(trial) -> float:
        params = suggest(trial, space)
        run_dir = out / "trials" / f"{trial.number:04d}"
        for key, value in (("run_dir", str(run_dir)), ("host", socket.gethostname()), ("pid", os.getpid())):
            trial.set_user_attr(key, value)
        pruned = []

        def on_epoch(epoch: int, metrics: dict) -> bool:
            trial.report(float(metrics[metric]), epoch)
            if trial.should_prune():
                pruned.append(epoch)
            return bool(pruned)

        print(
            f"tune: trial {trial.number} in {run_dir}: "
            + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()),
            file=sys.stderr,
            flush=True,
        )
        summary = train(trial_config(base, params), run_dir, on_epoch=on_epoch).summary
        record = {
            "number": trial.number,
            "state": "pruned" if pruned else "complete",
            "params": params,
            "metric": metric,
            "value": summary["best_value"],
            "pruned_at_epoch": pruned[0] if pruned else None,
        }
        write_text_atomic(run_dir / "trial.json", json.dumps(record, indent=2) + "\n")
        print(
            f"tune: trial {trial.number} {record['state']}"
            + (f" at epoch {pruned[0]}" if pruned else "")
            + f": best {metric} {summary['best_value']:.4f}",
            file=sys.stderr,
            flush=True,
        )
        if pruned:
            raise optuna.TrialPruned()
        return float(summary["best_value"])

    return objective


def counts(study) -> tuple[int, int]:
    """(finished trials: complete or pruned, trials running now)."""
    trials = study.get_trials(deepcopy=False)
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    return done, sum(t.state == TrialState.RUNNING for t in trials)


def run_tune(base: Config, fixed: set[str], settings: TuneSettings) -> dict:
    """Run (or continue) the study until it has settings.trials finished trials or settings.time runs out;
    write best.yaml and report.html; return what happened."""
    if optuna is None:
        raise UserError("tune needs Optuna: pip install 'resnetcls[tune]'")
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    space, dropped = without_fixed(load_space(settings.space), fixed)
    if dropped:
        print(f"tune: fixed on the command line, not searched: {', '.join(dropped)}", file=sys.stderr)
    if not space:
        raise UserError("tune: every key of the search space is fixed on the command line; nothing to search")
    metric = base.ckpt.metric
    direction = "minimize" if metric == "val_loss" else "maximize"
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own one line per trial instead
    # One worker on its own SQLite file: a seeded sampler (the same command samples the same points); workers
    # sharing an RDB study draw their own seeds, or they would all try the same first points.
    seed = None if settings.storage else base.train.seed
    study, storage = open_study(settings, direction)
    if seed is not None:  # offset by the trials so far: a continued study does not repeat its first points
        study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.get_trials(deepcopy=False)))
    dead = fail_dead_trials(study, storage)
    if dead:
        print(f"tune: trial(s) {', '.join(map(str, dead))} of a killed worker marked failed", file=sys.stderr)
    budget_s, started = parse_duration(settings.time), time.monotonic()
    objective = make_objective(base, space, out, metric)
    while sum(counts(study)) < settings.trials:
        if budget_s and time.monotonic() - started >= budget_s:
            print(f"tune: --time {settings.time} is up; no new trials", file=sys.stderr)
            break
        done = counts(study)[0]
        print(f"tune: {done}/{settings.trials} trials finished", file=sys.stderr, flush=True)
        study.optimize(objective, n_trials=1)
    return write_outputs(study, out, metric, direction, mask_secrets(storage_url(settings)))
