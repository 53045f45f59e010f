"""Training refuses or survives what would otherwise waste hours: a NaN loss, one class, Ctrl-C under both
worker start methods and during validation."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from resnetcls.engine import train as train_mod
from resnetcls.engine.loop import StepContext, evaluate
from resnetcls.records.modelfile import load_model_dir
from tests.conftest import TINY, make_class_folders, run_cli

SMALL_STEPS = [
    *TINY,
    "--batch-size",
    "4",
    "--epochs",
    "1",
    "--set",
    "ckpt.every_steps=1",
    "--set",
    "ckpt.keep_last=50",
    "--set",
    "log.tensorboard=false",
]


class NanOnThirdStep(nn.Module):
    """The real loss, except that the third training batch's is NaN (as after a divergence)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, logits, labels):
        loss = self.inner(logits, labels)
        if torch.is_grad_enabled():  # training; validation runs under inference_mode
            self.calls += 1
            if self.calls == 3:
                return loss * float("nan")
        return loss


@pytest.fixture
def nan_on_third_step(monkeypatch):
    real = train_mod.build_loss
    monkeypatch.setattr(train_mod, "build_loss", lambda *args: NanOnThirdStep(real(*args)))


def test_a_nonfinite_loss_stops_with_one_line_naming_the_step(tiny_data, tmp_path, nan_on_third_step):
    out = tmp_path / "run"
    result = run_cli("train", tiny_data, *SMALL_STEPS, "--out", out)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "resnetcls: error: train: non-finite loss (nan) at epoch 1 step 3 (global step 3); "
        f"stopped before applying it, the last good checkpoint is "
        f"{out / 'checkpoints' / 'step-00000002.pt'}; "
    ), last
    assert "--set train.nonfinite=skip" in last and "Traceback" not in result.stderr
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == [
        "step-00000001.pt",
        "step-00000002.pt",
    ]
    assert not (out / "final").exists()


def test_nonfinite_skip_counts_the_skipped_batch_and_finishes(tiny_data, tmp_path, nan_on_third_step):
    out = tmp_path / "run"
    result = run_cli("train", tiny_data, *SMALL_STEPS, "--set", "train.nonfinite=skip", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "skipped 1 batch(es) with a non-finite loss in epoch 1 (train.nonfinite=skip)" in result.stderr
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["nonfinite_skipped"] for r in epochs if r["kind"] == "epoch"] == [1]
    state = load_model_dir(out / "final").model.state_dict()
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_single_class_is_refused(tmp_path):
    data = make_class_folders(tmp_path / "one", {"red": (220, 30, 30)})
    result = run_cli("train", data, *TINY, "--out", tmp_path / "run")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("only one class ('red'); a classifier needs at least two")


def test_validation_stops_at_the_first_batch_after_a_stop_request():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    batches = [
        {"images": torch.rand(2, 3, 2, 2), "labels": torch.tensor([0, 1]), "bad": []} for _ in range(5)
    ]
    ctx = StepContext(torch.device("cpu"), None, channels_last=False)
    whole = evaluate(model, batches, nn.CrossEntropyLoss(), ctx)
    assert whole.images == 10 and not whole.interrupted
    asked = []
    stopped = evaluate(model, batches, nn.CrossEntropyLoss(), ctx, stop=lambda: asked.append(1) or True)
    assert stopped.interrupted and stopped.images == 2 and len(asked) == 1


# Loaded by every interpreter of the run (spawned workers too): each batch takes a while to load, so the
# training process is waiting for a worker's batch when Ctrl-C arrives, as in a data-bound run.
SLOW_BATCHES = """
from resnetcls.data import loader
import time
real = loader.StoredImageDataset.__getitems__
def slow(self, indices):
    time.sleep(0.2)
    return real(self, indices)
loader.StoredImageDataset.__getitems__ = slow
"""


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_ctrl_c_saves_a_checkpoint_with_worker_processes(tiny_data, tmp_path, start):
    """Ctrl-C in a terminal sends SIGINT to the whole process group, DataLoader workers included."""
    out, site = tmp_path / "run", tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_BATCHES)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    args = [
        *SMALL_STEPS,
        "--epochs",
        "3",
        "--set",
        "data.num_workers=1",
        "--set",
        f"data.worker_start={start}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "resnetcls", "train", str(tiny_data), *args, "--out", str(out)],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    marker = out / "checkpoints" / "step-00000002.json"
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted:\n" + proc.stderr.read()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "continue with --resume" in err and "Traceback" not in err and "exited unexpectedly" not in err
    saved = re.search(r"interrupted at epoch \d+ step \d+: saved (\S+\.pt);", err)
    assert saved and os.path.isfile(saved[1]) and os.path.isfile(saved[1][:-3] + ".json"), err


def test_a_stop_during_validation_saves_and_the_resume_validates_that_epoch(tiny_data, tmp_path, monkeypatch):
    real = train_mod.distributed.evaluate_sharded

    def stop_requested_during_validation(*args, stop=None, **kwargs):
        return real(
            *args, stop=lambda: True, **kwargs
        )  # as if Ctrl-C arrived after the first validation batch

    monkeypatch.setattr(train_mod.distributed, "evaluate_sharded", stop_requested_during_validation)
    out = tmp_path / "run"
    args = [*TINY, "--epochs", "2", "--set", "log.tensorboard=false", "--out", out]
    result = run_cli("train", tiny_data, *args)
    assert result.returncode == 130, result.stderr
    assert "interrupted during validation of epoch 1: saved " in result.stderr
    assert not (out / "best").exists()
    monkeypatch.setattr(train_mod.distributed, "evaluate_sharded", real)
    resumed = run_cli("train", tiny_data, *args, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["kind"] == "epoch"] == [1, 2]
