"""engine/finish.py: an epoch's record, line and best so far, train.patience, the shipped models' logits and
the end-of-run summary."""

import json

import pytest
import torch

from resnetcls.config import Config, TrainConfig
from resnetcls.engine.checkpoint import RunState
from resnetcls.engine.finish import ShippedModels, end_of_epoch, patience_ran_out, summarize
from resnetcls.engine.log import RunLogger
from resnetcls.engine.loop import EpochStats, StepContext

CPU = StepContext(torch.device("cpu"), None, False)


def stats(loss: float, correct: int, images: int = 10) -> EpochStats:
    return EpochStats(loss_sum=loss * images, correct1=correct, correct5=images, images=images, seconds=1.0)


def test_an_epoch_is_logged_printed_and_the_best_is_tracked_by_the_metric(tmp_path, capsys):
    logger = RunLogger(tmp_path, tensorboard=False)
    state = RunState(epoch=1, stats=stats(1.0, 5))
    first = end_of_epoch(state, stats(0.8, 6), 0.1, "val_loss", logger, 3)
    state.epoch, state.stats = 2, stats(0.9, 6)
    end_of_epoch(state, stats(0.9, 8), 0.1, "val_loss", logger, 3, train_size=24)
    logger.close()
    assert first == {"epoch": 1, "val_top1": 0.6, "val_top5": 1.0, "val_loss": pytest.approx(0.8)}
    assert state.best_epoch == 1 and state.best_value == pytest.approx(0.8)  # a higher val loss is no better
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[1]["train_size"] == 24
    err = capsys.readouterr().err
    assert "epoch 1/3  train loss 1.0000  val loss 0.8000  val top1 60.00%" in err
    assert err.count("train size 24px") == 1


def test_patience_counts_epochs_since_the_best_and_zero_is_off():
    assert patience_ran_out(RunState(epoch=6, best_epoch=3), 2)
    assert not patience_ran_out(RunState(epoch=5, best_epoch=3), 2)
    assert not patience_ran_out(RunState(epoch=50, best_epoch=3), 0)


def test_shipped_models_write_best_when_it_improves_and_keep_each_ones_logits():
    saved = []
    shipped = ShippedModels(lambda name, metrics: saved.append((name, metrics["epoch"])), keep_logits=True)
    first, second = shipped.new_shard(), shipped.new_shard()
    shipped.validated(True, {"epoch": 1}, first)
    shipped.validated(False, {"epoch": 2}, second)
    assert saved == [("best", 1)]
    assert shipped.logits["best"] is first and shipped.logits["final"] is second
    assert ShippedModels(lambda name, metrics: None, keep_logits=False).new_shard() is None


def test_the_summary_notes_an_early_stop_and_is_logged_and_returned(tmp_path, capsys):
    logger = RunLogger(tmp_path, tensorboard=False)
    state = RunState(epoch=4, best_epoch=1, best_value=0.9, train_images=30, train_seconds=3.0)
    metrics = {"epoch": 3, "val_top1": 0.5, "val_top5": 1.0, "val_loss": 1.0}
    cfg = Config(train=TrainConfig(epochs=10, patience=2))
    summary = summarize(state, metrics, 12.34, tmp_path, CPU, logger, cfg)
    assert summary["stopped_early"] and summary["epochs_run"] == 3 and summary["epochs"] == 10
    assert summary["train_images_per_s"] == 10.0 and summary["seconds"] == 12.3
    assert summary["best_val_top1"] == 0.5  # no best/ written: the last metrics stand in
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["kind"] == "summary" and last["best_epoch"] == 1
    err = capsys.readouterr().err
    assert "stopping early: val_top1 has not improved for 2 epochs" in err and "done in 12.3s" in err
