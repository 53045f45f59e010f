"""The MLflow and W&B trackers: where MLflow logs without a URI, the URI a recorded (masked) one stands for,
the first contact with a server as one masked line, W&B's offline run files and its settings, and the one-line
error when a tracker's package is missing."""

from __future__ import annotations

import glob
import json
import os
import struct
import sys
import time

import pytest

from resnetcls.config import LogConfig
from resnetcls.records.trackers import (
    FIRST_CONTACT,
    TrackerUnreachable,
    first_contact,
    mlflow_uri,
    new_wandb_id,
    usable_uri,
    wandb_settings,
)
from tests.conftest import run_cli
from tests.records.test_tracking import ARGS, artifact_paths, files_holding, mlflow_run


def test_the_mlflow_uri_is_the_config_s_then_the_environment_s_then_the_run_directory_s_store(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env.example:5000")
    assert (
        mlflow_uri(LogConfig(mlflow_uri="http://config.example:5000"), tmp_path)
        == "http://config.example:5000"
    )
    assert mlflow_uri(LogConfig(), tmp_path) == "http://env.example:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert mlflow_uri(LogConfig(), tmp_path) == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"


def test_a_masked_uri_stands_for_the_environment_s_live_one_else_it_loses_its_user_info(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert usable_uri("http://tracker:pw@host:5000") == "http://tracker:pw@host:5000"  # not masked: as is
    assert usable_uri("http://tracker:***@other-host:5000") == "http://other-host:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker:S3cret@other-host:5000")
    assert usable_uri("http://tracker:***@other-host:5000") == "http://tracker:S3cret@other-host:5000"


def test_a_failed_first_contact_is_one_masked_line_and_the_user_s_settings_come_back(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    with pytest.raises(TrackerUnreachable) as raised:
        with first_contact("http://tracker:S3cret@127.0.0.1:9", "MLflow"):
            assert {k: os.environ[k] for k in FIRST_CONTACT} == FIRST_CONTACT
            raise ConnectionError("Connection refused\nsecond line")
    message = str(raised.value)
    assert message.startswith("MLflow at http://tracker:***@127.0.0.1:9 cannot be reached: ")
    assert "S3cret" not in message and "\n" not in message
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "120"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


def test_a_wandb_run_id_is_eight_lowercase_letters_and_digits():
    ids = {new_wandb_id() for _ in range(20)}
    assert len(ids) == 20
    assert all(len(i) == 8 and i.isalnum() and i == i.lower() for i in ids)


def test_without_a_uri_mlflow_logs_to_a_sqlite_store_in_the_run_directory(tiny_data, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory (MLflow's ./mlruns default)
    out = tmp_path / "run"
    r = run_cli("train", tiny_data, *ARGS, "--epochs", "1", "--set", "log.mlflow=true", "--out", out)
    assert r.returncode == 0, r.stderr
    assert (out / "mlflow.db").is_file() and not (tmp_path / "mlruns").exists()
    client, run = mlflow_run(out, f"sqlite:///{out / 'mlflow.db'}")
    assert run.info.status == "FINISHED" and run.data.params["data.image_size"] == "32"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [1]
    assert (out / "mlartifacts").is_dir() and "report.html" in artifact_paths(client, run.info.run_id)


def wandb_records(path: str):
    """The records of a W&B offline run file (LevelDB-log framing: 7-byte header, 32 KiB blocks, each record
    a 7-byte header of CRC, length and type FULL/FIRST/MIDDLE/LAST), as wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, pieces = open(path, "rb").read(), 7, 32768, b""
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pieces, pos = pieces + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record
            pieces = b""


def finished_records(files: list[str], timeout_s: float = 60) -> list:
    """Every record of the run files once each holds its exit record: W&B's service process may still be
    writing the last run's file for a moment after run.finish() returned."""
    deadline = time.monotonic() + timeout_s
    while True:
        per_file = [list(wandb_records(f)) for f in files]
        if all(any(r.WhichOneof("record_type") == "exit" for r in recs) for recs in per_file):
            return [r for recs in per_file for r in recs]
        assert time.monotonic() < deadline, (
            f"W&B run files without an exit record after {timeout_s} s: {files}"
        )
        time.sleep(0.5)


def test_wandb_offline_writes_its_run_files_with_every_epoch_and_the_model_artefact(
    tiny_data, tmp_path, monkeypatch
):
    """Also what W&B keeps to upload: no password of the config or the command line (its own metadata
    collection is off) and no absolute path of the data (log.share_paths=false)."""
    pytest.importorskip("wandb", reason="wandb is not installed: pip install 'resnetcls[wandb]'")
    out, password = tmp_path / "run", "S3cretPW-wandb"
    args = [
        "train",
        tiny_data,
        *ARGS,
        "--set",
        "log.wandb=true",
        "--out",
        out,
        "--set",
        f"log.mlflow_uri=http://tracker:{password}@127.0.0.1:9",
    ]  # recorded, not used: MLflow is off
    monkeypatch.setattr(sys, "argv", ["resnetcls", *map(str, args)])
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    entry = json.loads((out / "tracking.json").read_text())["wandb"]
    assert entry["mode"] == "offline" and entry["project"] == "resnetcls"
    files = sorted(glob.glob(str(out / "wandb" / "offline-run-*" / f"run-{entry['id']}.wandb")))
    assert files, f"no offline run files in {out / 'wandb'}"
    records = finished_records(files)
    history = [
        {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
        for rec in records
        if rec.WhichOneof("record_type") == "history"
    ]
    assert [h["epoch"] for h in history] == [1, 2]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["val/top1"] for h in history] == pytest.approx(
        [m["val/top1"] for m in logged if m["kind"] == "epoch"]
    )
    assert {rec.run.run_id for rec in records if rec.WhichOneof("record_type") == "run"} == {entry["id"]}
    artefacts = {
        (rec.artifact.name, rec.artifact.type)
        for rec in records
        if rec.WhichOneof("record_type") == "artifact"
    }
    assert {(f"model-{entry['id']}", "model"), (f"report-{entry['id']}", "report")} <= artefacts
    assert files_holding(password, out) == [] and files_holding(str(tiny_data), out / "wandb") == []


@pytest.mark.parametrize("extra", ["mlflow", "wandb"])
def test_a_missing_tracker_package_is_one_line_naming_the_extra(tiny_data, tmp_path, monkeypatch, extra):
    monkeypatch.setitem(
        sys.modules, extra, None
    )  # `import mlflow` now raises ImportError, as if not installed
    r = run_cli("train", tiny_data, *ARGS, "--set", f"log.{extra}=true", "--out", tmp_path / "run")
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert f"pip install 'resnetcls[{extra}]'" in last and f"log.{extra}=true" in last
    assert "Traceback" not in r.stderr and not (tmp_path / "run" / "checkpoints").exists()


def test_a_silent_wandb_server_is_given_up_after_15_s_unless_wandb_init_timeout_says_otherwise(monkeypatch):
    import wandb

    monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    assert wandb_settings(wandb).init_timeout == 15
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "40")
    assert wandb_settings(wandb).init_timeout == 40
