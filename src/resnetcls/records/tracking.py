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

import contextlib
import io
import json
import os
import secrets
import string
import sys
import time
from pathlib import Path

import yaml

from ..config import LogConfig
from ..errors import UserError
from ..utils.atomic import write_text_atomic
from ..utils.redact import (
    error_line,
    is_masked,
    mask_secrets,
    mask_tree,
    share_tree,
    shared_folder,
    strings,
    without_user_info,
)

TRACKING_FILE = "tracking.json"
# What the caller's report leaves in the run directory, logged as artefacts at the end (besides best/).
REPORT_FILES = ("report.html", "eval/confusion_matrix.png", "eval/confusion_matrix.csv", "eval/metrics.json")
_SKIP_KEYS = ("time", "step", "epoch", "kind")
# The first request to a tracking server: no retries, a short timeout (MLflow's own default retries for
# minutes).
FIRST_CONTACT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# The live URIs this process connected with, by their masked (recorded) form: never written anywhere.
_LIVE_URIS: dict[str, str] = {}


class TrackerUnreachable(UserError):
    """A tracker that cannot be reached or used at the start of a run (log.on_tracker_error decides)."""


def _require(module: str, extra: str):
    """Import an optional tracker, or the one-line error naming the extra that installs it."""
    try:
        if module == "mlflow":
            import mlflow  # optional extra: only with log.mlflow=true

            return mlflow
        import wandb  # optional extra: only with log.wandb=true

        return wandb
    except ImportError:
        raise UserError(
            f"log.{extra}=true: the {module} package is not installed; pip install 'resnetcls[{extra}]'"
        ) from None


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


def mlflow_uri(log: LogConfig, run_dir: Path) -> str:
    """log.mlflow_uri, else MLFLOW_TRACKING_URI, else the run directory's own SQLite store."""
    return (
        log.mlflow_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{(Path(run_dir) / 'mlflow.db').resolve()}"
    )


def usable_uri(uri: str) -> str:
    """uri, or for a recorded one with its password masked: the live URI it stands for (this process's or
    MLFLOW_TRACKING_URI), else uri without user info (the client reads MLFLOW_TRACKING_USERNAME/PASSWORD)."""
    if not is_masked(uri):
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI", "")
    return _LIVE_URIS.get(uri) or (env if env and mask_secrets(env) == uri else without_user_info(uri))


@contextlib.contextmanager
def first_contact(uri: str, what: str):
    """The first request to a tracker: fast (no retries, 10 s at most for MLflow), a failure one masked
    line."""
    saved = {k: os.environ.get(k) for k in FIRST_CONTACT}
    os.environ.update(FIRST_CONTACT)
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # refused, timed out, 401/403, a store that cannot be opened: the client's words
        raise TrackerUnreachable(
            f"{what} at {mask_secrets(uri)} cannot be reached: {error_line(e)}"
        ) from None
    finally:  # the user's own settings back for the rest of the run
        os.environ.update({k: v for k, v in saved.items() if v is not None})
        for key in [k for k, v in saved.items() if v is None]:
            os.environ.pop(key, None)


