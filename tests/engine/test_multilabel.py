"""Multi-label training: the plan's choices (bce, val_map, no open-set score), multi-hot targets through the
loss, Mixup/CutMix and the accuracy counts, the val mAP of each epoch and the per-class thresholds written
into best/ and final/ model.json (the shared tiny run: conftest's multilabel_run)."""

import json

import pytest
import torch

from resnetcls.config import Config
from resnetcls.data.augment import BatchMix
from resnetcls.data.sources import Samples, Splits
from resnetcls.engine.loop import topk_correct
from resnetcls.engine.multilabel import gathered_probs, multi_label_choices, threshold_record
from resnetcls.engine.optim import build_loss
from resnetcls.errors import UserError
from resnetcls.utils.multilabel import THRESHOLD_RULE


def _splits(label_sets):
    samples = Samples(
        ["a"] * len(label_sets), [0] * len(label_sets), ["cup", "fork", "spoon"], {}, label_sets
    )
    return Splits(samples.classes, samples, samples)


def test_plan_choices_for_multi_label_data():
    chosen, lines = multi_label_choices(Config(), _splits([(0, 1), (2,)]))
    assert chosen == {"loss.name": "bce", "ckpt.metric": "val_map", "eval.open_set": "off"}
    assert lines[0].startswith("multi-label: loss.name=bce (a sigmoid per class) instead of ce")
    cfg = Config()
    cfg.loss.name, cfg.ckpt.metric = "bce", "val_loss"  # what the user asked for and fits is kept
    assert "ckpt.metric" not in multi_label_choices(cfg, _splits([(0,)]))[0]
    cfg.distill.teacher = "teacher/best"  # a softmax teacher cannot teach sigmoid outputs
    with pytest.raises(UserError, match="--teacher teacher/best: distillation matches the teacher's softmax"):
        multi_label_choices(cfg, _splits([(0,)]))


def test_val_map_is_refused_for_single_label_data():
    cfg = Config()
    cfg.ckpt.metric = "val_map"
    single = Splits(["a", "b"], Samples(["x"], [0], ["a", "b"]), Samples(["x"], [0], ["a", "b"]))
    with pytest.raises(UserError, match="ckpt.metric=val_map: the mean average precision of multi-label"):
        multi_label_choices(cfg, single)


def test_multi_label_loss_mixing_and_counts():
    cfg = Config()
    cfg.loss.name, cfg.loss.label_smoothing, cfg.loss.class_weights = "bce", 0.0, "balanced"
    loss = build_loss(cfg.loss, 3, [0, 0], [(0, 1), (0,)])
    targets = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    logits = torch.zeros(2, 3)
    # balanced over every label: cup 2, fork 1, spoon 0 (counted as 1) -> weights 3/(3*2), 3/3, 3/3
    expected = torch.log(torch.tensor(2.0)) * (0.5 + 1 + 1)
    assert torch.isclose(loss(logits, targets), expected)
    cfg.loss.name = "ce"
    with pytest.raises(UserError, match="multi-label data trains with bce"):
        build_loss(cfg.loss, 3, [0, 0], [(0, 1), (0,)])
    _, mixed = BatchMix(1.0, 0.0, 3)(torch.zeros(2, 3, 4, 4), targets, seed=1)
    assert mixed.shape == (2, 3) and torch.all(mixed[:, 2] == 0) and torch.all(mixed[:, 0] == 1)
    # top-1 counts an image whose highest logit is one of its labels
    assert topk_correct(torch.tensor([[0.1, 0.9, 0.0], [0.0, 0.0, 1.0]]), targets, 1) == 1


def test_threshold_record_and_gathered_probabilities():
    batches = [
        (torch.tensor([[4.0, -4.0]]), torch.tensor([[1.0, 0.0]])),
        (torch.tensor([[-4.0, 4.0]]), torch.tensor([[0.0, 1.0]])),
    ]
    probs, targets = gathered_probs(batches, 2)
    assert torch.allclose(probs, torch.sigmoid(torch.tensor([[4.0, -4.0], [-4.0, 4.0]])))
    record = threshold_record(probs, targets, "|")
    assert record["separator"] == "|" and record["rule"] == THRESHOLD_RULE and record["images"] == 2
    assert all(0.018 < t < 0.982 for t in record["thresholds"])  # between the negative and the positive


def test_multilabel_run_writes_thresholds_and_val_map(multilabel_run):
    run, _, stderr = multilabel_run
    for name in ("best", "final"):
        meta = json.loads((run / name / "model.json").read_text())
        record = meta["multi_label"]
        assert len(record["thresholds"]) == 4 and all(0 <= t <= 1 for t in record["thresholds"])
        assert record["separator"] == ";" and record["fitted_on"] == "val" and record["images"] == 16
        assert meta["calibration"]["calibrated"] is False and meta["calibration"]["temperature"] == 1.0
        assert "val_map" in meta["metrics"]
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    maps = [r["val/map"] for r in epochs if r.get("kind") == "epoch"]
    summary = next(r for r in epochs if r.get("kind") == "summary")
    assert len(maps) == 3 and summary["best_metric"] == "val_map" and summary["best_val_map"] == max(maps)
    assert summary["best_val_map"] > 0.7  # chance is about 0.5 (the share of positives)
    assert "multi-label: loss.name=bce (a sigmoid per class) instead of ce" in stderr
    assert "multi-label: open-set score off" in stderr
    assert "calibration: none, temperature 1 (multi-label: the probabilities are the sigmoids)" in stderr
    assert "multi-label thresholds: one per class" in stderr and "val mAP" in stderr
    split = (run / "split.csv").read_text().splitlines()
    assert split[0] == "path,label,split" and any(";" in row.split(",")[1] for row in split[1:])
