"""torchrun on CPU (gloo, 2 processes): exact sharded evaluation, DDP equivalent to one process with the
global batch, a failing rank ends the job, and a killed 2-process run resumes to the same weights."""

import csv
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from safetensors.torch import load_file

from resnetcls.data.loader import LoaderOptions, build_loader
from resnetcls.data.sources import load_splits
from resnetcls.data.transforms import build_eval_batch_transform, make_preprocess
from resnetcls.engine import distributed
from resnetcls.engine.loop import StepContext
from resnetcls.models import create_model

# Sequential order and no random augmentation, so 2 processes x batch 4 see exactly the images that
# 1 process x batch 8 sees, step by step (80 train images: 10 steps per epoch either way). fp32 on every
# machine: the bound below was measured in fp32, and precision=auto would train in bf16 on CPUs with native
# bf16 (AVX512-BF16, AMX), where rounding alone moves the weights further apart than the bound.
ARGS = [
    "--set",
    "train.auto_recipe=false",
    "--model",
    "resnet18",
    "--image-size",
    "32",
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
    "optim.name=sgd",
    "--set",
    "optim.lr=0.05",
    "--set",
    "data.sampler=sequential",
    "--set",
    "data.augment=resize",
    "--set",
    "train.precision=fp32",
]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """A CSV whose rows come in pairs: the same pixels under two different labels. Rank 0 takes the even
    rows and rank 1 the odd ones, so both see identical images (identical BatchNorm batch statistics, which
    SyncBatchNorm would otherwise be needed for, and it is CUDA-only) but different targets: only a real
    gradient all-reduce reaches what one process with both rows in its batch reaches."""
    root = tmp_path_factory.mktemp("pairs")
    rng, names = random.Random(0), list(COLOURS)
    rows = ["path,label,split"]
    for i in range(43):
        colour = tuple(max(0, min(255, v + rng.randint(-40, 40))) for v in COLOURS[names[i % 3]])
        for copy in "ab":
            Image.new("RGB", (40, 40), colour).save(root / f"{i}{copy}.png")
        split = "train" if i < 40 else "val"
        rows += [f"{i}a.png,{names[i % 3]},{split}", f"{i}b.png,{names[(i + 1) % 3]},{split}"]
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root / "data.csv"


COLOURS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, entry=("-m", "resnetcls")) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        *entry,
        *map(str, args),
    ]


def env() -> dict:
    # One OpenMP thread: tiny models gain nothing from more on a shared 2-core machine. Read at call time,
    # after conftest pointed RESNETCLS_CACHE at a temporary folder.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run(cmd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=timeout)


def weights(run_dir):
    return load_file(str(run_dir / "final" / "model.safetensors"))


def max_weight_difference(a: dict, b: dict) -> float:
    """The largest |a - b| over the trained parameters (BatchNorm running statistics left out: PyTorch's
    unbiased running variance uses each process's own batch size, n/(n-1), so it differs by design)."""
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point() and "running" not in k)


