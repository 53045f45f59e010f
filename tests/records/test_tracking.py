"""Experiment tracking: a real `mlflow server` (SQLite backend) on 127.0.0.1, a password kept out of every
file and output, an unreachable or vanished server as one masked line, and a killed run resumed into the same
tracker run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from resnetcls.records.envinfo import git_revision
from resnetcls.records.tracking import epoch_metrics, flatten_params, log_run_artifacts
from tests.conftest import run_cli

mlflow = pytest.importorskip("mlflow", reason="MLflow is not installed: pip install 'resnetcls[mlflow]'")

# 33 training images, batch 8 -> 5 steps an epoch; one thread each: the machine is shared.
ARGS = [
    "--set",
    "train.auto_recipe=false",
    "--model",
    "resnet18",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--epochs",
    "2",
    "--set",
    "model.width=8",
    "--set",
    "data.num_workers=0",
    "--set",
    "log.tensorboard=false",
    "--set",
    "optim.lr=0.01",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server(str):
    """The server's URI; .root: the folder of its store (mlflow.db, artifacts/, server.log)."""

    root = None


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` with a SQLite backend and proxied artefacts, up once for the module (it takes 20-30 s
    to start on a loaded 2-core machine), stopped after."""
    root, port = tmp_path_factory.mktemp("mlflow-server"), free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=ENV,
    )
    uri, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, "mlflow server exited:\n" + (root / "server.log").read_text()
            assert time.monotonic() < deadline, (
                "mlflow server not healthy after 180 s:\n" + (root / "server.log").read_text()
            )
            time.sleep(0.5)
        server = Server(uri)
        server.root = root
        yield server
    finally:
        # Its own session: the server and its workers. SIGKILL: nothing of it is kept, and a graceful stop
        # takes seconds.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


def mlflow_run(run_dir, uri: str | None = None):
    ids = json.loads((run_dir / "tracking.json").read_text())["mlflow"]
    client = mlflow.MlflowClient(tracking_uri=uri or ids["tracking_uri"])
    return client, client.get_run(ids["run_id"])


def artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def files_holding(text: str, *folders) -> list[str]:
    """Every file under folders whose bytes hold text (as is, or as JSON or HTML would escape it)."""
    forms = {text.encode(), json.dumps(text)[1:-1].encode()}
    return [
        str(p)
        for folder in folders
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file() and any(form in p.read_bytes() for form in forms)
    ]


def test_a_run_logged_with_a_password_in_the_uri_keeps_it_out_of_every_file_output_and_the_server(
    tiny_data, tmp_path, mlflow_server, monkeypatch
):
    """The client gets the URI with its password (the server takes it: basic auth is the proxy's business);
    the run directory, stdout/stderr and the server's whole store hold no password and, log.share_paths being
    false, no absolute path of the data or the run: params, tags, metrics and artefacts all the same."""
    out, password = tmp_path / "run", "S3cretPW-mlflow"
    uri = mlflow_server.replace("http://", f"http://tracker:{password}@")
    args = [
        "train",
        tiny_data,
        *ARGS,
        "--set",
        "log.mlflow=true",
        "--set",
        f"log.mlflow_uri={uri}",
        "--set",
        "log.mlflow_experiment=server-test",
        "--out",
        out,
    ]
    monkeypatch.setattr(sys, "argv", ["resnetcls", *map(str, args)])  # what environment.json records
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert password not in r.stdout + r.stderr and "tracker:***@" in r.stderr  # MLflow's run link, masked
    assert files_holding(password, out, mlflow_server.root) == []
    assert (
        "tracker:***@" in (out / "tracking.json").read_text()
        and "tracker:***@" in (out / "config.yaml").read_text()
    )
    assert (
        files_holding(str(tiny_data), mlflow_server.root) == []
        and files_holding(str(out), mlflow_server.root) == []
    )
    client, run = mlflow_run(out, mlflow_server)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "server-test"
    params = run.data.params  # the resolved config under the names `--set` uses
    assert (
        params["optim.lr"] == "0.01" and params["model.name"] == "resnet18" and params["train.epochs"] == "2"
    )
    assert params["log.mlflow"] == "True" and params["log.mlflow_uri"] == mlflow_server.replace(
        "http://", "http://tracker:***@"
    )
    assert params["data.train"] == tiny_data.name  # a name, not the absolute path (log.share_paths=false)
    history = client.get_metric_history(run.info.run_id, "val/top1")
    assert sorted(m.step for m in history) == [1, 2]  # step = epoch
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = {m["epoch"]: m["val/top1"] for m in metrics if m["kind"] == "epoch"}
    assert {m.step: m.value for m in history} == pytest.approx(logged)
    assert {"train/loss", "val/loss", "best_val_top1"} <= set(run.data.metrics)
    tags = run.data.tags
    assert tags["precision"] in ("bf16", "fp32") and tags["machine"]
    commit, _ = git_revision()
    if commit is not None:
        assert tags["git_commit"] == tags["mlflow.source.git.commit"] == commit
    assert artifact_paths(client, run.info.run_id) >= {"best", "eval", "report.html"}
    assert artifact_paths(client, run.info.run_id, "best") == {"best/model.json", "best/model.safetensors"}
    assert "eval/confusion_matrix.png" in artifact_paths(client, run.info.run_id, "eval")
    assert "tracking: artefacts logged" in r.stderr
    assert not list(out.glob(".tracker-*"))  # the shared copies are gone


@pytest.mark.parametrize("choice", ["stop", "warn"])
def test_an_unreachable_tracking_server_is_one_masked_line_at_the_start(tiny_data, tmp_path, choice):
    """A closed port on 127.0.0.1: found out by the first request (no retries), before training: stop = exit 2
    with nothing trained; warn = one warning and the run trains without MLflow. A subprocess with a timeout
    below MLflow's own retries (7 with exponential backoff, about 4 minutes) guards against the wait."""
    out, port = tmp_path / "run", free_port()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "resnetcls",
            "train",
            str(tiny_data),
            *ARGS,
            "--epochs",
            "1",
            "--set",
            "log.mlflow=true",
            "--set",
            f"log.mlflow_uri=http://tracker:S3cretPW@127.0.0.1:{port}",
            "--set",
            f"log.on_tracker_error={choice}",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=200,
    )
    lines = [line for line in proc.stderr.splitlines() if f"127.0.0.1:{port}" in line]
    assert len(lines) == 1 and "S3cretPW" not in proc.stdout + proc.stderr, proc.stderr
    assert f"MLflow at http://tracker:***@127.0.0.1:{port} cannot be reached: Connection refused" in lines[0]
    if choice == "stop":
        assert (
            proc.returncode == 2
            and lines[0].startswith("resnetcls: error:")
            and "Traceback" not in proc.stderr
        )
        assert "log.on_tracker_error=warn" in lines[0] and not (out / "checkpoints").exists()
    else:
        assert proc.returncode == 0, proc.stderr
        assert lines[0].startswith("warning:") and "training goes on without MLflow" in lines[0]
        assert (out / "best" / "model.json").is_file() and json.loads(
            (out / "tracking.json").read_text()
        ) == {}


def test_a_server_gone_before_the_artefacts_is_one_masked_warning(tiny_run, tmp_path, capsys):
    """The end of a tracked run whose server stopped answering since: the artefacts are not sent, one warning
    says why (the first request without retries), and the command does not fail."""
    run, port = tmp_path / "run", free_port()
    shutil.copytree(tiny_run, run)
    (run / "tracking.json").write_text(
        json.dumps(
            {
                "mlflow": {  # as recorded: the password masked
                    "tracking_uri": f"http://tracker:***@127.0.0.1:{port}",
                    "run_id": "0" * 32,
                }
            }
        )
    )
    log_run_artifacts(run)
    # The masked password is never sent as one: without it in the environment, the URI goes without user info.
    assert capsys.readouterr().err == (
        f"warning: mlflow: artefacts not logged: MLflow at http://127.0.0.1:{port} "
        "cannot be reached: Connection refused\n"
    )
    assert not list(run.glob(".tracker-*"))


def test_a_killed_run_resumed_continues_the_same_mlflow_run(tiny_data, tmp_path, mlflow_server):
    """SIGKILL in epoch 2 (a checkpoint every step), then --resume: one MLflow run with both epochs. The URI
    comes from the environment with a password this time; the resume, in an environment without it, reconnects
    with the recorded (masked) URI's server and the client's own credentials, and no file holds the
    password."""
    out, password = tmp_path / "run", "S3cretPW-env"
    env = {**ENV, "MLFLOW_TRACKING_URI": mlflow_server.replace("http://", f"http://tracker:{password}@")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "resnetcls",
            "train",
            str(tiny_data),
            *ARGS,
            "--set",
            "log.mlflow=true",
            "--set",
            "ckpt.every_steps=1",
            "--set",
            "ckpt.keep_last=50",
            "--out",
            str(out),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    marker, deadline = out / "checkpoints" / "step-00000007.json", time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stderr.read()
    proc.kill()
    proc.wait(timeout=60)
    proc.stderr.close()
    client, before = mlflow_run(out, mlflow_server)
    assert before.info.status == "RUNNING"
    assert [m.step for m in client.get_metric_history(before.info.run_id, "val/top1")] == [1]
    r = run_cli("train", "--resume", out)
    assert r.returncode == 0, r.stderr
    client, after = mlflow_run(out, mlflow_server)
    assert after.info.run_id == before.info.run_id and after.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(after.info.run_id, "val/top1")) == [1, 2]
    assert "best/model.json" in artifact_paths(client, after.info.run_id, "best")
    assert len(client.search_runs([after.info.experiment_id])) == 1
    assert files_holding(password, out) == [] and password not in r.stdout + r.stderr


def test_a_bad_wandb_mode_is_named(tiny_data, tmp_path):
    r = run_cli("train", tiny_data, *ARGS, "--set", "log.wandb_mode=cloud", "--out", tmp_path / "run")
    assert r.returncode == 2 and "log.wandb_mode='cloud'" in r.stderr and "offline" in r.stderr


def test_params_are_flat_dotted_strings_and_only_numbers_become_metrics():
    assert flatten_params({"optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "log": {"wandb": False}}) == {
        "optim.lr": "0.1",
        "optim.betas": "[0.9, 0.99]",
        "log.wandb": "False",
    }
    record = {
        "kind": "epoch",
        "epoch": 3,
        "step": 30,
        "time": 1.0,
        "val/top1": 0.5,
        "bad_images": 0,
        "val_confusion": [[1, 0], [0, 1]],
        "flag": True,
    }
    assert epoch_metrics(record) == {"val/top1": 0.5, "bad_images": 0.0}
