"""`resnetcls lifelong` end to end on a tiny two-task manifest: the files a user reads, class-incremental
growth of the head, and exact resume at a task boundary."""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli
from tests.lifelong.conftest import ARGS


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
        "before",
        "light=bright",
        "light=dark",
    ]
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
    r = run_cli(
        "lifelong",
        manifest,
        *ARGS,
        "--strategy",
        "replay",
        "--buffer-size",
        "6",
        "--out",
        out,
        "--joint",
        joint_run,
    )
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
    assert (
        "resuming" in resumed.stderr
        and "task 2/2" in resumed.stderr
        and "task 1/2 light=bright" not in resumed.stderr
    )
    assert read_json(out / "R.json") == read_json(replay_run / "R.json")
    a, b = (
        load_file(str(out / "final/model.safetensors")),
        load_file(str(replay_run / "final/model.safetensors")),
    )
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


@pytest.mark.parametrize("setting", ["train.time_budget=20m", "train.patience=3", "data.progressive=0.5"])
def test_train_only_settings_are_refused_rather_than_ignored(manifest, tmp_path, setting):
    r = run_cli("lifelong", manifest, *ARGS, "--tasks", "light", "--set", setting, "--out", tmp_path / "x")
    assert r.returncode == 2 and setting.split("=")[0] in r.stderr and "unset it for lifelong" in r.stderr


# The settings `train` honours take effect in lifelong mode too.
# Batch 2: the bright task trains on 12 images (6 steps), the dark one on 15 (7 steps; the last image is
# dropped).
STEPS = [
    "--batch-size",
    "2",
    "--set",
    "log.every_steps=1",
    "--set",
    "log.tensorboard=true",
    "--set",
    "ckpt.every_steps=4",
    "--set",
    "ckpt.keep_last=50",
]


def records(run_dir, kind):
    return [
        r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind
    ]


