"""engine/runner.py: what every training mode does around the step loop: Ctrl-C/SIGTERM as a stop flag,
the stop message, step logs and step checkpoints on the global step, the train/ record, bad-image warnings."""

import json
import os
import signal
import threading

import pytest
import torch
from torch import nn

from resnetcls.config import CkptConfig, OptimConfig, SchedConfig, TrainConfig
from resnetcls.engine.checkpoint import Checkpointer, RunState, list_checkpoints
from resnetcls.engine.log import RunLogger
from resnetcls.engine.loop import EpochStats, StepContext
from resnetcls.engine.optim import build_optimization
from resnetcls.engine.runner import (
    EpochParts,
    StepPlan,
    StopRequest,
    TrainingInterrupted,
    note_bad_images,
    run_epoch,
    stop_run,
    train_record,
)

CPU = StepContext(torch.device("cpu"), None, False)


@pytest.fixture
def known_handlers():
    """A recording handler for SIGINT and SIGTERM during the test; the previous ones are put back after it."""
    seen = []

    def handler(signum, frame):
        seen.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield handler, seen
    for sig, old in previous.items():
        signal.signal(sig, old)


def test_a_first_sigint_only_asks_to_stop_a_second_stops_at_once_and_the_handlers_come_back(known_handlers):
    handler, seen = known_handlers
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested  # no KeyboardInterrupt: the loop sees the flag after its step and saves
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # repeated SIGTERMs never interrupt the save
        assert stop.requested
    assert signal.getsignal(signal.SIGINT) is handler and signal.getsignal(signal.SIGTERM) is handler
    assert seen == []  # the previous handler saw none of the signals StopRequest took


def test_outside_the_main_thread_stop_request_installs_no_handler(known_handlers):
    handler, _ = known_handlers
    seen_in_thread = {}

    def worker():
        with StopRequest() as stop:  # signal.signal would raise ValueError here
            seen_in_thread.update(requested=stop.requested, handler=signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen_in_thread == {"requested": False, "handler": handler}


def test_stop_run_says_how_to_continue_closes_the_log_and_raises_the_interrupt(tmp_path, capsys):
    logger = RunLogger(tmp_path, tensorboard=False)
    jsonl = logger.jsonl
    with pytest.raises(TrainingInterrupted) as stopped:
        stop_run(logger, "interrupted at epoch 2 step 5: saved step-00000017.pt", tmp_path)
    assert isinstance(stopped.value, KeyboardInterrupt) and str(stopped.value) == str(tmp_path)
    assert capsys.readouterr().err == (
        f"interrupted at epoch 2 step 5: saved step-00000017.pt; continue with --resume {tmp_path}\n"
    )
    assert jsonl.closed and logger.jsonl is None


def test_train_record_holds_the_train_scalars():
    stats = EpochStats(loss_sum=6.0, correct1=3, images=4, seconds=2.0, data_wait_s=0.5)
    assert train_record(stats, 0.01) == {
        "train/loss": 1.5,
        "train/top1": 0.75,
        "train/lr": 0.01,
        "train/images_per_s": 2.0,
        "train/data_wait_share": 0.25,
    }


def test_each_bad_image_is_warned_about_once_and_remembered(tmp_path, capsys):
    run, logger = RunState(), RunLogger(tmp_path, tensorboard=False)
    note_bad_images(run, [("a.jpg", "truncated"), ("b.png", "not an image")], logger)
    note_bad_images(run, [("a.jpg", "truncated")], logger)  # met again in the next epoch
    assert run.bad_files == {"a.jpg": "truncated", "b.png": "not an image"}
    assert capsys.readouterr().err.splitlines() == [
        "warning: skipped bad image a.jpg: truncated",
        "warning: skipped bad image b.png: not an image",
    ]
    logger.close()


def tiny_training(tmp_path):
    """A linear classifier, its SGD, a logger and a checkpointer in tmp_path; batches of 4 2x2 images."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    opt = build_optimization(
        model,
        OptimConfig(name="sgd", lr=0.1),
        SchedConfig(name="constant", warmup_epochs=0),
        TrainConfig(epochs=1),
        10,
        CPU,
    )
    ckpt = Checkpointer(tmp_path, CkptConfig(keep_last=10), 4, {}, {}, model, opt)
    g = torch.Generator().manual_seed(0)
    batches = [
        {"images": torch.rand(4, 3, 2, 2, generator=g), "labels": torch.tensor([0, 1, 2, 0]), "bad": []}
        for _ in range(5)
    ]
    return model, opt, RunLogger(tmp_path, tensorboard=False), ckpt, batches


def test_step_logs_and_step_checkpoints_follow_the_global_step_with_the_callers_tags(tmp_path):
    model, opt, logger, ckpt, batches = tiny_training(tmp_path)
    run = RunState(epoch=2, global_step=1)  # a resumed run: one step done before this epoch
    plan = StepPlan(epochs=3, steps_per_epoch=5, log_every=2, ckpt_every=3)
    parts = EpochParts(
        model, opt, nn.CrossEntropyLoss(), CPU, logger, ckpt, StopRequest(), plan, tags={"task": "light=dark"}
    )
    assert run_epoch(run, batches, parts)
    logger.close()
    assert run.global_step == 6 and run.stats.steps == 5
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"], r["epoch"], r["task"]) for r in records] == [
        ("train", 2, 2, "light=dark"),
        ("train", 4, 2, "light=dark"),
        ("train", 6, 2, "light=dark"),
    ]
    assert all(r["train/lr"] == pytest.approx(0.1) and r["train/loss"] > 0 for r in records)
    assert [meta["global_step"] for _, meta in list_checkpoints(tmp_path / "checkpoints")] == [3, 6]


def test_a_stop_request_ends_the_epoch_after_the_current_step(tmp_path):
    model, opt, logger, ckpt, batches = tiny_training(tmp_path)
    run, stop = RunState(), StopRequest()
    stop.requested = True  # as the signal handler leaves it
    plan = StepPlan(epochs=1, steps_per_epoch=5)
    assert not run_epoch(
        run, batches, EpochParts(model, opt, nn.CrossEntropyLoss(), CPU, logger, ckpt, stop, plan)
    )
    logger.close()
    assert run.global_step == 1 and run.stats.steps == 1 and run.stats.batches == 1  # a clean step boundary
    assert not (tmp_path / "checkpoints").exists()  # ckpt_every=0: saving is the caller's job
