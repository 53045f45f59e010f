"""Exact resume: a run killed at any instant and resumed ends with the same weights, bit for bit.

Only the killed or signalled runs get an interpreter each; the uninterrupted and the resumed ones run one
after another in the session's plain_interpreter (one thread as well, and no pytest imported: see
tests/runner.py)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

# One thread: tiny models gain nothing from more, and on a shared 2-core machine OpenMP threads spinning
# against other processes make each step ten times slower.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# 33 training images, batch 4 -> 8 steps per epoch; a checkpoint after every step so a kill lands mid-epoch.
ARGS = [
    "--set",
    "train.auto_recipe=false",
    "--model",
    "resnet18",
    "--image-size",
    "32",
    "--batch-size",
    "4",
    "--epochs",
    "2",
    "--set",
    "model.width=8",
    "--set",
    "data.num_workers=0",
    "--set",
    "log.tensorboard=false",
    "--set",
    "train.deterministic=true",
    "--set",
    "optim.lr=0.01",
]
STEP_CKPT = ["--set", "ckpt.every_steps=1", "--set", "ckpt.keep_last=50"]


def weights(run_dir):
    return load_file(str(run_dir / "final" / "model.safetensors"))


def assert_identical(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def start_and_signal(data, out, sig, after_step: int, *extra) -> subprocess.Popen:
    """Start a training run, send sig once the checkpoint of `after_step` exists; return the ended process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "resnetcls", "train", str(data), *ARGS, *STEP_CKPT, *extra, "--out", str(out)],
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    marker = out / "checkpoints" / f"step-{after_step:08d}.json"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be interrupted:\n" + proc.stderr.read()
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return proc


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory, plain_interpreter):
    out = tmp_path_factory.mktemp("whole") / "run"
    result = plain_interpreter.run("train", tiny_data, *ARGS, "--out", out)
    assert result.returncode == 0, result.stderr
    return weights(out)


def test_sigkill_mid_epoch_then_resume_auto_is_bit_identical(
    tiny_data, tmp_path, uninterrupted, plain_interpreter
):
    out = tmp_path / "run"
    proc = start_and_signal(tiny_data, out, signal.SIGKILL, after_step=3)
    assert proc.returncode == -signal.SIGKILL
    # Also lose the tail of the newest checkpoint, as a disk might: resume must fall back to the one before.
    newest = sorted((out / "checkpoints").glob("step-*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    result = plain_interpreter.run("train", tiny_data, *ARGS, *STEP_CKPT, "--out", out, "--resume", "auto")
    assert result.returncode == 0, result.stderr
    assert f"warning: skipping {newest}: corrupt checkpoint" in result.stderr
    resumed = re.search(r"resuming .* at epoch (\d+) step (\d+)/8", result.stderr)
    assert resumed, result.stderr
    epoch, step = map(int, resumed.groups())
    assert epoch == 1 and 2 <= step < 8, result.stderr  # really in the middle of an epoch
    assert_identical(weights(out), uninterrupted)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]  # no duplicated epoch records


def test_sigterm_saves_exits_130_and_resume_from_run_dir_alone_is_bit_identical(
    tiny_data, tmp_path, uninterrupted, plain_interpreter
):
    out = tmp_path / "run"
    # Two DataLoader worker processes here (none in the uninterrupted run): the augmentation of a sample
    # must not depend on which process decodes it.
    proc = start_and_signal(tiny_data, out, signal.SIGTERM, 10, "--set", "data.num_workers=2")
    stderr = proc.stderr.read()
    assert proc.returncode == 130, stderr
    assert re.search(r"interrupted at epoch 2 step \d: saved .*step-000000\d\d\.pt", stderr), stderr
    # No DATA, no settings: the run directory alone says how to continue.
    result = plain_interpreter.run("train", "--resume", out, "--set", "data.num_workers=2")
    assert result.returncode == 0, result.stderr
    assert_identical(weights(out), uninterrupted)


AUGMENT = [
    "--set",
    "data.augment=trivialaugment",
    "--set",
    "data.random_erasing=0.5",
    "--set",
    "data.mixup=0.4",
    "--set",
    "data.cutmix=1.0",
    "--set",
    "loss.name=bce",
]


def kill_mid_epoch_and_resume(data, out, extra: list[str], plain_interpreter):
    """SIGKILL a run (two DataLoader workers) in its first epoch, resume it with none; the resumed run's
    dir."""
    proc = start_and_signal(data, out, signal.SIGKILL, 5, *extra, "--set", "data.num_workers=2")
    assert proc.returncode == -signal.SIGKILL
    result = plain_interpreter.run("train", data, *ARGS, *STEP_CKPT, *extra, "--out", out, "--resume", "auto")
    assert result.returncode == 0, result.stderr
    assert re.search(r"resuming .* at epoch 1 step [5-7]/8", result.stderr), result.stderr
    return out


def test_with_augmentation_policies_and_progressive_resizing_a_killed_run_resumes_bit_identical(
    tiny_data, tmp_path, plain_interpreter
):
    """TrivialAugment, random erasing, MixUp/CutMix and data.progressive's sizes (a function of the epoch): a
    run killed mid-epoch (two DataLoader workers before the kill, none after: a sample's augmentation must
    depend on neither) resumes at the same size and ends with the same weights, bit for bit."""
    # 2 epochs at 32 px: 16 px, then 32 px. fp32: in bf16 on the Xeon-AMX, a tiny ResNet that trained at 16 px
    # (1x1 maps in layer3-4) then at 32 px was not reproducible even uninterrupted (oneDNN's bf16 kernels).
    extra = [*AUGMENT, "--set", "data.progressive=0.5", "--set", "train.precision=fp32"]
    whole = tmp_path / "whole"
    result = plain_interpreter.run("train", tiny_data, *ARGS, *extra, "--out", whole)
    assert result.returncode == 0, result.stderr
    out = kill_mid_epoch_and_resume(tiny_data, tmp_path / "run", extra, plain_interpreter)
    assert_identical(weights(out), weights(whole))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_size"] for r in records if r["kind"] == "epoch"] == [16, 32]