def checkpoint_steps(run_dir):
    return sorted(int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*.json"))


@pytest.fixture(scope="module")
def stepped_run(manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("stepped") / "run"
    r = run_cli(
        "lifelong", manifest, *ARGS, *STEPS, "--strategy", "replay", "--buffer-size", "6", "--out", out
    )
    assert r.returncode == 0, r.stderr
    return out


def test_step_logs_tensorboard_and_step_checkpoints_in_lifelong_mode(stepped_run):
    steps = records(stepped_run, "train")
    assert [r["step"] for r in steps] == list(
        range(1, 14)
    )  # log.every_steps=1: one record per optimizer step
    assert [r["task"] for r in steps] == ["light=bright"] * 6 + ["light=dark"] * 7
    assert all(r["train/loss"] > 0 and "train/data_wait_share" in r for r in steps)
    assert [(r["task"], r["step"]) for r in records(stepped_run, "task")] == [
        ("light=bright", 6),
        ("light=dark", 13),
    ]
    # ckpt.every_steps=4 (steps 4, 8, 12) plus one at each task boundary (steps 6 and 13)
    assert checkpoint_steps(stepped_run) == [4, 6, 8, 12, 13]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(stepped_run / "tb")).Reload()
    assert {"train/loss", "train/lr", "train/data_wait_share", "lifelong/acc_all"} <= set(
        tb.Tags()["scalars"]
    )
    # every step, and each task's epoch record at the step that ends it
    assert [e.step for e in tb.Scalars("train/loss")] == [*range(1, 7), 6, *range(7, 14), 13]


def test_grad_accum_steps_halves_the_optimizer_steps_in_lifelong_mode(manifest, tmp_path):
    out = tmp_path / "run"
    r = run_cli("lifelong", manifest, *ARGS, *STEPS, "--set", "train.grad_accum_steps=2", "--out", out)
    assert r.returncode == 0, r.stderr
    assert [r["step"] for r in records(out, "train")] == list(
        range(1, 8)
    )  # 3 + 4 steps: ceil(6/2), ceil(7/2)
    assert [r["step"] for r in records(out, "task")] == [3, 7]


def test_ema_decay_is_what_lifelong_measures_and_ships(manifest, stepped_run, tmp_path):
    out = tmp_path / "run"
    r = run_cli(
        "lifelong",
        manifest,
        *ARGS,
        *STEPS,
        "--strategy",
        "replay",
        "--buffer-size",
        "6",
        "--set",
        "train.ema_decay=0.5",
        "--out",
        out,
    )
    assert r.returncode == 0, r.stderr
    mid_task = torch.load(out / "checkpoints" / "step-00000008.pt", weights_only=True)
    assert mid_task["ema"] is not None and mid_task["extra"]["in_task"]
    with_ema, without = (
        load_file(str(out / "final/model.safetensors")),
        load_file(str(stepped_run / "final/model.safetensors")),
    )
    assert not torch.equal(with_ema["fc.weight"], without["fc.weight"])
    assert read_json(out / "R.json")["R"] != read_json(stepped_run / "R.json")["R"] or not torch.equal(
        with_ema["conv1.weight"], without["conv1.weight"]
    )


def test_resume_from_a_step_checkpoint_inside_a_task_is_exact(stepped_run, manifest, tmp_path):
    """As if killed right after the checkpoint of step 8 (the second task's third step)."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(stepped_run, out)
    for name in ("R.json", "R.csv", "R.png", "metrics.json"):
        (out / name).unlink()
    shutil.rmtree(out / "final")
    for step in (12, 13):
        for ext in ("json", "pt"):
            (out / "checkpoints" / f"step-{step:08d}.{ext}").unlink()
    r = run_cli(
        "lifelong",
        manifest,
        *ARGS,
        *STEPS,
        "--strategy",
        "replay",
        "--buffer-size",
        "6",
        "--out",
        out,
        "--resume",
        "auto",
    )
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr and "inside task 2 at epoch 1 step 2" in r.stderr
    assert read_json(out / "R.json") == read_json(stepped_run / "R.json")
    a, b = (
        load_file(str(out / "final/model.safetensors")),
        load_file(str(stepped_run / "final/model.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in records(out, "train")] == list(range(1, 14))  # nothing logged twice
    assert len(records(out, "task")) == 2 and len(records(out, "summary")) == 1


@pytest.fixture
def manifest_with_a_bad_image(manifest, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(manifest.parent, root)
    (root / "dark_red_0.png").write_bytes(b"not a png")  # a test image of the second task
    return root / "manifest.csv"


def test_on_bad_fail_names_the_bad_image_before_any_training(manifest_with_a_bad_image, tmp_path):
    r = run_cli(
        "lifelong", manifest_with_a_bad_image, *ARGS, "--set", "data.on_bad=fail", "--out", tmp_path / "r"
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "1 bad image (data.on_bad=fail" in r.stderr and "dark_red_0.png" in r.stderr
    assert "task 1/2" not in r.stderr and not (tmp_path / "r" / "checkpoints").exists()


def test_on_bad_skip_warns_and_counts_the_bad_image(manifest_with_a_bad_image, tmp_path):
    out = tmp_path / "r"
    r = run_cli("lifelong", manifest_with_a_bad_image, *ARGS, "--out", out)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("warning: skipped bad image") == 1 and "dark_red_0.png" in r.stderr
    assert read_json(out / "metrics.json")["bad_images"] == 1 and "1 bad images skipped" in r.stderr


# Exact resume at an epoch boundary inside a task: two epochs per task, so the second task has a checkpoint
# after its first epoch that carries the optimizer, schedule, sampler, RNGs and the strategy's state.
EPOCHS2 = ["--epochs", "2", "--set", "ckpt.keep_last=50", "--set", "log.tensorboard=false"]
STRATEGY_ARGS = {
    "naive": [],
    "ewc": [],
    "lwf": [],
    "replay": ["--buffer-size", "6"],
    "ncm": ["--buffer-size", "6"],
}


def inside_task_checkpoint(run_dir):
    """The checkpoint after epoch 1 of task 2 (tasks_done 1, epoch 2 next)."""
    for path in sorted((run_dir / "checkpoints").glob("step-*.json")):
        meta = read_json(path)
        if meta["tasks_done"] == 1 and meta["epoch"] == 2:
            return path, meta
    raise AssertionError(f"no checkpoint inside task 2 in {sorted((run_dir / 'checkpoints').iterdir())}")


def kill_after(src, dst, checkpoint_step):
    """dst: what a run killed right after the checkpoint of checkpoint_step leaves (later checkpoints and the
    results are gone; metrics.jsonl still holds the records of the lost steps, as after a real kill)."""
    import shutil

    shutil.copytree(src, dst)
    for name in ("R.json", "R.csv", "R.png", "metrics.json"):
        (dst / name).unlink()
    shutil.rmtree(dst / "final")
    for path in (dst / "checkpoints").glob("step-*"):
        if int(path.stem.split("-")[1]) > checkpoint_step:
            path.unlink()


@pytest.mark.parametrize("strategy", ["naive", "ewc", "lwf", "replay", "ncm"])
def test_killed_inside_a_task_and_resumed_is_bit_identical(manifest, tmp_path, strategy):
    common = ["lifelong", manifest, *ARGS, *EPOCHS2, "--strategy", strategy, *STRATEGY_ARGS[strategy]]
    whole = tmp_path / "whole"
    r = run_cli(*common, "--out", whole)
    assert r.returncode == 0, r.stderr
    path, meta = inside_task_checkpoint(whole)
    state = torch.load(path.with_suffix(".pt"), weights_only=True)
    assert state["optimizer"] is not None and state["scheduler"] is not None and state["extra"]["in_task"]
    out = tmp_path / "killed"
    kill_after(whole, out, meta["global_step"])
    r = run_cli(*common, "--out", out, "--resume", "auto")
    assert r.returncode == 0, r.stderr
    assert "inside task 2 at epoch 2 step 0" in r.stderr and "task 1/2 light=bright" not in r.stderr
    assert read_json(out / "R.json") == read_json(whole / "R.json")
    a, b = load_file(str(out / "final/model.safetensors")), load_file(str(whole / "final/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    epochs = [(r["task"], r["task_epoch"]) for r in records(out, "task_epoch")]
    assert epochs == [("light=bright", 1), ("light=bright", 2), ("light=dark", 1), ("light=dark", 2)]


def test_sigkill_mid_epoch_inside_a_task_then_resume_is_bit_identical(manifest, tmp_path, plain_interpreter):
    """A real kill (SIGKILL, no chance to save) in the middle of the second task's first epoch, EWC (its
    Fisher and anchors come from the checkpoint). Batch 2: 6 + 6 steps for the first task, 7 + 7 for the
    second. Every run with one thread, as the killed one, and outside pytest (the whole and the resumed run in
    the plain interpreter of tests/runner.py): CPU kernels may sum in another order with another thread count,
    and bit-identity is only promised on the same machine setup."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        "lifelong",
        str(manifest),
        *ARGS,
        *EPOCHS2,
        "--batch-size",
        "2",
        "--strategy",
        "ewc",
        "--set",
        "ckpt.every_steps=1",
    ]
    whole, out = tmp_path / "whole", tmp_path / "killed"
    r = plain_interpreter.run(*command, "--out", whole)
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "resnetcls", *command, "--out", str(out)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    marker, deadline = out / "checkpoints" / "step-00000015.json", time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    r = plain_interpreter.run(*command, "--out", out, "--resume", "auto")
    assert r.returncode == 0, r.stderr
    assert "inside task 2 at epoch 1 step" in r.stderr, r.stderr
    assert read_json(out / "R.json") == read_json(whole / "R.json")
    a, b = load_file(str(out / "final/model.safetensors")), load_file(str(whole / "final/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_derpp_keeps_stored_logits_in_its_checkpoints_and_resumes_to_the_same_matrix(manifest, tmp_path):
    common = [*ARGS, "--strategy", "derpp", "--buffer-size", "6", "--set", "lifelong.derpp_alpha=0.5"]
    whole = run_cli("lifelong", manifest, *common, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    m = read_json(tmp_path / "whole" / "metrics.json")
    assert m["strategy"] == "derpp" and m["buffer_images"] == 6
    assert m["buffer_mb"] > 6 * 3 * 32 * 32 / 1e6  # the pixels and the logits
    out = tmp_path / "split"
    first = run_cli("lifelong", manifest, *common, "--out", out, "--stop-after", "1")
    assert first.returncode == 0, first.stderr
    saved = torch.load(sorted((out / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    buffer = saved["extra"]["strategy"]["buffer"]
    assert buffer["logits"].shape == (6, 2) and buffer["logits"].abs().sum() > 0  # task 1's 2-class head
    resumed = run_cli("lifelong", manifest, *common, "--out", out, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert read_json(out / "R.json") == read_json(tmp_path / "whole" / "R.json")


@pytest.mark.parametrize("key, value", [("lifelong.derpp_alpha", "-0.1"), ("lifelong.derpp_beta", "x")])
def test_bad_derpp_weight_is_one_error_naming_the_key(manifest, tmp_path, key, value):
    r = run_cli(
        "lifelong", manifest, *ARGS, "--strategy", "derpp", "--set", f"{key}={value}", "--out", tmp_path
    )
    assert r.returncode == 2 and key in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("key", ["log.mlflow", "log.wandb"])
def test_tracking_keys_are_refused_by_lifelong_not_ignored(manifest, tmp_path, key):
    r = run_cli("lifelong", manifest, *ARGS, "--set", f"{key}=true", "--out", tmp_path)
    assert r.returncode == 2 and f"{key}=true" in r.stderr and "Traceback" not in r.stderr
