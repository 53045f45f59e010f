"""The command line: usage errors exit 2 without a traceback, --version, `python -m resnetcls`, serve's
settings from the config's serve: section, export's --to, and where `train` puts a run without --out and
what it prints on stdout and in RUN/train.log."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from resnetcls import __version__
from resnetcls.cli.commands import serve_settings
from resnetcls.cli.parsers import build_parser
from resnetcls.serve.schema import ServeSettings
from tests.conftest import TINY, run_cli


def test_a_usage_error_exits_2_naming_the_problem():
    result = run_cli("train")
    assert result.returncode == 2 and "DATA is required" in result.stderr and "Traceback" not in result.stderr
    assert run_cli("no-such-command").returncode == 2


def test_version_and_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "resnetcls", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"resnetcls {__version__}"


def serve_args(*argv: str):
    return build_parser().parse_args(["serve", "m", *argv])


def test_serve_settings_come_from_the_serve_section_with_explicit_flags_on_top(tmp_path):
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text("serve:\n  max_batch: 8\n  max_body_mb: 2.5\n  port: 9000\n  backend: onnxruntime\n")
    settings, host, port, workers = serve_settings(serve_args("--config", str(deploy)))
    assert (settings.model, settings.max_batch, settings.max_body_bytes, settings.backend) == (
        "m",
        8,
        2_500_000,
        "onnxruntime",
    )
    assert (host, port, workers) == ("127.0.0.1", 9000, 1)
    assert settings.max_idle_per_client == 16  # not in the file: serve's default
    settings, _, port, _ = serve_settings(
        serve_args(
            "--config",
            str(deploy),
            "--set",
            "serve.max_batch=4",
            "--set",
            "serve.stall_s=5",
            "--port",
            "8123",
        )
    )
    assert (settings.max_batch, settings.stall_s, port) == (
        4,
        5.0,
        8123,
    )  # --set over the file, flags over both
    settings, *_ = serve_settings(
        serve_args("--config", str(deploy), "--max-batch", "16", "--set", "serve.max_batch=4")
    )
    assert settings.max_batch == 16
    assert serve_settings(serve_args())[0] == ServeSettings("m")  # no file, no flags: ServeSettings' defaults


def test_serve_settings_take_resnetcls_set_over_the_flags_with_a_note(monkeypatch, capsys):
    monkeypatch.setenv("RESNETCLS_SET", "serve.port=8200 serve.max_batch=2")
    settings, _, port, _ = serve_settings(serve_args("--port", "8123", "--max-batch", "16"))
    assert (port, settings.max_batch) == (8200, 2)
    assert capsys.readouterr().err == (
        "note: RESNETCLS_SET: serve.port=8200 serve.max_batch=2 "
        "(from the environment, over the command line)\n"
    )


def test_a_bad_key_or_value_under_serve_is_one_line_naming_it(tmp_path):
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text("serve:\n  max_batchs: 8\n")
    result = run_cli("serve", "m", "--config", deploy)
    assert result.returncode == 2
    assert result.stderr == (
        f"resnetcls: error: {deploy}: unknown config key 'serve.max_batchs'; "
        "did you mean 'serve.max_batch'?\n"
    )
    deploy.write_text("serve:\n  max_queue: lots\n")
    result = run_cli("serve", "m", "--config", deploy)
    assert result.returncode == 2 and "'serve.max_queue' expects int, got 'lots'" in result.stderr
    result = run_cli("serve", "m", "--set", "serve.backend=tpu")
    assert result.returncode == 2 and "serve.backend='tpu': expected one of auto, torch" in result.stderr
    result = run_cli("serve", "m", "--set", "serve.max_queue=0")
    assert result.returncode == 2 and "serve.max_queue=0: must be in [1, " in result.stderr


def test_export_writes_the_file_type_given_by_to_or_by_format_with_a_note(tiny_run, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_run / "best", model)
    result = run_cli("export", model, "--to", "torchscript")
    assert result.returncode == 0, result.stderr
    assert (model / "model.torchscript.pt").is_file() and "now --to" not in result.stderr
    result = run_cli("export", model, "--format", "torchscript", "--out", tmp_path / "m.pt")
    assert result.returncode == 0 and (tmp_path / "m.pt").is_file()
    assert "export --format is now --to; read as --to torchscript (write --to torchscript)" in result.stderr
    neither = run_cli("export", model)
    assert neither.returncode == 2 and "--to onnx or --to torchscript" in neither.stderr
    both = run_cli("export", model, "--to", "onnx", "--format", "torchscript")
    assert both.returncode == 2 and "give one file type, as --to" in both.stderr


def test_the_shipped_serve_config_holds_serves_defaults():
    settings, host, port, workers = serve_settings(serve_args("--config", "serve"))
    assert settings == ServeSettings("m") and (host, port, workers) == ("127.0.0.1", 8000, 1)


def result_lines(run: Path, cwd: Path) -> list[str]:
    """The lines `resnetcls train` ends with on stdout, from what the run wrote."""
    records = [json.loads(line) for line in (cwd / run / "metrics.jsonl").read_text().splitlines()]
    summary = next(r for r in reversed(records) if r["kind"] == "summary")
    return [
        f"run: {run}",
        f"best val top1: {summary['best_val_top1']:.2%} (epoch {summary['best_epoch']})",
        f"model: {run / 'best'}",
        f"report: {run / 'report.html'}",
    ]


def test_runs_without_out_get_new_folders_latest_follows_and_resume_latest_continues_it(tiny_data, tmp_path):
    args = ("train", tiny_data, *TINY, "--epochs", "1")
    first, second = run_cli(*args, cwd=tmp_path), run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    runs, newest = tmp_path / "runs", Path("runs", "train-2")
    assert sorted(p.name for p in runs.iterdir()) == ["latest", "train", "train-2"]
    assert os.readlink(runs / "latest") == "train-2"
    assert second.stdout.splitlines() == result_lines(newest, tmp_path)  # the results, nothing else
    assert "run folder runs/train-2 (runs/latest points to it)" in second.stderr
    log = (tmp_path / newest / "train.log").read_text()
    assert "resnetcls " in log and "resnet18, 3 classes, 33 train / 3 val images" in log  # the opening line
    assert "\nepoch 1/1  train loss " in log and "\ndone in " in log and log.endswith("\n")

    refused = run_cli(*args, "--model", "nosuch", cwd=tmp_path)  # a refused plan: no folder, latest kept
    assert refused.returncode == 2 and refused.stdout == ""
    assert sorted(p.name for p in runs.iterdir()) == ["latest", "train", "train-2"]
    assert os.readlink(runs / "latest") == "train-2"

    resumed = run_cli("train", "--resume", "latest", "--epochs", "2", "--force", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.splitlines() == result_lines(newest, tmp_path)
    lines = (tmp_path / newest / "train.log").read_text().splitlines()
    separator = next(n for n, line in enumerate(lines) if line.startswith("---- "))
    assert lines[:separator] == log.splitlines() and "resumed from" in lines[separator]
    assert any(line.startswith("epoch 2/2  ") for line in lines[separator:])
    assert not (runs / "train-3").exists()


def test_serve_takes_open_set_settings_from_flags_or_the_serve_section(tmp_path):
    settings, *_ = serve_settings(serve_args())
    assert (settings.open_set, settings.unknown_accept) == ("auto", None)  # 0 in the config: the model's own
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text('serve:\n  open_set: "off"\n  unknown_accept: 0.9\n')  # YAML reads a bare off as false
    settings, *_ = serve_settings(serve_args("--config", str(deploy)))
    assert (settings.open_set, settings.unknown_accept) == ("off", 0.9)
    settings, *_ = serve_settings(
        serve_args("--config", str(deploy), "--open-set", "on", "--unknown-accept", "0.8")
    )
    assert (settings.open_set, settings.unknown_accept) == ("on", 0.8)
    refused = run_cli("serve", "m", "--set", "serve.open_set=maybe")
    assert refused.returncode == 2 and "serve.open_set='maybe'" in refused.stderr
    refused = run_cli("serve", "m", "--unknown-accept", "2")
    assert refused.returncode == 2 and "--unknown-accept: must be between 0 and 1, got 2" in refused.stderr