class MlflowTracker:
    """One MLflow run of a training run, by id through MlflowClient."""

    def __init__(self, client, run_id: str, uri: str) -> None:
        self.client, self.run_id, self.uri = client, run_id, uri

    @classmethod
    def open(
        cls, log: LogConfig, run_dir: Path, params: dict, tags: dict, known: dict | None
    ) -> MlflowTracker:
        """A new MLflow run, or (known: tracking.json's entry of a resumed run) the same run again,
        RUNNING."""
        mlflow = _require("mlflow", "mlflow")
        current = mlflow_uri(log, run_dir)  # a resumed run: the recorded server, unless it is the current one
        uri = usable_uri(
            current if not known or mask_secrets(current) == known["tracking_uri"] else known["tracking_uri"]
        )
        _LIVE_URIS[mask_secrets(uri)] = uri
        client = mlflow.MlflowClient(tracking_uri=uri)
        if known:
            with first_contact(uri, "MLflow"):
                try:
                    run = client.get_run(known["run_id"])
                except mlflow.exceptions.MlflowException as e:
                    if getattr(e, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                        raise
                    raise UserError(
                        f"{run_dir / TRACKING_FILE}: MLflow run {known['run_id']} not found at "
                        f"{mask_secrets(uri)}; delete the file to start a new MLflow run"
                    ) from None
            tracker = cls(client, run.info.run_id, uri)
            client.update_run(tracker.run_id, status="RUNNING")
            params = {k: v for k, v in params.items() if k not in run.data.params}  # params are write-once
        else:
            with first_contact(uri, "MLflow"):
                experiment = _experiment_id(client, log.mlflow_experiment, uri, run_dir)
            run = client.create_run(experiment, run_name=Path(run_dir).name)
            tracker = cls(client, run.info.run_id, uri)
        tracker.log_params(params)
        tracker.set_tags(
            {
                "mlflow.source.name": "resnetcls train",
                "mlflow.source.type": "LOCAL",
                **({"mlflow.source.git.commit": tags["git_commit"]} if "git_commit" in tags else {}),
                **tags,
            }
        )
        return tracker

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param  # optional extra (see _require)

        items = [Param(k, v[:6000]) for k, v in params.items()]  # MLflow's limit on a param value
        for i in range(0, len(items), 100):  # MLflow's limit on params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag  # optional extra (see _require)

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp: float) -> None:
        from mlflow.entities import Metric  # optional extra (see _require)

        ms = int(timestamp * 1000)
        items = [Metric(k, v, ms, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):  # MLflow's limit on metrics per batch
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def close(self, status: str) -> None:
        printed = io.StringIO()  # MLflow prints "View run ... at URL" to stdout, URL with its user info
        with contextlib.redirect_stdout(printed):
            self.client.set_terminated(self.run_id, status=status)
        for line in printed.getvalue().splitlines():  # stdout is for programs; the links go to stderr, masked
            print(f"tracking: {mask_secrets(line).strip()}", file=sys.stderr, flush=True)

    def log_artifacts(self, run_dir: Path) -> None:
        """best/ and the report files of run_dir (shared_files' folder: what may be sent)."""
        if (run_dir / "best").is_dir():
            self.client.log_artifacts(self.run_id, str(run_dir / "best"), artifact_path="best")
        for name in REPORT_FILES:
            if (run_dir / name).is_file():
                self.client.log_artifact(
                    self.run_id,
                    str(run_dir / name),
                    artifact_path=str(Path(name).parent) if "/" in name else None,
                )


def _saved_config(run_dir: Path) -> dict:
    path = Path(run_dir) / "config.yaml"
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def shared_files(run_dir: Path):
    """redact.shared_folder of run_dir's artefacts (best/, REPORT_FILES), as log.share_paths in config.yaml
    says."""
    names = [f"best/{p.name}" for p in sorted((run_dir / "best").glob("*")) if p.is_file()] + list(
        REPORT_FILES
    )
    return shared_folder(
        run_dir,
        names,
        bool(_saved_config(run_dir).get("log", {}).get("share_paths")),
        strings(_saved_config(run_dir)),
    )


def _experiment_id(client, name: str, uri: str, run_dir: Path) -> str:
    """The experiment named name, created if needed; in the run directory's own store its artefacts stay in
    RUN_DIR/mlartifacts (MLflow's default would be ./mlruns of whatever folder the command ran in)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    local = uri == f"sqlite:///{(Path(run_dir) / 'mlflow.db').resolve()}"
    location = (Path(run_dir) / "mlartifacts").resolve().as_uri() if local else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another worker created it between the two calls: take theirs
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def new_wandb_id() -> str:
    """A W&B run id in W&B's own form: 8 lowercase letters and digits."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def wandb_settings(wandb):
    """Quiet (our stderr stays ours) and sending only what we log: W&B's own collection of the command line,
    program path, host, git remote, code and installed packages off (a command line or a remote URL may hold a
    password; paths are the user's). A silent online server: given up after 15 s, not W&B's 90 s."""
    return wandb.Settings(
        silent=True,
        console="off",
        x_disable_meta=True,
        disable_git=True,
        disable_code=True,
        save_code=False,
        x_save_requirements=False,
        init_timeout=os.environ.get("WANDB_INIT_TIMEOUT", 15),
    )


class WandbTracker:
    """One W&B run of a training run (its id in tracking.json); offline by default, files in RUN_DIR/wandb."""

    def __init__(self, run, entry: dict) -> None:
        self.run, self.entry = run, entry

    @classmethod
    def open(
        cls, log: LogConfig, run_dir: Path, config: dict, tags: dict, known: dict | None
    ) -> WandbTracker:
        wandb = _require("wandb", "wandb")
        entry = known or {"id": new_wandb_id(), "project": log.wandb_project, "mode": log.wandb_mode}
        server = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        with first_contact(
            server if entry["mode"] == "online" else str(run_dir / "wandb"), f"W&B ({entry['mode']})"
        ):
            run = wandb.init(
                project=entry["project"],
                id=entry["id"],
                mode=entry["mode"],
                resume="allow",
                dir=str(run_dir),
                name=Path(run_dir).name,
                config=config,
                reinit="create_new",
                tags=[f"{k}:{tags[k]}"[:64] for k in ("precision", "git_commit") if k in tags],
                notes=tags.get("machine"),
                settings=wandb_settings(wandb),
            )
        run.config.update({"tags": tags}, allow_val_change=True)
        run.define_metric("epoch")
        run.define_metric("*", step_metric="epoch")  # W&B's own way to plot against a custom step
        return cls(run, entry)

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp: float) -> None:
        self.run.log({"epoch": step, **metrics})

    def log_summary(self, metrics: dict[str, float]) -> None:
        self.run.summary.update(metrics)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)

    def log_artifacts(self, run_dir: Path) -> None:
        wandb = _require("wandb", "wandb")
        if (run_dir / "best").is_dir():
            model = wandb.Artifact(f"model-{self.run.id}", type="model")
            model.add_dir(str(run_dir / "best"))
            self.run.log_artifact(model, aliases=["best"])
        files = [name for name in REPORT_FILES if (run_dir / name).is_file()]
        if files:
            report = wandb.Artifact(f"report-{self.run.id}", type="report")
            for name in files:
                report.add_file(str(run_dir / name), name=name)
            self.run.log_artifact(report)


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
        """End the tracker runs: FINISHED at the end of training, KILLED when it was interrupted
        (resumable)."""
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
                    client = _require("mlflow", "mlflow").MlflowClient(tracking_uri=uri)
                    with first_contact(uri, "MLflow"):  # a server gone since training: seconds, not retries
                        client.get_run(entry["run_id"])
                    MlflowTracker(client, entry["run_id"], uri).log_artifacts(folder)
                else:
                    wandb = _require("wandb", "wandb")
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