@pytest.fixture(scope="module")
def two_process_run(pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    result = run(torchrun("train", pairs, *ARGS, "--batch-size", "4", "--out", out))
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result.stderr


def test_two_processes_train_with_one_writer(two_process_run):
    out, stderr = two_process_run
    assert "2 processes x batch 4" in stderr
    assert stderr.count("epoch 2/2  train loss") == 1  # rank 1 prints nothing
    assert (out / "final" / "model.safetensors").is_file() and (out / "best" / "model.json").is_file()
    assert not any(k.startswith("module.") for k in weights(out))  # the unwrapped model is saved
    # the calibration fit saw every validation image once: each rank's shard, gathered
    val_images = sum(row["split"] == "val" for row in csv.DictReader(open(out / "split.csv")))
    record = json.loads((out / "best" / "model.json").read_text())["calibration"]
    assert record["images"] == val_images > 0 and stderr.count("calibration:") == 1


def test_two_processes_match_one_process_with_the_global_batch(
    two_process_run, pairs, tmp_path, plain_interpreter
):
    single = tmp_path / "single"
    # In the session's one-thread interpreter, not a fresh one (a torch import less), nor this process: its
    # two OpenMP threads spin against the torchrun workers and other load on a shared 2-core machine.
    result = plain_interpreter.run("train", pairs, *ARGS, "--batch-size", "8", "--out", single)
    assert result.returncode == 0, result.stderr
    difference = max_weight_difference(weights(two_process_run[0]), weights(single))
    # Measured on CPU after 20 SGD steps: 0.024 (float summation order, amplified by BatchNorm over
    # near-constant images); one process with batch 4 instead of 8 ends 5.8 away. See the README.
    assert difference < 0.1, difference


def _sharded_eval_worker(rank: int, port: int, data: str, out: str) -> None:
    torch.set_num_threads(1)  # tiny model; two ranks share 2 cores
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    distributed.setup("cpu", 60)
    try:
        torch.save(_evaluate(data, rank, 2), f"{out}.{rank}")
    finally:
        distributed.cleanup()


def _evaluate(data: str, rank: int, world: int):
    torch.manual_seed(0)
    model = create_model("resnet18", 3, width=8)
    splits = load_splits(data)
    samples = splits.train.subset(list(range(33)))  # odd: shards of 17 and 16, nothing to pad
    transform = build_eval_batch_transform(make_preprocess(32))
    loader = build_loader(
        samples,
        transform,
        4,
        shuffle=False,
        num_workers=0,
        options=LoaderOptions(sampler=range(rank, len(samples), world)),
    )
    stats, confusion = distributed.evaluate_sharded(model, loader, None, StepContext(torch.device("cpu")), 3)
    return {"images": stats.images, "correct1": stats.correct1, "confusion": confusion}


def test_sharded_evaluation_counts_every_image_once_and_equals_one_process(tiny_data, tmp_path):
    single = _evaluate(str(tiny_data), 0, 1)
    mp.start_processes(
        _sharded_eval_worker,
        args=(free_port(), str(tiny_data), str(tmp_path / "r")),
        nprocs=2,
        start_method="spawn",
    )  # not fork: pytest's process may hold other threads' locks
    for rank in (0, 1):
        shared = torch.load(tmp_path / f"r.{rank}")
        assert shared["images"] == 33 == single["images"]
        assert shared["correct1"] == single["correct1"]
        assert torch.equal(shared["confusion"], single["confusion"])
    assert int(single["confusion"].sum()) == 33


FAILING_ENTRY = """
import os, sys
import resnetcls.engine.distributed as d
from resnetcls.errors import UserError
from resnetcls.cli import main
if os.environ["RANK"] == "1":  # rank 1 fails where rank 0 then waits for it in a collective
    def broken(*args, **kwargs):
        raise UserError("val/x.jpg: simulated failure on rank 1")
    d.evaluate_sharded = broken
sys.exit(main())
"""


def test_a_failing_rank_ends_the_job_with_its_message(pairs, tmp_path):
    entry = tmp_path / "entry.py"
    entry.write_text(FAILING_ENTRY)
    started = time.monotonic()
    result = run(
        torchrun(
            "train",
            pairs,
            *ARGS,
            "--batch-size",
            "4",
            "--out",
            tmp_path / "run",
            "--set",
            "train.dist_timeout_s=30",
            entry=(str(entry),),
        ),
        timeout=120,
    )
    assert result.returncode != 0
    assert "resnetcls: error: val/x.jpg: simulated failure on rank 1" in result.stdout + result.stderr
    assert time.monotonic() - started < 120


def kill_tree(pid: int) -> None:
    """SIGKILL pid's worker processes (torchrun starts each in its own session) and then pid itself."""
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            children += [int(c) for c in f.read().split()]
    for child in children:
        os.kill(child, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)


def test_killed_two_process_run_resumes_to_the_same_weights(two_process_run, pairs, tmp_path):
    out = tmp_path / "run"
    cmd = torchrun(
        "train",
        pairs,
        *ARGS,
        "--batch-size",
        "4",
        "--out",
        out,
        "--set",
        "ckpt.every_steps=1",
        "--set",
        "ckpt.keep_last=50",
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env())
    marker = out / "checkpoints" / "step-00000002.json"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stderr.read()
    kill_tree(proc.pid)  # as when the machine dies: agent and workers at once, no handler runs
    proc.wait(timeout=60)
    result = run(cmd + ["--resume", "auto"])
    assert result.returncode == 0, result.stdout + result.stderr
    resumed = re.search(r"resuming .* at epoch (\d+) step (\d+)/10", result.stderr)
    assert resumed and resumed.group(1) == "1" and 2 <= int(resumed.group(2)) < 10, result.stderr  # mid-epoch
    a, b = weights(out), weights(two_process_run[0])
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
