"""Experiment tracking in MLflow and W&B (optional extras: `pip install 'resnetcls[mlflow]'`,
`'resnetcls[wandb]'`).

With log.mlflow=true or log.wandb=true a training run is also one tracker run: the resolved config as params
(MLflow: the flattened dotted keys, as `--set` names them), every epoch's metrics with step = epoch, tags (git
commit, machine, precision) and, once the caller has written the report, the artefacts (best/ model directory,
report.html, the confusion matrix). RUN_DIR/tracking.json keeps the tracker run ids, so a resumed run
continues the same MLflow run and the same W&B run.

Sent: passwords masked (redact.py; only the MLflow client gets the URI with its password); absolute local
paths only with log.share_paths=true (else names, in params and text artefacts); W&B's own metadata collection
off. A tracker that cannot be reached stops the run at the start, within seconds (log.on_tracker_error=warn:
one line and the run goes on without it).

MLflow: through `mlflow.MlflowClient` (no global active run: several runs in one process stay apart). Tracking
URI: log.mlflow_uri, else MLFLOW_TRACKING_URI, else a SQLite store in the run directory
(sqlite:///RUN_DIR/mlflow.db, MLflow 3's recommended local backend, artefacts in RUN_DIR/mlartifacts); the
client also reads MLFLOW_TRACKING_USERNAME/PASSWORD. W&B: log.wandb_mode "offline" (default: no network, files
in RUN_DIR/wandb, upload later with `wandb sync`), "online" or "disabled".
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import yaml

from ..config import LogConfig
from ..errors import UserError
from ..utils.atomic import write_text_atomic
from ..utils.redact import (
    error_line,
    mask_secrets,
    mask_tree,
    share_tree,
    shared_folder,
    strings,
)
from .trackers import (
    REPORT_FILES,
    TRACKING_FILE,
    MlflowTracker,
    TrackerUnreachable,
    WandbTracker,
    first_contact,
    require_tracker,
    usable_uri,
    wandb_settings,
)

_SKIP_KEYS = ("time", "step", "epoch", "kind")


def flatten_params(tree: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"optim.lr": "0.001", ...}: MLflow params are flat strings; lists as JSON."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, name + "."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


def epoch_metrics(record: dict) -> dict[str, float]:
    """The numbers of a logged record worth a curve (no time/step/epoch counters, no matrices, no bools)."""
    return {
        k: float(v)
        for k, v in record.items()
        if k not in _SKIP_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def run_tags(run_dir: Path, precision: str | None) -> dict[str, str]:
    """Tags from the run's environment.json (written by prepare_run): git commit, machine, versions."""
    env_path = run_dir / "environment.json"
    env = json.loads(env_path.read_text(encoding="utf-8")) if env_path.is_file() else {}
    tags = {
        "git_commit": env.get("git_commit"),
        "git_dirty": env.get("git_dirty"),
        "machine": " / ".join(str(v) for v in (env.get("cpu"), env.get("machine"), env.get("platform")) if v),
        "precision": precision,
        "resnetcls": env.get("resnetcls"),
        "torch": env.get("torch"),
        "cuda": env.get("cuda"),
    }
    return {k: str(v) for k, v in tags.items() if v is not None}


def read_ids(run_dir: Path) -> dict:
    path = Path(run_dir) / TRACKING_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path}: not valid JSON ({e.msg}, line {e.lineno}); delete it to start new tracker runs"
        ) from e


