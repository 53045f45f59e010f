"""The command line: usage errors exit 2 without a traceback, --version, `python -m resnetcls`, serve's
settings from the config's serve: section, export's --to, and where `train` puts a run without --out and
what it prints on stdout and in RUN/train.log."""

import json
import os
import subprocess
import sys
from pathlib import Path

from resnetcls import __version__
from tests.conftest import TINY, run_cli


def test_a_usage_error_exits_2_naming_the_problem():
    result = run_cli("train")
    assert result.returncode == 2 and "DATA is required" in result.stderr and "Traceback" not in result.stderr
    assert run_cli("no-such-command").returncode == 2


def test_version_and_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "resnetcls", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"resnetcls {__version__}"


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
