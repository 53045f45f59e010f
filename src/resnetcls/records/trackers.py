"""The two trackers a run can log to, MLflow and W&B (optional extras): opening a tracker run (new, or the
resumed run's again), what each sends (params, metrics, tags, artefacts), the first contact with a tracking
server (fast, one masked line when it fails) and the live URIs this process connected with. tracking.py
decides which trackers a run has and feeds them.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import string
import sys
from pathlib import Path

from ..config import LogConfig
from ..errors import UserError
from ..utils.redact import error_line, is_masked, mask_secrets, without_user_info

TRACKING_FILE = "tracking.json"
# What the caller's report leaves in the run directory, logged as artefacts at the end (besides best/).
REPORT_FILES = ("report.html", "eval/confusion_matrix.png", "eval/confusion_matrix.csv", "eval/metrics.json")
# The first request to a tracking server: no retries, a short timeout (MLflow's own default retries for
# minutes).
FIRST_CONTACT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# The live URIs this process connected with, by their masked (recorded) form: never written anywhere.
_LIVE_URIS: dict[str, str] = {}


class TrackerUnreachable(UserError):
    """A tracker that cannot be reached or used at the start of a run (log.on_tracker_error decides)."""


def require_tracker(module: str, extra: str):
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
    """The first request to a tracker: fast (no retries, MLflow 10 s at most); a failure: one masked line."""
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
        """A new MLflow run, or (known: tracking.json's entry of a resumed run) that run again; RUNNING."""
        mlflow = require_tracker("mlflow", "mlflow")
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
        from mlflow.entities import Param  # optional extra (see require_tracker)

        items = [Param(k, v[:6000]) for k, v in params.items()]  # MLflow's limit on a param value
        for i in range(0, len(items), 100):  # MLflow's limit on params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag  # optional extra (see require_tracker)

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp: float) -> None:
        from mlflow.entities import Metric  # optional extra (see require_tracker)

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
        wandb = require_tracker("wandb", "wandb")
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
        wandb = require_tracker("wandb", "wandb")
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
