"""`resnetcls lifelong` end to end on a tiny two-task manifest: the files a user reads, class-incremental
growth of the head, and exact resume at a task boundary."""
import csv
import json
import random

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.conftest import run_cli

ARGS = ["--model", "resnet18", "--image-size", "32", "--batch-size", "8", "--epochs", "1",
        "--set", "model.width=8", "--set", "data.num_workers=0", "--set", "train.deterministic=true",
        "--set", "optim.lr=0.01", "--tasks", "light", "--order", "bright,dark"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Two conditions (bright, dark); red and green in both, blue only in the dark task (a new class)."""
    root = tmp_path_factory.mktemp("lifelong")
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 220)}
    rng = random.Random(0)
    rows = [["path", "label", "split", "light"]]
    for light, scale in (("bright", 1.0), ("dark", 0.4)):
        for name, rgb in colours.items():
            if name == "blue" and light == "bright":
                continue
            for i in range(8):
                c = tuple(int(max(0, min(255, v * scale + rng.randint(-15, 15)))) for v in rgb)
                rel = f"{light}_{name}_{i}.png"
                Image.new("RGB", (36, 36), c).save(root / rel)
                rows.append([rel, name, "test" if i < 2 else "train", light])
    with open(root / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root / "manifest.csv"


def read_json(path):
    return json.loads(path.read_text())


@pytest.mark.parametrize("strategy", ["naive", "ewc", "lwf"])
def test_sequence_writes_matrix_metrics_and_model(manifest, tmp_path, strategy):
    out = tmp_path / strategy
    r = run_cli("lifelong", manifest, *ARGS, "--strategy", strategy, "--out", out)
    assert r.returncode == 0, r.stderr
    R = read_json(out / "R.json")
    assert R["tasks"] == ["light=bright", "light=dark"]
    assert len(R["R"]) == 2 and all(len(row) == 2 for row in R["R"]) and len(R["b"]) == 2
    with open(out / "R.csv") as f:
        table = list(csv.reader(f))
    assert table[0] == ["after", "light=bright", "light=dark"] and [row[0] for row in table[1:]] == [
        "before", "light=bright", "light=dark"]
    m = read_json(out / "metrics.json")
    assert m["ACC"] == pytest.approx(sum(R["R"][1]) / 2)
    assert m["BWT"] == pytest.approx(R["R"][1][0] - R["R"][0][0])
    assert len(m["forgetting"]) == 1 and m["buffer_images"] == 0 and m["model_params"] > 0
    assert len(m["train_seconds_per_task"]) == 2 and m["inference_ms_per_image"] > 0
    assert (out / "R.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # class-incremental: blue arrives with the second task, appended after the first task's classes
    assert read_json(out / "final" / "model.json")["classes"] == ["green", "red", "blue"]
    assert load_file(str(out / "final" / "model.safetensors"))["fc.weight"].shape[0] == 3


@pytest.fixture(scope="module")
def joint_run(manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("joint") / "run"
    r = run_cli("lifelong", manifest, *ARGS, "--strategy", "joint", "--out", out)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def replay_run(manifest, joint_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("replay") / "run"
    r = run_cli("lifelong", manifest, *ARGS, "--strategy", "replay", "--buffer-size", "6", "--out", out,
                "--joint", joint_run)
    assert r.returncode == 0, r.stderr
    return out


def test_replay_keeps_a_bounded_buffer_and_reports_it(replay_run, joint_run):
    m = read_json(replay_run / "metrics.json")
    assert m["strategy"] == "replay" and m["buffer_images"] == 6
    assert m["gap_to_joint"] == pytest.approx(read_json(joint_run / "metrics.json")["ACC"] - m["ACC"])
    assert m["buffer_mb"] == pytest.approx(6 * 3 * 32 * 32 / 1e6, rel=1e-3)


def test_resume_after_a_stop_gives_the_same_matrix_and_weights(manifest, replay_run, tmp_path):
    out = tmp_path / "run"
    common = ["lifelong", manifest, *ARGS, "--strategy", "replay", "--buffer-size", "6", "--out", out]
    first = run_cli(*common, "--stop-after", "1")
    assert first.returncode == 0, first.stderr
    assert "--resume auto" in first.stderr and not (out / "metrics.json").exists()
    again = run_cli(*common)  # without --resume: refuses to mix with the earlier run's checkpoints
    assert again.returncode == 2 and "--resume auto" in again.stderr
    resumed = run_cli(*common, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "task 2/2" in resumed.stderr and "task 1/2 light=bright" not in resumed.stderr
    assert read_json(out / "R.json") == read_json(replay_run / "R.json")
    a, b = load_file(str(out / "final/model.safetensors")), load_file(str(replay_run / "final/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_joint_trains_once_on_the_union(joint_run):
    out = joint_run
    m = read_json(out / "metrics.json")
    assert len(m["R"]) == 1 and m["ACC"] == pytest.approx(sum(m["R"][0]) / 2)
    r = run_cli("report", out)
    assert r.returncode == 0, r.stderr
    page = (out / "report.html").read_text()
    assert "Lifelong" in page and 'id="lifelong-R"' in page


def test_report_shows_the_lifelong_section(replay_run):
    r = run_cli("report", replay_run)
    assert r.returncode == 0, r.stderr
    page = (replay_run / "report.html").read_text()
    assert 'id="lifelong-R"' in page and "BWT" in page and "light=dark" in page


def test_unknown_task_column_is_one_clear_error(manifest, tmp_path):
    r = run_cli("lifelong", manifest, *ARGS, "--tasks", "weather", "--out", tmp_path / "x")
    assert r.returncode == 2
    assert "no column 'weather'" in r.stderr and "light" in r.stderr and "Traceback" not in r.stderr
