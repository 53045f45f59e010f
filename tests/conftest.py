"""Shared fixtures: tiny generated data sets and the path to ../shared/data when it is present."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image

# No test may reach the network or wait for its timeout: the auto recipe's check for download.pytorch.org is
# skipped for the whole suite and the CLI runs it starts (tests that need it monkeypatch the check).
os.environ.setdefault("RESNETCLS_OFFLINE", "1")
# A RESNETCLS_SET left in a developer's shell would change every training test; the tests that use it set it.
os.environ.pop("RESNETCLS_SET", None)
# `make test` runs the suite in one worker process per core (pytest-xdist, -n auto): one thread each, and
# for the commands they start, so that the workers do not spin more threads than there are cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Tiny settings so every training test runs in seconds on 2 cores, exactly as given: no auto recipe (the
# tests of the recipe opt in).
TINY = [
    "--model",
    "resnet18",
    "--image-size",
    "32",
    "--batch-size",
    "16",
    "--set",
    "model.width=8",
    "--set",
    "data.num_workers=0",
    "--set",
    "log.tensorboard=true",
    "--set",
    "train.auto_recipe=false",
]


@pytest.fixture(scope="session", autouse=True)
def _cache_in_tmp(tmp_path_factory):
    """Decoded caches go to a temporary folder, never ~/.cache (subprocesses inherit the variable)."""
    import os

    old = os.environ.get("RESNETCLS_CACHE")
    os.environ["RESNETCLS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("RESNETCLS_CACHE", None)
    else:
        os.environ["RESNETCLS_CACHE"] = old


def shared_data(name: str) -> Path:
    """../shared/data/<name>, or skip the test with the reason when it is not there."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real image data not available: {path} is missing (present in CI)")
    return path


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `resnetcls ARGS` as a user would: exit code, stdout and stderr as a CompletedProcess.

    In this process by default, through the same cli.main the console script calls: a fresh interpreter
    spends about 5 s of the 2-core CI machine importing torch and torchvision, and the suite makes dozens of
    these calls. An unexpected exception still fails the test (it propagates instead of printing a
    traceback). Tests that kill, signal or torchrun a training start their own processes.
    """
    from tests.runner import run_main

    code, out, err = run_main(list(args), str(cwd) if cwd else None)  # run_main makes each argument a str
    return subprocess.CompletedProcess(["resnetcls", *map(str, args)], code, out, err)


def make_class_folders(
    root: Path, classes: dict[str, tuple[int, int, int]], per_class: int = 12, size: int = 40
) -> Path:
    """Solid-colour images with a little noise, one folder per class: trivially learnable."""
    import random

    rng = random.Random(0)
    for name, colour in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            c = tuple(max(0, min(255, v + rng.randint(-20, 20))) for v in colour)
            Image.new("RGB", (size + i % 5, size), c).save(root / name / f"{i}.jpg")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return make_class_folders(
        tmp_path_factory.mktemp("tiny") / "data",
        {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)},
    )


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    """One tiny training run shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("run") / "run"
    result = run_cli("train", tiny_data, *TINY, "--epochs", "2", "--out", out, "--set", "optim.lr=0.01")
    assert result.returncode == 0, result.stderr
    return out


# 12 of the 36 tiny images in val: enough for a calibration fit and an open-set threshold.
CALIBRATED = [
    *TINY,
    "--epochs",
    "2",
    "--set",
    "optim.lr=0.01",
    "--set",
    "data.val_fraction=0.34",
    "--set",
    "train.precision=fp32",
]


@pytest.fixture(scope="session")
def calibrated_run(tiny_data, tmp_path_factory) -> tuple[Path, str]:
    """One tiny run with a calibrated temperature and an open-set threshold, and its stderr, shared by the
    tests that only read them."""
    out = tmp_path_factory.mktemp("cal") / "run"
    result = run_cli("train", tiny_data, *CALIBRATED, "--out", out)
    assert result.returncode == 0, result.stderr
    return out, result.stderr


# A tiny multi-label run on planted colour patches (data/synth.py's synthesize_multilabel: 48 train / 16 val
# images, 1-3 of 4 colours each): 3 epochs reach a val mAP well above chance (about 0.5, the share of
# positives).
MULTILABEL = [
    *TINY,
    "--batch-size",
    "8",
    "--epochs",
    "3",
    "--set",
    "optim.lr=0.03",
    "--set",
    "data.augment=resize",
    "--set",
    "loss.label_smoothing=0",
    "--set",
    "data.leak_check=false",
    "--set",
    "train.precision=fp32",
]


@pytest.fixture(scope="session")
def multilabel_run(tmp_path_factory) -> tuple[Path, Path, str]:
    """One tiny multi-label run shared by the tests that only read it: (run folder, its manifest, stderr)."""
    from resnetcls.data.synth import synthesize_multilabel

    root = tmp_path_factory.mktemp("multilabel")
    manifest = synthesize_multilabel(root / "data", images=64, image_size=32)
    result = run_cli("train", manifest, *MULTILABEL, "--out", root / "run")
    assert result.returncode == 0, result.stderr
    return root / "run", manifest, result.stderr


class PlainInterpreter:
    """`resnetcls` commands run one after another in one fresh interpreter with one thread (tests/runner.py),
    as the killed or signalled runs the tests start are: for the runs compared bit for bit with those, one
    torch import for all of them instead of one each."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def run(self, *args, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        import json
        import os
        import select
        import sys

        if self.proc is None:  # started on first use, with RESNETCLS_CACHE as _cache_in_tmp set it
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.runner"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        args = [str(a) for a in args]
        self.proc.stdin.write(json.dumps({"args": args, "cwd": str(cwd or os.getcwd())}) + "\n")
        self.proc.stdin.flush()
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            self.close()
            raise TimeoutError(f"resnetcls {' '.join(args)} did not finish in {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            self.proc = None
            raise RuntimeError(f"tests/runner.py ended during resnetcls {' '.join(args)}")
        result = json.loads(line)
        return subprocess.CompletedProcess(
            ["resnetcls", *args], result["code"], result["stdout"], result["stderr"]
        )

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@pytest.fixture(scope="session")
def plain_interpreter():
    """One PlainInterpreter for the session; see tests/runner.py for why it is not this process."""
    runner = PlainInterpreter()
    yield runner
    runner.close()