def _saved_config(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.yaml"
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def shared_files(run_dir: Path):
    """redact.shared_folder of run_dir's artefacts (best/, REPORT_FILES) as log.share_paths says."""
    names = [f"best/{p.name}" for p in sorted((run_dir / "best").glob("*")) if p.is_file()] + list(
        REPORT_FILES
    )
    return shared_folder(
        run_dir,
        names,
        bool(_saved_config(run_dir).get("log", {}).get("share_paths")),
        strings(_saved_config(run_dir)),
    )


class Trackers:
    """The trackers of one run (none, MLflow, W&B or both), fed by engine/log.py's RunLogger."""

    def __init__(self, run_dir: Path, mlflow: MlflowTracker | None, wandb: WandbTracker | None) -> None:
        self.run_dir, self.mlflow, self.wandb, self.last_epoch = run_dir, mlflow, wandb, 0

    def log(self, record: dict) -> None:
        """Epoch records: every number with step = epoch; the summary: MLflow metrics at the last epoch and
        W&B's run summary. Other records (step logs, the recipe) stay in metrics.jsonl."""
        kind, stamp = record.get("kind"), record.get("time", time.time())
        if kind not in ("epoch", "summary"):
            return
        numbers, self.last_epoch = (
            epoch_metrics(record),
            int(record["epoch"]) if kind == "epoch" else self.last_epoch,
        )
        for tracker in self.all():
            if kind == "summary" and tracker is self.wandb:
                self._call(tracker, tracker.log_summary, numbers)
            else:
                self._call(tracker, tracker.log_metrics, numbers, self.last_epoch, stamp)

    def _call(self, tracker, method, *args) -> None:
        """A tracker lost during the run (its server gone, a full disk) costs one masked warning, not the run:
        it is left out from then on (metrics.jsonl keeps every record)."""
        try:
            method(*args)
        except Exception as e:  # whatever the client raises; its message may name the URI
            name = "MLflow" if tracker is self.mlflow else "W&B"
            print(
                f"warning: {name} failed: {error_line(e)}; the run goes on without it",
                file=sys.stderr,
                flush=True,
            )
            self.mlflow, self.wandb = [None if t is tracker else t for t in (self.mlflow, self.wandb)]

    def all(self) -> list:
        return [t for t in (self.mlflow, self.wandb) if t is not None]

    def close(self, status: str = "FINISHED") -> None:
        """End the tracker runs: FINISHED at the end of training, KILLED when interrupted (resumable)."""
        for tracker in self.all():
            self._call(tracker, tracker.close, status)
        self.mlflow = self.wandb = None


def open_trackers(
    log: LogConfig, run_dir: Path, resumed: bool, precision: str | None = None
) -> Trackers | None:
    """The run's trackers per log.mlflow / log.wandb (None when both are off), reading the resolved config
    from RUN_DIR/config.yaml and the tags from environment.json; a resumed run reopens the runs in
    tracking.json."""
    if not (log.mlflow or log.wandb):
        return None
    run_dir = Path(run_dir)
    config = mask_tree(
        _saved_config(run_dir)
    )  # as sent: passwords masked, absolute paths as names unless asked
    config = config if log.share_paths else share_tree(config)
    known = read_ids(run_dir) if resumed else {}
    tags = run_tags(run_dir, precision)
    ml = (
        _open(
            log,
            "MLflow",
            lambda: MlflowTracker.open(log, run_dir, flatten_params(config), tags, known.get("mlflow")),
        )
        if log.mlflow
        else None
    )
    wb = (
        _open(log, "W&B", lambda: WandbTracker.open(log, run_dir, config, tags, known.get("wandb")))
        if log.wandb
        else None
    )
    # The URI as recorded: masked (a resumed run gets the password again from the config or the environment).
    ids = {
        **({"mlflow": {"tracking_uri": mask_secrets(ml.uri), "run_id": ml.run_id}} if ml else {}),
        **({"wandb": wb.entry} if wb else {}),
    }  # a tracker left out (warn) gets no artefacts at the end either
    write_text_atomic(run_dir / TRACKING_FILE, json.dumps(ids, indent=2) + "\n")
    return Trackers(run_dir, ml, wb) if ml or wb else None


def _open(log: LogConfig, what: str, opener):
    """opener() (a tracker's open); one that cannot be reached stops the run (log.on_tracker_error=stop) or is
    left out with one line on stderr (warn)."""
    try:
        return opener()
    except TrackerUnreachable as e:
        if log.on_tracker_error == "stop":
            raise UserError(
                f"{e} (check the URI and the credentials, or --set log.on_tracker_error=warn to train "
                f"without {what})"
            ) from None
        print(
            f"warning: {e}; training goes on without {what} (log.on_tracker_error=warn)",
            file=sys.stderr,
            flush=True,
        )
        return None


def log_run_artifacts(run_dir: str | os.PathLike) -> None:
    """After the report (cli.cmd_train, demo): log best/, report.html and the confusion matrix to the tracker
    runs recorded in RUN_DIR/tracking.json (nothing when the run was not tracked); one that fails is a
    warning."""
    run_dir, logged = Path(run_dir), []
    known = read_ids(run_dir)
    if not known:
        return
    with shared_files(run_dir) as folder:
        for name, entry in sorted(known.items()):
            try:
                if name == "mlflow":
                    uri = usable_uri(entry["tracking_uri"])
                    client = require_tracker("mlflow", "mlflow").MlflowClient(tracking_uri=uri)
                    with first_contact(uri, "MLflow"):  # a server gone since training: seconds, not retries
                        client.get_run(entry["run_id"])
                    MlflowTracker(client, entry["run_id"], uri).log_artifacts(folder)
                else:
                    wandb = require_tracker("wandb", "wandb")
                    tracker = WandbTracker(
                        wandb.init(
                            project=entry["project"],
                            id=entry["id"],
                            mode=entry["mode"],
                            resume="allow",
                            dir=str(run_dir),
                            reinit="create_new",
                            settings=wandb_settings(wandb),
                        ),
                        entry,
                    )
                    tracker.log_artifacts(folder)
                    tracker.close("FINISHED")
                logged.append(name)
            except Exception as e:  # the server gone since training: the run itself is complete
                if isinstance(e, UserError) and not isinstance(e, TrackerUnreachable):
                    raise  # a missing package
                print(f"warning: {name}: artefacts not logged: {error_line(e)}", file=sys.stderr, flush=True)
    if logged:
        print(
            f"tracking: artefacts logged ({', '.join(logged)}; ids in {run_dir / TRACKING_FILE})",
            file=sys.stderr,
            flush=True,
        )
