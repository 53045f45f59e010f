"""The LR range test: `resnetcls lr-find` writes its curve and plot and suggests a rate inside the sweep with
its rule named; the sweep stops when the loss explodes; `train --lr auto` records the rate it chose and leaves
its curve in the run directory, where the report shows it."""

import csv
import json

import pytest
import yaml
from PIL import Image

from resnetcls.engine.lrfind import RULE_MIN_TENTH, RULE_STEEPEST, LRCurve, suggest, sweep_lr
from tests.conftest import TINY, run_cli


def test_lr_find_writes_plot_and_curve_and_suggests_a_rate_inside_the_sweep(tiny_data, tmp_path):
    out = tmp_path / "lrf"
    r = run_cli(
        "lr-find", tiny_data, *TINY, "--steps", "30", "--start-lr", "1e-5", "--end-lr", "1", "--out", out
    )
    assert r.returncode == 0, r.stderr
    with Image.open(out / "lr_find.png") as image:
        assert image.format == "PNG"
    curve = json.loads((out / "lr_find.json").read_text())
    lrs = [p["lr"] for p in curve["points"]]
    assert 2 <= len(lrs) <= 30 and lrs[0] == pytest.approx(1e-5)
    assert lrs == sorted(lrs)
    assert lrs[0] <= curve["suggested_lr"] <= lrs[-1]
    assert curve["rule"] in (RULE_STEEPEST, RULE_MIN_TENTH)
    with open(out / "lr_find.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(row["lr"]) for row in rows] == pytest.approx(lrs)
    # stdout: the suggestion, with the rule that produced it.
    assert f"suggested lr {curve['suggested_lr']:.3g}" in r.stdout
    assert f"rule: {curve['rule']}" in r.stdout
    # `resnetcls report DIR` on the lr-find folder: a page with just the range test.
    r = run_cli("report", out)
    assert r.returncode == 0, r.stderr
    page = (out / "report.html").read_text()
    assert "<h2>Learning-rate range test</h2>" in page and 'id="lr-find"' in page
    assert f"suggested lr <b>{curve['suggested_lr']:.3g}</b>" in page and "Training curves" not in page


def test_lr_find_stops_when_the_loss_explodes(tiny_data, tmp_path):
    out = tmp_path / "lrf"
    r = run_cli(
        "lr-find",
        tiny_data,
        *TINY,
        "--steps",
        "60",
        "--start-lr",
        "1e-4",
        "--end-lr",
        "1e5",
        "--set",
        "optim.name=sgd",
        "--out",
        out,
    )
    assert r.returncode == 0, r.stderr
    curve = json.loads((out / "lr_find.json").read_text())
    assert curve["stopped"].startswith("diverged")
    points = curve["points"]
    assert len(points) < 60 and points[-1]["lr"] < 1e5
    assert points[0]["lr"] <= curve["suggested_lr"] <= points[-1]["lr"]


def test_train_lr_auto_trains_and_records_the_chosen_rate(tiny_data, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", tiny_data, *TINY, "--epochs", "1", "--lr", "auto", "--out", out)
    assert r.returncode == 0, r.stderr
    lr = yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"]
    assert isinstance(lr, float) and 0 < lr <= 1.0 and lr != 2e-3  # the sweep's range, not the default
    assert f"--lr auto: {lr:.3g}" in r.stderr
    assert (out / "best" / "model.safetensors").is_file()
    # The sweep that chose it is part of the run: its curve, plot and a report section.
    curve = json.loads((out / "lr_find.json").read_text())
    assert curve["suggested_lr"] == pytest.approx(lr) and curve["settings"]["steps"] == 60
    assert (out / "lr_find.csv").read_text().startswith("step,lr,loss,smoothed_loss\n")
    with Image.open(out / "lr_find.png") as image:
        assert image.format == "PNG"
    page = (out / "report.html").read_text()
    assert "<h2>Learning-rate range test</h2>" in page and 'id="lr-find"' in page
    assert f"suggested lr <b>{lr:.3g}</b> (rule: {curve['rule']})" in page
    # A resume keeps it and does not sweep again.
    before = (out / "lr_find.json").read_text()
    r = run_cli("train", "--resume", out)  # finished: nothing left to train, the report is rewritten
    assert r.returncode == 0, r.stderr
    assert "--lr auto" not in r.stderr and (out / "lr_find.json").read_text() == before
    assert "<h2>Learning-rate range test</h2>" in (out / "report.html").read_text()


@pytest.mark.parametrize(
    "args, named",
    [
        (["--steps", "2"], "--steps"),
        (["--start-lr", "0"], "--start-lr"),
        (["--end-lr", "-1"], "--end-lr"),
        (["--start-lr", "1", "--end-lr", "0.1"], "--start-lr"),
    ],
)
def test_bad_sweep_values_exit_2_naming_the_flag(tiny_data, tmp_path, args, named):
    r = run_cli("lr-find", tiny_data, *TINY, *args, "--out", tmp_path / "lrf")
    assert r.returncode == 2
    assert named in r.stderr
    assert not (tmp_path / "lrf" / "lr_find.json").exists()


def test_bad_lr_and_lr_auto_with_resume_exit_2(tiny_data, tmp_path):
    r = run_cli("train", tiny_data, *TINY, "--lr", "fast", "--out", tmp_path / "run")
    assert r.returncode == 2 and "--lr" in r.stderr
    r = run_cli("train", tiny_data, *TINY, "--lr", "auto", "--resume", "auto", "--out", tmp_path / "run")
    assert r.returncode == 2 and "--lr auto" in r.stderr


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = [sweep_lr(i, 9, 1e-4, 1.0) for i in range(9)]
    curve = LRCurve(lrs=lrs, losses=[0] * 9, smoothed=[2.0, 2.0, 1.9, 1.8, 1.0, 0.9, 0.8, 1.5, 3.0])
    suggest(curve)
    assert curve.rule == RULE_STEEPEST and curve.suggestion in lrs[3:5]  # the 1.8 -> 1.0 drop
    assert curve.min_loss_lr == lrs[6]


def test_without_a_descent_the_rule_is_min_loss_over_ten_within_the_sweep():
    lrs = [sweep_lr(i, 6, 1e-3, 1.0) for i in range(6)]
    curve = LRCurve(lrs=lrs, losses=[0] * 6, smoothed=[1.0, 1.1, 1.3, 1.6, 2.0, 3.0])
    suggest(curve)
    assert curve.rule == RULE_MIN_TENTH and curve.suggestion == lrs[0]
